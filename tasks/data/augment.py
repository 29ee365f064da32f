"""Training-time augmentation applied to a whole batch at once: random left-right flips, small rotations, smooth
bias fields (`train.augment.bias_field`, 0 by default) and intensity jitter, with every mask moved by exactly the same
transform as its image, and (for the segmentation warm-up, `train_seg.crop`) a window around each slice's brain cut
by the same resampling.

Equivalent to a torchvision.transforms.v2 pipeline over (Image, tv_tensors.Mask) pairs, but one `grid_sample`
call per batch instead of one transform per sample: the same randomness per sample, far less Python per step.
Training applies it where batches are read (tasks/data/loaders.py: AugmentedSlices), in the DataLoader's worker
processes when `train.num_workers` > 0, or on the GPU after the copy (`train.augment_on`). The random draws come
from a CPU `torch.Generator` seeded per batch from the run's generator, so a seeded run (and a resumed one, which
restores the generator) sees the same augmentations, with any number of workers and on either device. On a GPU the
draws travel in one page-locked, non-blocking copy (`to_device_async`): a copy from ordinary memory would wait for
every queued kernel first, and the CPU could no longer run ahead of the GPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from tasks.config import Augment

BIAS_GRID = 3  # control points per side of a bias field: a field with one bump or dip at most across the slice


def to_device_async(tensor: Tensor, device: torch.device) -> Tensor:
    """A small CPU tensor on `device`: on CUDA through page-locked memory without a sync, elsewhere as it is."""
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor.to(device)


def _uniform(n: int, half_width: float, generator: torch.Generator) -> Tensor:
    return (torch.rand(n, generator=generator) * 2 - 1) * half_width


def random_affines(n: int, cfg: Augment, generator: torch.Generator) -> Tensor:
    """(n, 2, 3) affine matrices in grid_sample's normalised coordinates: a rotation, then maybe a mirror.

    Only left-right flips: brains are roughly left-right symmetric, an upside-down brain never reaches the model.
    """
    angle = _uniform(n, math.radians(cfg.rotate_degrees), generator)
    mirror = torch.ones(n)
    if cfg.flip:
        mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros(n)
    return torch.stack([torch.stack([cos * mirror, -sin, zero], 1), torch.stack([sin * mirror, cos, zero], 1)], 1)


def affine_grid(theta: Tensor, height: int, width: int) -> Tensor:
    """F.affine_grid(theta, (n, c, height, width), align_corners=False), computed as two broadcast sums instead of a
    batched matmul with an inner size of 3: the same grid (to float rounding), ten times faster on one CPU core."""
    xs = (torch.arange(width, dtype=theta.dtype, device=theta.device) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=theta.dtype, device=theta.device) * 2 + 1) / height - 1
    grid = torch.empty(theta.shape[0], height, width, 2, dtype=theta.dtype, device=theta.device)
    for k in range(2):  # x', then y' = theta[:, k] · (x, y, 1)
        a, b, c = (theta[:, k, j].view(-1, 1, 1) for j in range(3))
        torch.add(a * xs.view(1, 1, width), b * ys.view(1, height, 1) + c, out=grid[..., k])
    return grid


def augment_batch(images: Tensor, masks: Tensor, cfg: Augment, generator: torch.Generator,
                  part_of: tuple[int, int] | None = None, crop: int | None = None) -> tuple[Tensor, Tensor]:
    """Augmented copies of float images (N, C, H, W) and float masks (N, 1, H, W).

    `part_of=(start, total)`: the N samples are samples start..start+N-1 of a batch of `total` (a DDP process's
    share); the draws are the whole batch's and each sample gets its own, as when the whole batch is augmented.
    `crop`: (N, C, crop, crop) windows around each slice's brain (`brain_crop_centres`), cut by the same
    `grid_sample` that rotates and flips."""
    n = images.shape[0]
    start, total = part_of or (0, n)
    part = slice(start, start + n)
    crop = crop if crop is not None and crop < max(images.shape[2:]) else None
    if crop is not None and crop > min(images.shape[2:]):  # the clamp in brain_crop_centres needs it to fit
        raise ValueError(f"a {crop}x{crop} window does not fit {tuple(images.shape[2:])} slices")
    moves = cfg.flip or cfg.rotate_degrees > 0 or crop is not None
    # Every draw first, in this order, on the CPU; then one copy to the images' device. The crop's draws come
    # after the others, so that runs without a crop draw exactly what they drew before crops existed; the bias
    # fields' after the crop's, for the same reason.
    draws: dict[str, Tensor] = {}  # name -> (N, columns), in the order drawn
    if moves:
        draws["affine"] = random_affines(total, cfg, generator)[part].to(images.dtype).flatten(1)
    if cfg.intensity_jitter > 0:
        for name in ("scale", "shift"):
            draws[name] = _uniform(total, cfg.intensity_jitter, generator)[part, None]
    if crop is not None:
        draws["crop"] = _uniform(2 * total, 1.0, generator).view(total, 2)[part].to(images.dtype)
    if cfg.bias_field > 0:
        controls = _uniform(total * images.shape[1] * BIAS_GRID**2, 1.0, generator).view(total, -1)
        if cfg.bias_field_share < 1:  # drawn only then: a run giving every sample a field draws what it drew before
            spared = torch.rand(total, generator=generator) >= cfg.bias_field_share
            controls[spared] = 0  # a flat field, exp(0) = 1
        draws["bias"] = controls[part].to(images.dtype)
    if cfg.photo_like > 0 and images.shape[1] > 1:  # last again: runs without it draw what they drew before
        shown = (torch.rand(total, generator=generator) < cfg.photo_like).to(images.dtype)
        channel = torch.randint(0, images.shape[1], (total,), generator=generator).to(images.dtype)
        draws["photo"] = torch.stack([shown, channel], 1)[part]
    if draws:
        copied = to_device_async(torch.cat(list(draws.values()), 1), images.device)
        draws = dict(zip(draws, copied.split([d.shape[1] for d in draws.values()], 1)))
    if moves:
        theta = draws["affine"].reshape(n, 2, 3)
        size = tuple(images.shape[2:])
        if crop is not None:
            theta = crop_affines(theta, brain_crop_centres(images, crop, draws["crop"]), size, crop)
            size = (crop, crop)
        grid = affine_grid(theta, *size)
        # Zero padding matches the z-scored background, which the slice step sets to 0.
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    else:
        images = images.clone()  # jittered in place below
    if "bias" in draws:
        images = apply_bias_fields(images, draws["bias"], cfg.bias_field)
    if cfg.intensity_jitter > 0:
        scale, shift = 1 + draws["scale"].reshape(n, 1, 1, 1), draws["shift"].reshape(n, 1, 1, 1)
        # The background stays 0, as at inference; in place, as fresh temporaries cost more than the arithmetic.
        background = images == 0
        images.mul_(scale).add_(shift).masked_fill_(background, 0)
    if "photo" in draws:
        images = as_photos(images, draws["photo"][:, 0] > 0.5, draws["photo"][:, 1].long())
    return images, masks


def as_photos(images: Tensor, shown: Tensor, channel: Tensor) -> Tensor:
    """`images` (N, C, H, W) with each `shown` sample's `channel` in channel 0 and its other channels blank: what a
    photo of unknown sequence is to the model (tasks/data/photo_slicing.py: channel 0, FLAIR's, the rest zero).

    A FLAIR-trained channel 0 otherwise meets T2 and T1ce photos only in the few hundred photos of the training
    split; every MRI slice can be shown that way, with its mask and label unchanged. A sample whose drawn channel
    is blank (a photo, a missing modality) stays as it is. On the images' device, without reading anything back."""
    picked = images[torch.arange(images.shape[0], device=images.device), channel]  # (N, H, W)
    shown = shown & picked.flatten(1).ne(0).any(1)
    photos = torch.zeros_like(images)
    photos[:, 0] = picked
    return torch.where(shown[:, None, None, None], photos, images)


def apply_bias_fields(images: Tensor, controls: Tensor, strength: float) -> Tensor:
    """`images` (N, C, H, W) under a smooth multiplicative field per sample and channel, as a scanner's receive-coil
    inhomogeneity brightens one side of a brain and darkens another: exp(strength x a bicubic surface through a
    BIAS_GRID x BIAS_GRID grid of `controls` in [-1, 1]), so at `strength` 0.3 a region is scaled by up to ~1.35x.

    A bias field multiplies the scanner's intensities, not z-scores; a z-scored slice no longer knows where zero
    signal lies, and its darkest brain pixel is the nearest thing it has, so intensities are scaled about that pixel
    (kept as it is). The background stays 0. The synthetic generator draws such fields (tasks/data/synthetic.py),
    and one is what made a model paint a tumour on a tumour-free brain (docs/recipes.md)."""
    n, channels, height, width = images.shape
    grid = controls.reshape(n, channels, BIAS_GRID, BIAS_GRID)
    field = torch.exp(strength * F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=True))
    brain = images != 0
    darkest = torch.where(brain, images, torch.inf).amin((2, 3), keepdim=True)
    darkest = torch.where(torch.isfinite(darkest), darkest, 0)  # a blank channel (a missing modality): nothing to do
    return ((images - darkest) * field + darkest).masked_fill_(~brain, 0)


def brain_crop_centres(images: Tensor, crop: int, jitter: Tensor) -> Tensor:
    """(N, 2) (x, y) pixel centres of crop x crop windows: the middle of each slice's brain (its non-zero pixels'
    bounding box; the image's middle when it has none), moved by `jitter` (N, 2) in [-1, 1] times a quarter of the
    room the window has, and kept inside the image.

    nnU-Net crops every case to its non-zero region before it cuts patches: the background outside the brain
    (exactly 0 after the slice step) teaches the network nothing that the brain's own edge does not. A window
    three quarters of the slice's side still holds the whole brain on almost every slice (docs/recipes.md), at a
    bit more than half the compute per sample."""
    height, width = images.shape[2:]
    brain = (images != 0).any(1)
    centres = []
    for extent, axis, side in ((width, 1, 0), (height, 2, 1)):  # x: columns; y: rows
        present = brain.any(axis)  # (N, extent)
        index = torch.arange(extent, device=images.device, dtype=images.dtype)
        first = torch.where(present, index, float(extent)).amin(1)
        last = torch.where(present, index, -1.0).amax(1)
        middle = torch.where(present.any(1), (first + last) / 2, (extent - 1) / 2)
        room = (extent - crop) / 2
        lowest, highest = (crop - 1) / 2, extent - 1 - (crop - 1) / 2
        centres.append((middle + jitter[:, side] * room / 2).clamp(lowest, highest))
    return torch.stack(centres, 1)


def crop_affines(theta: Tensor, centres: Tensor, size: tuple[int, int], crop: int) -> Tensor:
    """`theta` (rotation and mirror about the image's middle) applied about `centres` (N, 2 pixel x, y) instead,
    to an output grid of crop x crop pixels: in grid_sample's normalised input coordinates (align_corners=False),
    output pixel j of the window lands on input pixel j + centre - (crop - 1) / 2 when nothing rotates."""
    height, width = size
    scale = torch.tensor([crop / width, crop / height], dtype=theta.dtype, device=theta.device).view(1, 2, 1)
    shift = (2 * centres + 1) / torch.tensor([width, height], dtype=theta.dtype, device=theta.device) - 1
    return torch.cat([theta[:, :, :2] * scale, shift.unsqueeze(2)], 2)

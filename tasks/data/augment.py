"""Training-time augmentation applied to a whole batch at once: random left-right flips, small rotations and
intensity jitter, with every mask moved by exactly the same transform as its image.

Equivalent to a torchvision.transforms.v2 pipeline over (Image, tv_tensors.Mask) pairs, but one `grid_sample`
call per batch instead of one transform per sample: the same randomness per sample, far less Python per step.
Training applies it where batches are read (tasks/data/datasets.py: AugmentedSlices), in the DataLoader's worker
processes when `train.num_workers` > 0. The random draws come from a CPU `torch.Generator` seeded per batch from
the run's generator, so a seeded run (and a resumed one, which restores the generator) sees the same
augmentations, with any number of workers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from tasks.config import Augment


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


def augment_batch(images: Tensor, masks: Tensor, cfg: Augment, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Augmented copies of float images (N, C, H, W) and float masks (N, 1, H, W)."""
    n = images.shape[0]
    if cfg.flip or cfg.rotate_degrees > 0:
        theta = random_affines(n, cfg, generator).to(images.device, images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        # Zero padding matches the z-scored background, which the slice step sets to 0.
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    if cfg.intensity_jitter > 0:
        scale = 1 + _uniform(n, cfg.intensity_jitter, generator).to(images.device).view(n, 1, 1, 1)
        shift = _uniform(n, cfg.intensity_jitter, generator).to(images.device).view(n, 1, 1, 1)
        # The background stays 0, as at inference; one fused pass (twice as fast on CPU as scale, mask, shift apart).
        images = torch.where(images != 0, torch.addcmul(shift, images, scale), 0.0)
    return images, masks


def augment_samples(samples: list[dict], cfg: Augment, generator: torch.Generator) -> list[dict]:
    """`augment_batch` over a list of samples {"image", "mask" (None: unknown), "label"}; unknown masks stay None."""
    images = torch.stack([s["image"] for s in samples])
    blank = torch.zeros_like(images[0, :1])
    masks = torch.stack([blank if s["mask"] is None else s["mask"] for s in samples])
    images, masks = augment_batch(images, masks, cfg, generator)
    return [{**s, "image": image, "mask": None if s["mask"] is None else mask}
            for s, image, mask in zip(samples, images, masks)]

"""Modality dropout: training samples lose some input channels, so one network serves 4-channel volumes and
single-channel images (Kaggle images, uploaded slices, FLAIR-only volumes).

A missing modality is an all-zero channel: z-scored inputs are 0 on the background, and serving fills every modality
it was not given with zeros. With probability `share` (train.augment.modality_dropout) a sample is thinned: half of
those keep the FLAIR channel (channel 0) alone, the single-channel case serving sees most, and the other half keep a
uniformly drawn non-empty subset of their channels that is not all of them. A draw that would leave a sample without
any signal (a Kaggle image holds channel 0 only) leaves it as it was. Training only: validation, evaluation, export
and serving never call this, so the 4-channel inference path is the plain network.

The draws (`draw_modality_dropout`) are made for a whole batch in the main process, from the run's generator, right
after the batch and its augmentation seed (tasks/data/batch_sampling.py: SeededBatches); they are applied where the
batch is read and augmented (`drop_modalities`), in a loader worker or not. So a seeded run drops the same channels
with any number of workers, and a DDP process applies to its share of the global batch exactly what one process would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tasks.data.augment import to_device_async

FLAIR_ONLY_SHARE = 0.5  # of the thinned samples


@dataclass(frozen=True)
class ModalityDraws:
    """One batch's draws, per sample: thinned or not, FLAIR alone or not, and the channels kept otherwise (bits).
    Numpy arrays: they travel to the loader workers with the batch by value (a tensor would take a shared-memory
    file per batch)."""

    thinned: np.ndarray
    flair_only: np.ndarray
    subset: np.ndarray

    def part(self, start: int, stop: int) -> "ModalityDraws":
        """The draws of samples start..stop-1 (a DDP process's share of the batch)."""
        return ModalityDraws(self.thinned[start:stop], self.flair_only[start:stop], self.subset[start:stop])


def draw_modality_dropout(n: int, channels: int, share: float, generator: torch.Generator) -> ModalityDraws | None:
    """The draws for a batch of `n` samples of `channels` channels; None (nothing drawn) when nothing can be dropped."""
    if channels == 1 or share <= 0:
        return None
    thinned = torch.rand(n, generator=generator) < share
    flair_only = torch.rand(n, generator=generator) < FLAIR_ONLY_SHARE
    # a non-empty subset of the channels, as bits, never all of them: a thinned sample always loses one (drawing all
    # had left 1 in 15 of them whole, so fewer samples lost a channel than `share` says)
    subset = torch.randint(1, 2**channels - 1, (n,), generator=generator)
    return ModalityDraws(thinned.numpy(), flair_only.numpy(), subset.numpy())


def modality_keep_mask(present: Tensor, draws: ModalityDraws) -> Tensor:
    """(N, C) bool: which channels each sample keeps, given which hold any signal (`present`, (N, C) bool), on
    `present`'s device. Computed there without reading anything back (no boolean indexing): on a GPU, no sync."""
    channels, device = present.shape[1], present.device
    drawn = to_device_async(torch.from_numpy(np.stack([draws.subset, draws.flair_only, draws.thinned])), device)
    subset, flair_only, thinned = drawn[0], drawn[1].bool(), drawn[2].bool()  # one copy for the three
    channel = torch.arange(channels, device=device)
    keep = ((subset[:, None] >> channel) & 1).bool()
    keep = torch.where(flair_only[:, None], channel == 0, keep)
    keep = keep | ~thinned[:, None]
    return keep | ~(keep & present).any(dim=1, keepdim=True)  # never blank every channel that carries signal


def drop_modalities(images: Tensor, draws: ModalityDraws | None) -> Tensor:
    """Images (N, C, H, W) with the channels `draws` drop zeroed per sample; unchanged when `draws` is None."""
    if draws is None:
        return images
    keep = modality_keep_mask(images.detach().flatten(2).ne(0).any(dim=2), draws)
    return images * keep.to(images.dtype)[:, :, None, None]

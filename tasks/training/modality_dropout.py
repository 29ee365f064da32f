"""Modality dropout: training samples lose some input channels, so one network serves 4-channel volumes and
single-channel images (Kaggle images, uploaded slices, FLAIR-only volumes).

A missing modality is an all-zero channel: z-scored inputs are 0 on the background, and serving fills every
modality it was not given with zeros. With probability `share` (train.augment.modality_dropout) a sample is
thinned: half of those keep the FLAIR channel (channel 0) alone, the single-channel case serving sees most, and the
other half keep a uniformly drawn non-empty subset of their channels. A draw that would leave a sample without any
signal (a Kaggle image holds channel 0 only) leaves it as it was. Training only: validation, evaluation, export
and serving never call this, so the 4-channel inference path is the plain network.
"""

from __future__ import annotations

import torch
from torch import Tensor

FLAIR_ONLY_SHARE = 0.5  # of the thinned samples


def modality_keep_mask(present: Tensor, share: float, generator: torch.Generator) -> Tensor:
    """(N, C) bool: which channels each sample keeps, given which hold any signal (`present`, (N, C) bool, CPU)."""
    n, channels = present.shape
    thinned = torch.rand(n, generator=generator) < share
    flair_only = torch.rand(n, generator=generator) < FLAIR_ONLY_SHARE
    subset = torch.randint(1, 2**channels, (n,), generator=generator)  # a non-empty subset of the channels, as bits
    keep = ((subset[:, None] >> torch.arange(channels)) & 1).bool()
    keep[flair_only] = torch.arange(channels) == 0
    keep[~thinned] = True
    keep[~(keep & present).any(dim=1)] = True  # never blank every channel that carries signal
    return keep


def drop_modalities(images: Tensor, share: float, generator: torch.Generator) -> Tensor:
    """Images (N, C, H, W) with some channels zeroed per sample; unchanged with one channel or `share` 0.

    The draws come from `generator` (CPU), so seeded runs, resumed runs and the processes of a DDP run agree."""
    if images.shape[1] == 1 or share <= 0:
        return images
    present = images.detach().flatten(2).ne(0).any(dim=2).cpu()
    keep = modality_keep_mask(present, share, generator)
    return images * keep.to(images.device, images.dtype)[:, :, None, None]

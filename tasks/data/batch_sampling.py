"""Which samples make each training batch: quotas per batch (Kaggle images, tumour slices), the random draws that go
with each batch (augmentation seed, modality dropout), and a DDP process's share of it.

Everything is drawn in the main process from one generator, so a seeded run draws the same batches with any number of
loader workers and any number of DDP processes (tasks/data/loaders.py reads and augments what is drawn here).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Sampler

from tasks.data.modality_dropout import ModalityDraws, draw_modality_dropout

log = logging.getLogger(__name__)


class ComposedBatches(Sampler[list[int]]):
    """Batches with fixed quotas, so every step sees what the stage must learn from.

    - `kaggle_share`: that share of each batch comes from the Kaggle images (the samples without a mask); they are
      few next to the BraTS slices, and drawn at their natural rate the classifier barely sees them.
      None: no quota, the rest of the batch is drawn from every sample.
    - `foreground_share`: at least that share of each batch's BraTS part are slices with tumour, nnU-Net's
      foreground oversampling (it forces a third of each batch to contain foreground). Most pixels of most slices
      are background; a batch without tumour teaches the segmentation head only "predict nothing".
    Each pool (Kaggle, tumour slices, the rest) is walked in a fresh random order, without replacement until it is
    used up, then reshuffled; each batch is shuffled, so the processes of a DDP run, which take contiguous shares of
    it, each get a mix. An epoch has as many batches as plain shuffling would (the last partial batch dropped).
    Everything is drawn from `generator`: processes that seed it alike draw the same batches.
    """

    def __init__(self, has_mask: Tensor, labels: Tensor, batch_size: int, generator: torch.Generator,
                 kaggle_share: float | None = None, foreground_share: float = 0.0, warn: bool = True):
        self.generator, n = generator, len(labels)
        self.batch_size = min(batch_size, n)
        self.batches = max(n // batch_size, 1)
        kaggle, brats = torch.nonzero(~has_mask).flatten(), torch.nonzero(has_mask).flatten()
        foreground = torch.nonzero(has_mask & (labels == 1)).flatten()
        quota = kaggle_share is not None and len(kaggle) > 0 and len(brats) > 0
        if quota and self.batch_size == 1:  # no share of one sample holds both: round(0.5) left the Kaggle images out
            quota = False
            if warn:
                log.warning("kaggle_share %.3f: a batch of 1 cannot hold both sources; its sample is drawn from all "
                            "of them, the Kaggle images at their natural rate", kaggle_share)
        n_kaggle = kaggle_quota(kaggle_share, self.batch_size, warn) if quota else 0
        # rounded before the ceiling: 0.28 * 25 is 7.000000000000001 in floating point, and must give 7, not 8
        n_foreground = math.ceil(round(foreground_share * (self.batch_size - n_kaggle), 9)) if len(foreground) else 0
        if warn:  # every DDP process builds the same sampler: one of them says what is wrong with it
            _warn_unfilled_quota(foreground_share, n_foreground, len(foreground))
        rest = brats if quota else torch.arange(n)
        self.quotas = [(pool, size) for pool, size in ((kaggle, n_kaggle), (foreground, n_foreground),
                                                        (rest, self.batch_size - n_kaggle - n_foreground)) if size]

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        streams = [(_endless_shuffle(pool, self.generator), size) for pool, size in self.quotas]
        for _ in range(self.batches):
            batch = torch.cat([torch.stack([next(stream) for _ in range(size)]) for stream, size in streams])
            yield batch[torch.randperm(len(batch), generator=self.generator)].tolist()


def kaggle_quota(kaggle_share: float, batch_size: int, warn: bool = True) -> int:
    """Kaggle images per batch for `kaggle_share`: rounded, but never 0 or the whole batch while the batch can hold
    both sources. Rounded alone, a small share dropped the Kaggle images from every batch (fewer than at their
    natural rate) and a large one dropped the BraTS slices, and with them every mask of train_joint's batches.
    `batch_size` is at least 2: a batch of 1 holds no quota (ComposedBatches draws its sample from every source)."""
    wanted = round(kaggle_share * batch_size)
    n = min(max(wanted, 1), batch_size - 1)
    if warn and n != wanted:
        log.warning("kaggle_share %.3f of a batch of %d rounds to %d Kaggle images; taking %d so that each batch "
                    "holds both sources", kaggle_share, batch_size, wanted, n)
    return n


def _warn_unfilled_quota(foreground_share: float, n_foreground: int, tumour_slices: int) -> None:
    """Say when the foreground quota cannot be filled: no tumour slice at all, or fewer than a batch asks for."""
    if foreground_share > 0 and not tumour_slices:
        log.warning("foreground_share %.2f: the training slices hold no tumour, so the batches have none either; "
                    "the segmentation head can only learn \"no tumour\" (check the split and data/processed)",
                    foreground_share)
    elif 0 < tumour_slices < n_foreground:
        log.warning("foreground_share %.2f asks for %d tumour slices per batch but the training set has %d: "
                    "some repeat within a batch", foreground_share, n_foreground, tumour_slices)


def _endless_shuffle(pool: Tensor, generator: torch.Generator) -> Iterator[Tensor]:
    while True:
        yield from pool[torch.randperm(len(pool), generator=generator)]


def share_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Process `rank` of `world`'s contiguous share of a batch of n samples: [start, stop); all of it for one."""
    return n * rank // world, n * (rank + 1) // world


@dataclass(frozen=True)
class DrawnBatch:
    """A batch's sample indices with everything random about it, drawn in the main process in this order: the
    batch, its augmentation seed, its modality-dropout draws (None when there is nothing to drop)."""

    rows: list[int]
    seed: int
    modality_draws: ModalityDraws | None


class SeededBatches(Sampler[DrawnBatch]):
    """The batches of `batches`, each with its augmentation seed and modality-dropout draws, drawn after it from the
    same generator: the draws happen in the main process, whichever worker then reads and augments the batch."""

    def __init__(self, batches: ComposedBatches, generator: torch.Generator, channels: int = 1,
                 modality_dropout: float = 0.0):
        self.batches, self.generator = batches, generator
        self.channels, self.modality_dropout = channels, modality_dropout

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[DrawnBatch]:
        for batch in self.batches:
            seed = int(torch.randint(2**62, (), generator=self.generator))
            draws = draw_modality_dropout(len(batch), self.channels, self.modality_dropout, self.generator)
            yield DrawnBatch(batch, seed, draws)


class BatchShares(Sampler[list[int]]):
    """Process `rank` of `world`'s share of each batch of `batches` (unaugmented loading under DDP)."""

    def __init__(self, batches: ComposedBatches, part: tuple[int, int]):
        self.batches, self.part = batches, part

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            start, stop = share_bounds(len(batch), *self.part)
            yield batch[start:stop]

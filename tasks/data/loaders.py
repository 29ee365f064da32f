"""DataLoaders over the slice sets (tasks/data/datasets.py): training batches read and augmented where they are read,
validation batches read whole, in order.

Training batches are augmented where they are read (`AugmentedSlices`), modality dropout included: in the DataLoader's
worker processes when `train.num_workers` > 0, each batch with its own seed and dropout draws made in the main
process (tasks/data/batch_sampling.py), so a seeded run draws the same batches and augmentations with any number of
workers. On a GPU the loader only reads (`augment_on_device`): each batch carries its seed and draws (`PendingAugment`)
and the training step augments it after the copy, with the same draws; the CPU then has only reading to keep up with.
A DDP process reads only its share of each global batch (`training_loader`'s `part`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tasks.config import Augment
from tasks.data.augment import augment_batch
from tasks.data.batch_sampling import BatchShares, ComposedBatches, DrawnBatch, SeededBatches, share_bounds
from tasks.data.datasets import ShardSlices, SliceSet, collate_slices
from tasks.data.modality_dropout import ModalityDraws, drop_modalities


class BatchReads(Dataset):
    """`data` read a whole batch at a time (DataLoader's `__getitems__`): images float16 as stored, one buffer per
    batch instead of a tensor per sample (1.65-1.94x the slices per second in one process at 4x256^2, converted to
    float32 included: bench.bench_loader's validation reads), half the bytes of float32 to copy to a GPU. The batch
    is `collate_slices`'s, masks float16 (the BraTS labels 0/1/2/4 exactly): the consumer converts both after the
    copy."""

    def __init__(self, data: ShardSlices | SliceSet):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitems__(self, rows: list[int]) -> dict[str, Tensor]:
        images, masks = self.data.batch(rows, torch.float16)
        has_mask = self.data.has_mask[rows]
        masks[~has_mask] = 0  # a Kaggle image's mask is unknown: zeros, as collate_slices gives it
        return {"image": images, "mask": masks, "has_mask": has_mask, "label": self.data.labels[rows].float()}


def batches_in_order(data: ShardSlices | SliceSet, batch_size: int, num_workers: int = 0,
                     pin_memory: bool = False) -> DataLoader:
    """Every sample of `data` once, in order, in batches read whole (`BatchReads`), by `num_workers` worker
    processes while the consumer computes (0: in line): what validation reads. A fresh pass draws one number from
    torch's global generator (a DataLoader's base seed), with any number of workers, as before workers existed."""
    return DataLoader(BatchReads(data), batch_size=batch_size, shuffle=False, collate_fn=_already_collated,
                      num_workers=num_workers, pin_memory=pin_memory, worker_init_fn=forget_parent_exit_hooks)


def _already_collated(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return batch


def collate_pending(read: tuple[list[dict], PendingAugment]) -> dict:
    """`collate_slices` of a batch read for augmentation on the device, with its `PendingAugment` under "augment"."""
    samples, pending = read
    return {**collate_slices(samples), "augment": pending}


@dataclass(frozen=True)
class PendingAugment:
    """What a batch read without augmentation still needs, applied where it trains (`augment_on_device`): its seed,
    its share of the global batch, its modality-dropout draws and the stage's augmentation settings (a stage's own
    bias field among them: stage_augment), exactly what `AugmentedSlices` would have used."""

    seed: int
    part_of: tuple[int, int]
    modality_draws: ModalityDraws | None
    cfg: Augment
    crop: int | None = None

    def apply(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """The augmented float images and masks, on the device they are on (the draws are made on the CPU)."""
        images, masks = augment_batch(images.float(), masks.float(), self.cfg,
                                      torch.Generator().manual_seed(self.seed), part_of=self.part_of, crop=self.crop)
        return drop_modalities(images, self.modality_draws), masks


class AugmentedSlices(Dataset):
    """Training samples read and augmented a whole batch at a time (DataLoader's `__getitems__`) with the batch's
    seed, then thinned by its modality-dropout draws: the same samples whether the main process or a worker reads
    the batch. With `part=(rank, world)` only that process's share of each batch is read and augmented (a DDP
    process), each sample exactly as a single process would have it. `crop`: the side of the windows training
    sees instead of whole slices (`augment_batch`)."""

    def __init__(self, data: ShardSlices | SliceSet, cfg: Augment, part: tuple[int, int] = (0, 1),
                 defer: bool = False, crop: int | None = None):
        self.data, self.cfg, self.part, self.defer, self.crop = data, cfg, part, defer, crop

    def __len__(self) -> int:
        return len(self.data)

    def __getitems__(self, batch: DrawnBatch) -> list[dict] | tuple[list[dict], PendingAugment]:
        """The batch's samples, augmented; with `defer`, as stored (float16) with what augmenting them needs."""
        start, stop = share_bounds(len(batch.rows), *self.part)
        rows = batch.rows[start:stop]
        draws = batch.modality_draws.part(start, stop) if batch.modality_draws is not None else None
        if self.defer:
            images, masks = self.data.batch(rows, torch.float16)
        else:
            images, masks = augment_batch(*self.data.batch(rows), self.cfg, torch.Generator().manual_seed(batch.seed),
                                          part_of=(start, len(batch.rows)), crop=self.crop)
            images = drop_modalities(images, draws)
        has_mask, labels = self.data.has_mask[rows].tolist(), self.data.labels[rows].float()
        samples = [{"image": images[j], "mask": masks[j] if has_mask[j] else None, "label": labels[j]}
                   for j in range(len(rows))]
        if not self.defer:
            return samples
        return samples, PendingAugment(batch.seed, (start, len(batch.rows)), draws, self.cfg, self.crop)


def training_loader(data: Dataset, batch_size: int, generator: torch.Generator, num_workers: int = 0,
                    kaggle_share: float | None = None, foreground_share: float = 0.0,
                    pin_memory: bool = False, augment: Augment | None = None,
                    part: tuple[int, int] = (0, 1), augment_on_device: bool = False,
                    crop: int | None = None) -> DataLoader:
    """Training batches composed by `ComposedBatches` (Kaggle quota, foreground oversampling), augmented with
    `augment` (None: as stored; its `modality_dropout` included) where they are read: in `num_workers` worker
    processes (kept across epochs), or in this one when 0. `augment_on_device`: read only, float16, each batch with
    its `PendingAugment` under "augment" for the training step to apply after the copy (the same draws).

    `part=(rank, world)`: every process draws the same global batches (`batch_size` samples) and reads only its
    share of each (DDP, tasks/training/distributed.py). `pin_memory` puts each batch in page-locked memory, so its
    copy to a GPU can overlap compute (CUDA only). `crop`: augmented batches are crop x crop windows around each
    slice's brain (`train_seg.crop`; tasks/data/augment.py).
    """
    sampler = ComposedBatches(data.has_mask, data.labels, batch_size, generator, kaggle_share, foreground_share,
                              warn=part[0] == 0)
    collate = collate_slices
    if augment is not None:
        data, sampler = (AugmentedSlices(data, augment, part, defer=augment_on_device, crop=crop),
                         SeededBatches(sampler, generator, data.image_shape[0], augment.modality_dropout))
        collate = collate_pending if augment_on_device else collate_slices
    elif part != (0, 1):
        sampler = BatchShares(sampler, part)
    return _TrainingLoader(data, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                           pin_memory=pin_memory, persistent_workers=num_workers > 0,
                           worker_init_fn=forget_parent_exit_hooks)


def forget_parent_exit_hooks(worker_id: int) -> None:
    """Drop, in a loader worker, the hooks its parent registered to run when the parent's threads shut down.

    A forked worker inherits that list (`threading._register_atexit`) but none of the threads. Prefect's log and
    event services register one that asserts its own thread's state, and the Prefect flow calls the steps inside
    the flow's process, beside those services: there every worker's exit raised it, so the worker exited with code 1
    ("DataLoader worker exited unexpectedly": a failed step for a loader made per epoch, a warning at the end of each
    stage for ours). The worker has none of those threads to stop, so it has nothing to run."""
    hooks = getattr(threading, "_threading_atexits", None)  # CPython's list behind _register_atexit (3.9+)
    if hooks is not None:
        hooks.clear()


class _TrainingLoader(DataLoader):
    """A DataLoader whose epochs take the same draws from torch's global generator with 0 or N workers.

    A fresh iterator (every epoch with 0 workers) draws its workers' base seed from the global generator; a persistent
    workers' iterator, reused from the second epoch on, draws nothing. The model's dropout noise comes after it from
    that generator (seeded per epoch, tasks/training/stage.py), so a reused iterator takes the same one draw here."""

    def __iter__(self):
        reused = self.persistent_workers and self.num_workers > 0 and self._iterator is not None \
            and self.generator is None  # the base seed comes from torch's global generator only without a generator
        batches = super().__iter__()
        if reused:
            torch.empty((), dtype=torch.int64).random_()  # what a fresh iterator's base seed would have taken
        return batches

"""The slices each training stage learns from, streamed from their shards (`ShardSlices`).

    seg    BraTS slices (every slice, or only those with tumour: train_seg.tumour_slices_only)
    cls    Kaggle images + a share of the BraTS slices (train_cls.brats_fraction), validated on both
    joint  every BraTS slice and Kaggle image
A stage holds only the manifest's columns (shard, row, has_mask, label) in memory; images and masks are read row by
row when a batch is drawn (tasks/data/shards.py: ShardRowReader), so its memory does not grow with the data set.
Training batches are augmented where they are read (`AugmentedSlices`), modality dropout included: in the DataLoader's
worker processes when `train.num_workers` > 0, each batch with its own seed and dropout draws made in the main
process, so a seeded run draws the same batches and augmentations with any number of workers. On a GPU the loader
only reads (`augment_on_device`): each batch carries its seed and draws (`PendingAugment`) and the training step
augments it after the copy, with the same draws; the CPU then has only reading to keep up with. A DDP process reads only
its share of each global batch (`training_loader`'s `part`).
Kaggle images have no mask: a sample's mask is `None` and `collate_slices` turns a batch of mixed samples into
zero masks plus a `has_mask` flag, so losses can ignore the masks that are unknown.
`SliceSet` holds slices as tensors in memory: for tests and benchmarks that build their own.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from tasks import paths
from tasks.config import Augment
from tasks.data.augment import augment_batch
from tasks.data.modality_dropout import ModalityDraws, draw_modality_dropout, drop_modalities
from tasks.data.shards import ShardRowReader, read_manifest, read_shard
from tasks.data.splits import read_split
from tasks.errors import SliceWiseError

log = logging.getLogger(__name__)

STAGE_SOURCES = {"seg": ("brats",), "cls": ("brats", "kaggle"), "joint": ("brats", "kaggle")}


@dataclass(frozen=True)
class SliceSet(Dataset):
    """Slices as tensors: images float16 (N, C, H, W), masks uint8 (N, H, W), has_mask bool (N,), labels (N,)."""

    images: Tensor
    masks: Tensor
    has_mask: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i].float(),
            "mask": self.masks[i][None].float() if self.has_mask[i] else None,
            "label": self.labels[i].float(),
        }

    def batch(self, rows: list[int], dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """Images (n, C, H, W) and masks (n, 1, H, W) of these rows as `dtype`, one tensor each."""
        take = torch.as_tensor(rows, dtype=torch.long)
        return self.images[take].to(dtype), self.masks[take][:, None].to(dtype)

    def subset(self, rows: np.ndarray | Tensor) -> "SliceSet":
        rows = torch.as_tensor(rows, dtype=torch.long)
        return SliceSet(self.images[rows], self.masks[rows], self.has_mask[rows], self.labels[rows])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


class ShardSlices(Dataset):
    """Slices read from their shards on demand: in memory only which shard and row each one is, has_mask, labels."""

    def __init__(self, processed: Path, shard_names: list[str], shard_ids: np.ndarray, rows: np.ndarray,
                 has_mask: Tensor, labels: Tensor, reader: ShardRowReader):
        self.processed, self.shard_names, self.reader = processed, shard_names, reader
        self.shard_ids, self.rows, self.has_mask, self.labels = shard_ids, rows, has_mask, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        image, mask = self.reader.row(self.processed / self.shard_names[self.shard_ids[i]], int(self.rows[i]))
        return {
            "image": torch.from_numpy(image.astype(np.float32)),
            "mask": torch.from_numpy(mask.astype(np.float32))[None] if self.has_mask[i] else None,
            "label": self.labels[i].float(),
        }

    def batch(self, rows: list[int], dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """Images (n, C, H, W) and masks (n, 1, H, W) of these rows as `dtype`, read into one buffer each."""
        images = np.empty((len(rows), *self.image_shape), np.float16)
        masks = np.empty((len(rows), *images.shape[2:]), np.uint8)
        for j, i in enumerate(rows):
            self.reader.row(self.processed / self.shard_names[self.shard_ids[i]], int(self.rows[i]),
                            out=(images[j], masks[j]))
        return torch.from_numpy(images).to(dtype), torch.from_numpy(masks)[:, None].to(dtype)

    def subset(self, rows: np.ndarray | Tensor) -> "ShardSlices":
        rows = torch.as_tensor(rows, dtype=torch.long)
        take = rows.numpy()
        return ShardSlices(self.processed, self.shard_names, self.shard_ids[take], self.rows[take],
                           self.has_mask[rows], self.labels[rows], self.reader)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        if not self.shard_names:
            return (1, 1, 1)
        return tuple(self.reader.members(self.processed / self.shard_names[0])["images"].shape[1:])


def collate_slices(samples: list[dict]) -> dict[str, Tensor]:
    """Stack samples into a batch; a missing mask becomes zeros with has_mask False.

    `default_collate` stacks as torch.stack does, but in a loader worker straight into shared memory (no copy)."""
    images = default_collate([s["image"] for s in samples])
    blank = torch.zeros((1, *images.shape[2:]), dtype=images.dtype)
    return {
        "image": images,
        "mask": default_collate([blank if s["mask"] is None else s["mask"] for s in samples]),
        "has_mask": torch.tensor([s["mask"] is not None for s in samples]),
        "label": torch.stack([s["label"] for s in samples]),
    }


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
    natural rate) and a large one dropped the BraTS slices, and with them every mask of train_joint's batches."""
    wanted = round(kaggle_share * batch_size)
    n = min(max(wanted, 1), batch_size - 1) if batch_size > 1 else wanted
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


@dataclass(frozen=True)
class PendingAugment:
    """What a batch read without augmentation still needs, applied where it trains (`augment_on_device`): its seed,
    its share of the global batch and its modality-dropout draws, exactly what `AugmentedSlices` would have used."""

    seed: int
    part_of: tuple[int, int]
    modality_draws: ModalityDraws | None
    crop: int | None = None

    def apply(self, images: Tensor, masks: Tensor, cfg: Augment) -> tuple[Tensor, Tensor]:
        """The augmented float images and masks, on the device they are on (the draws are made on the CPU)."""
        images, masks = augment_batch(images.float(), masks.float(), cfg, torch.Generator().manual_seed(self.seed),
                                      part_of=self.part_of, crop=self.crop)
        return drop_modalities(images, self.modality_draws), masks


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
        return (samples, PendingAugment(batch.seed, (start, len(batch.rows)), draws, self.crop)) if self.defer \
            else samples


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


def _manifest_rows(processed: Path, patients: list[str], sources: tuple[str, ...]):
    manifest_path = processed / paths.MANIFEST.name
    if not manifest_path.exists():
        raise SliceWiseError("manifest not found (run the slice step first)", manifest_path)
    manifest = read_manifest(manifest_path)
    return manifest[manifest["patient"].isin(set(patients)) & manifest["source"].isin(sources)]


def stream_slices(processed: Path, patients: list[str], sources: tuple[str, ...],
                  reader: ShardRowReader) -> ShardSlices:
    """Every manifest row of these patients from these sources, in manifest order, read from the shards on demand.

    Checks now what would otherwise fail mid-epoch: every shard exists, and has the rows and channels listed."""
    rows = _manifest_rows(processed, patients, sources)
    shard_ids, shard_names = pd.factorize(rows["shard"])
    shapes = set()
    for name, last_row in zip(shard_names, rows.groupby("shard", sort=False)["row"].max()):
        images = reader.members(processed / name)["images"]
        if images.shape[0] <= last_row:
            raise SliceWiseError(f"the manifest lists row {last_row} but the shard has {images.shape[0]} rows "
                                 "(rerun the slice step)", processed / name)
        shapes.add(images.shape[1:])
    if len(shapes) > 1:
        raise SliceWiseError(f"shards of different image shapes {sorted(shapes)} (rerun the slice step)", processed)
    return ShardSlices(processed, list(shard_names), shard_ids.astype(np.int32), rows["row"].to_numpy(np.int64),
                       torch.tensor(rows["has_mask"].to_numpy(bool)),
                       torch.tensor(rows["label"].to_numpy(np.uint8)), reader)


def load_slices(processed: Path, patients: list[str], sources: tuple[str, ...]) -> SliceSet:
    """Every manifest row of these patients from these sources, in manifest order, each shard read once, in memory
    (for benchmarks and tools on small sets; training streams them: `stream_slices`)."""
    rows = _manifest_rows(processed, patients, sources)
    parts = []
    for shard_name, shard_rows in rows.groupby("shard", sort=False):
        shard_path = processed / shard_name
        if not shard_path.exists():
            raise SliceWiseError("shard listed in the manifest is missing (rerun the slice step)", shard_path)
        shard, take = read_shard(shard_path), shard_rows["row"].to_numpy()
        parts.append((shard.images[take], shard.masks[take], shard.has_mask[take], shard.labels[take]))
    if not parts:
        return SliceSet(torch.zeros(0, 1, 1, 1, dtype=torch.float16), torch.zeros(0, 1, 1, dtype=torch.uint8),
                        torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.uint8))
    images, masks, has_mask, labels = (np.concatenate(column) for column in zip(*parts))
    return SliceSet(torch.from_numpy(images.astype(np.float16)), torch.from_numpy(masks.astype(np.uint8)),
                    torch.from_numpy(has_mask.astype(bool)), torch.from_numpy(labels.astype(np.uint8)))


def stage_data(stage: str, processed: Path, splits_dir: Path, stage_params, seed: int,
               cache_bytes: int = 256 * 2**20) -> tuple[ShardSlices, ShardSlices]:
    """(train, val) slices of one training stage, streamed through one ShardRowReader that keeps at most
    `cache_bytes` of decompressed (legacy, compressed) shards; fails with SliceWiseError when either is empty."""
    sources, reader = STAGE_SOURCES[stage], ShardRowReader(cache_bytes)
    train = stream_slices(processed, read_split("train", splits_dir), sources, reader)
    val = stream_slices(processed, read_split("val", splits_dir), sources, reader)
    if stage == "seg" and stage_params.tumour_slices_only:
        train = train.subset(torch.nonzero(train.labels == 1).flatten())
    if stage == "cls" and stage_params.brats_fraction < 1:
        train = _drop_brats_share(train, 1 - stage_params.brats_fraction, seed)
    for name, part in (("train", train), ("val", val)):
        if len(part) == 0:
            raise SliceWiseError(f"no {'/'.join(sources)} slices in the {name} split for stage {stage}", splits_dir)
    return train, val


def _drop_brats_share(data: ShardSlices, share: float, seed: int) -> ShardSlices:
    """Seeded: remove `share` of the BraTS slices (those with masks), keep every Kaggle image."""
    brats = torch.nonzero(data.has_mask).flatten().numpy()
    dropped = np.random.default_rng(seed).choice(brats, size=round(share * len(brats)), replace=False)
    return data.subset(np.setdiff1d(np.arange(len(data)), dropped))


def data_fingerprint(processed: Path, splits_dir: Path) -> str:
    """Identity of the processed data and splits, for resuming: manifest, split lists, the slice step's
    per-patient fingerprints (what each BraTS shard was made from: raw file digests and the slicing spec and code)
    and the Kaggle shards' bytes (remade every run; small). Shard sizes alone would not do: an uncompressed shard's
    size depends only on its shapes, so resliced intensities would resume weights trained on the old ones."""
    digest = hashlib.sha256()
    for path in [processed / paths.MANIFEST.name, processed / paths.FINGERPRINTS.name,
                 *(splits_dir / f"{name}.txt" for name in ("train", "val", "test"))]:
        digest.update(path.read_bytes() if path.exists() else b"-")
    for shard in sorted(processed.rglob("*.npz")):
        digest.update(f"{shard.relative_to(processed)}:{shard.stat().st_size}".encode())
        if shard.parent.name == "kaggle":
            with shard.open("rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha1").digest())
    return digest.hexdigest()[:16]

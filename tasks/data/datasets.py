"""The slices each training stage learns from, streamed from their shards (`ShardSlices`).

    seg    BraTS slices (every slice, or only those with tumour: train_seg.tumour_slices_only)
    cls    Kaggle images + a share of the BraTS slices (train_cls.brats_fraction), validated on both
    joint  every BraTS slice and Kaggle image
A stage holds only the manifest's columns (shard, row, has_mask, label) in memory; images and masks are read row by
row when a batch is drawn (tasks/data/shards.py: ShardRowReader), so its memory does not grow with the data set.
Batches are drawn by tasks/data/batch_sampling.py and read (and augmented) by tasks/data/loaders.py.
Kaggle images have no mask: a sample's mask is `None` and `collate_slices` turns a batch of mixed samples into
zero masks plus a `has_mask` flag, so losses can ignore the masks that are unknown.
`SliceSet` holds slices as tensors in memory: for tests and benchmarks that build their own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from tasks import paths
from tasks.data.shards import ShardRowReader, read_manifest, read_shard
from tasks.data.splits import read_split
from tasks.errors import SliceWiseError

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
            only_tumour = name == "train" and stage == "seg" and stage_params.tumour_slices_only
            what, why = (("tumour", " (train_seg.tumour_slices_only is true)") if only_tumour
                         else ("/".join(sources), ""))
            raise SliceWiseError(f"no {what} slices in the {name} split for stage {stage}{why}", splits_dir)
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
    for path in paths.data_identity_files(processed, splits_dir):
        digest.update(path.read_bytes() if path.exists() else b"-")
    for shard in sorted(processed.rglob("*.npz")):
        digest.update(f"{shard.relative_to(processed)}:{shard.stat().st_size}".encode())
        if shard.parent.name == "kaggle":
            with shard.open("rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha1").digest())
    return digest.hexdigest()[:16]

"""The slices each training stage learns from, held in memory as tensors (the processed sets are small).

    seg    BraTS slices (every slice, or only those with tumour: train_seg.tumour_slices_only)
    cls    Kaggle images + a share of the BraTS slices (train_cls.brats_fraction), validated on both
    joint  every BraTS slice and Kaggle image
Kaggle images have no mask: a sample's mask is `None` and `collate_slices` turns a batch of mixed samples into
zero masks plus a `has_mask` flag, so losses can ignore the masks that are unknown.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from tasks import paths
from tasks.data.shards import read_manifest, read_shard
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

    def subset(self, rows: np.ndarray | Tensor) -> "SliceSet":
        rows = torch.as_tensor(rows, dtype=torch.long)
        return SliceSet(self.images[rows], self.masks[rows], self.has_mask[rows], self.labels[rows])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def collate_slices(samples: list[dict]) -> dict[str, Tensor]:
    """Stack samples into a batch; a missing mask becomes zeros with has_mask False."""
    images = torch.stack([s["image"] for s in samples])
    blank = torch.zeros((1, *images.shape[2:]), dtype=images.dtype)
    return {
        "image": images,
        "mask": torch.stack([blank if s["mask"] is None else s["mask"] for s in samples]),
        "has_mask": torch.tensor([s["mask"] is not None for s in samples]),
        "label": torch.stack([s["label"] for s in samples]),
    }


def training_loader(data: SliceSet, batch_size: int, generator: torch.Generator, num_workers: int = 0,
                    kaggle_share: float | None = None, pin_memory: bool = False) -> DataLoader:
    """Shuffled batches; with `kaggle_share`, each epoch draws that share of its samples from the Kaggle images.

    The Kaggle images are few next to the BraTS slices; drawn at their natural rate the classifier barely sees
    them. Drawing with replacement keeps the epoch length (and cost) unchanged. Kaggle = the samples without mask.
    `pin_memory` puts each batch in page-locked memory, so its copy to a GPU can overlap compute (CUDA only).
    The order depends only on `generator`: processes of a DDP run that seed it alike draw the same batches.
    """
    sampler = None
    kaggle = ~data.has_mask
    if kaggle_share is not None and 0 < int(kaggle.sum()) < len(data):
        weights = torch.where(kaggle, kaggle_share / kaggle.sum(), (1 - kaggle_share) / (~kaggle).sum()).double()
        sampler = WeightedRandomSampler(weights, num_samples=len(data), replacement=True, generator=generator)
    return DataLoader(data, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, generator=generator,
                      collate_fn=collate_slices, num_workers=num_workers, drop_last=len(data) > batch_size,
                      pin_memory=pin_memory)


def load_slices(processed: Path, patients: list[str], sources: tuple[str, ...]) -> SliceSet:
    """Every manifest row of these patients from these sources, in manifest order, each shard read once."""
    manifest_path = processed / paths.MANIFEST.name
    if not manifest_path.exists():
        raise SliceWiseError("manifest not found (run the slice step first)", manifest_path)
    manifest = read_manifest(manifest_path)
    rows = manifest[manifest["patient"].isin(set(patients)) & manifest["source"].isin(sources)]
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


def stage_data(stage: str, processed: Path, splits_dir: Path, stage_params, seed: int) -> tuple[SliceSet, SliceSet]:
    """(train, val) slices of one training stage; fails with SliceWiseError when either is empty."""
    sources = STAGE_SOURCES[stage]
    train = load_slices(processed, read_split("train", splits_dir), sources)
    val = load_slices(processed, read_split("val", splits_dir), sources)
    if stage == "seg" and stage_params.tumour_slices_only:
        train = train.subset(torch.nonzero(train.labels == 1).flatten())
    if stage == "cls" and stage_params.brats_fraction < 1:
        train = _drop_brats_share(train, 1 - stage_params.brats_fraction, seed)
    for name, part in (("train", train), ("val", val)):
        if len(part) == 0:
            raise SliceWiseError(f"no {'/'.join(sources)} slices in the {name} split for stage {stage}", splits_dir)
    return train, val


def _drop_brats_share(data: SliceSet, share: float, seed: int) -> SliceSet:
    """Seeded: remove `share` of the BraTS slices (those with masks), keep every Kaggle image."""
    brats = torch.nonzero(data.has_mask).flatten().numpy()
    dropped = np.random.default_rng(seed).choice(brats, size=round(share * len(brats)), replace=False)
    return data.subset(np.setdiff1d(np.arange(len(data)), dropped))


def data_fingerprint(processed: Path, splits_dir: Path) -> str:
    """Cheap identity of the processed data and splits: manifest, split lists and shard sizes."""
    digest = hashlib.sha256()
    manifest_path = processed / paths.MANIFEST.name
    for path in [manifest_path, *(splits_dir / f"{name}.txt" for name in ("train", "val", "test"))]:
        digest.update(path.read_bytes() if path.exists() else b"-")
    for shard in sorted(processed.rglob("*.npz")):
        digest.update(f"{shard.relative_to(processed)}:{shard.stat().st_size}".encode())
    return digest.hexdigest()[:16]

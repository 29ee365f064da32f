"""The on-disk format of processed data: one compressed shard per patient (or Kaggle image group) + a manifest.

A shard is an `.npz` with
    images       float16 (N, C, H, W)  z-scored slices, C = len(slice.modalities)
    masks        uint8   (N, H, W)     binary whole-tumour mask (all zeros for Kaggle images: no mask known)
    has_mask     bool    (N,)          False for Kaggle images, whose masks are unknown
    labels       uint8   (N,)          1 = tumour present
    slice_index  int16   (N,)          axial index in the source volume (-1 for Kaggle images)
    spacing      float32 (2,)          in-plane pixel spacing in mm after resizing
One shard per patient keeps the number of files DVC hashes small; the manifest has one row per slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.io import atomic_write

MANIFEST_COLUMNS = ["patient", "source", "shard", "row", "slice_index", "label", "tumour_area_px", "has_mask"]


@dataclass(frozen=True)
class Shard:
    images: np.ndarray
    masks: np.ndarray
    has_mask: np.ndarray
    labels: np.ndarray
    slice_index: np.ndarray
    spacing: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def write_shard(path: Path, shard: Shard) -> None:
    """Write atomically (temp file + rename) so a killed run never leaves a half shard that looks complete."""
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **shard.__dict__)


def read_shard(path: Path) -> Shard:
    with np.load(path) as npz:
        return Shard(**{name: npz[name] for name in Shard.__dataclass_fields__})


def manifest_rows(patient: str, source: str, shard_name: str, shard: Shard) -> list[dict]:
    return [
        {
            "patient": patient,
            "source": source,
            "shard": shard_name,
            "row": row,
            "slice_index": int(shard.slice_index[row]),
            "label": int(shard.labels[row]),
            "tumour_area_px": int(shard.masks[row].sum()),
            "has_mask": bool(shard.has_mask[row]),
        }
        for row in range(len(shard))
    ]


def read_manifest(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"patient": str, "source": str, "shard": str})

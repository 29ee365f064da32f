"""The on-disk format of processed data: one compressed shard per patient (or Kaggle image group) + a manifest.

A shard is an `.npz` with
    images       float16 (N, C, H, W)  z-scored slices, C = len(slice.modalities)
    masks        uint8   (N, H, W)     BraTS 2020 label map 0/1/2/4 (tasks/data/regions.py; all zeros for Kaggle)
    has_mask     bool    (N,)          False for Kaggle images, whose masks are unknown
    labels       uint8   (N,)          1 = tumour present
    slice_index  int16   (N,)          axial index in the source volume (-1 for Kaggle images)
    spacing      float32 (2,)          in-plane pixel spacing in mm after resizing
One shard per patient keeps the number of files DVC hashes small; the manifest has one row per slice.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.errors import SliceWiseError
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


# What a damaged or foreign .npz raises while it is read: a truncated zip, a bad CRC, a bad deflate stream, a
# missing array, a member that is no array.
UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, ValueError)


def read_shard(path: Path) -> Shard:
    """The shard at `path`; a damaged one is a SliceWiseError naming it (rerun `slice` to rebuild it)."""
    try:
        with np.load(path) as npz:
            return Shard(**{name: npz[name] for name in Shard.__dataclass_fields__})
    except UNREADABLE as exc:
        raise SliceWiseError(f"unreadable shard ({type(exc).__name__}: {exc}); run `dvc repro slice` (or "
                             "`python -m tasks slice`) to slice its patient again", path) from exc


def shard_problem(path: Path, rows: int, channels: int, size: int) -> str | None:
    """Why the shard at `path` cannot be reused for `rows` slices of `channels` × `size` × `size`, or None when
    it can. Reads every array, so every zip member's CRC is checked: a truncated or altered file is found."""
    if not path.is_file():
        return "missing"
    try:
        shard = read_shard(path)
    except SliceWiseError as exc:
        return exc.reason.split(";")[0]
    expected = {"images": (rows, channels, size, size), "masks": (rows, size, size), "has_mask": (rows,),
                "labels": (rows,), "slice_index": (rows,), "spacing": (2,)}
    for name, shape in expected.items():
        if getattr(shard, name).shape != shape:
            return f"{name} has shape {getattr(shard, name).shape}, expected {shape}"
    return None


def manifest_rows(patient: str, source: str, shard_name: str, shard: Shard) -> list[dict]:
    return [
        {
            "patient": patient,
            "source": source,
            "shard": shard_name,
            "row": row,
            "slice_index": int(shard.slice_index[row]),
            "label": int(shard.labels[row]),
            "tumour_area_px": int((shard.masks[row] > 0).sum()),  # whole tumour: masks hold labels 0/1/2/4
            "has_mask": bool(shard.has_mask[row]),
        }
        for row in range(len(shard))
    ]


def read_manifest(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"patient": str, "source": str, "shard": str})

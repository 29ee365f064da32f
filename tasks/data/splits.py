"""The split lists on disk (data/splits/{train,val,test}.txt, one patient id a line) and the slices they select.

The split step writes them; training, evaluation, export and register read them through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from tasks import paths
from tasks.data.shards import read_manifest, read_shard
from tasks.errors import SliceWiseError
from tasks.io import write_text_atomic

SPLITS = ("train", "val", "test")


def write_split(name: str, patients: list[str], splits_dir: Path) -> None:
    write_text_atomic("".join(f"{p}\n" for p in patients), splits_dir / f"{name}.txt")


def read_split(name: str, splits_dir: Path = paths.SPLITS) -> list[str]:
    """The patient ids of one split (train, val or test)."""
    path = splits_dir / f"{name}.txt"
    if not path.exists():
        raise SliceWiseError("split list not found (run the split step first)", path)
    return [line for line in path.read_text().splitlines() if line]


def split_rows(processed: Path, patients: list[str]) -> pd.DataFrame:
    """The manifest rows of these patients (BraTS patients and Kaggle images alike)."""
    manifest_path = processed / paths.MANIFEST.name
    if not manifest_path.exists():
        raise SliceWiseError("manifest not found (run the slice step first)", manifest_path)
    rows = read_manifest(manifest_path)
    rows = rows[rows["patient"].isin(set(patients))].reset_index(drop=True)
    if rows.empty:
        raise SliceWiseError("no processed slice belongs to this split", processed)
    return rows


def evenly_spaced(rows: pd.DataFrame, most: int) -> pd.DataFrame:
    """At most `most` of `rows`, evenly spaced in their order from the first to the last (so each patient's slices
    get about their share), all of them when there are no more than that or `most` is 0."""
    if most <= 0 or len(rows) <= most:
        return rows
    return rows.iloc[np.linspace(0, len(rows) - 1, most).round().astype(int)]


def iter_test_slices(processed: Path, splits_dir: Path, most: int = 0) -> Iterator[np.ndarray]:
    """The test split's slices (float32 NCHW), one shard at a time so memory stays bounded; at most `most` of them,
    evenly spaced (`evenly_spaced`; 0: all)."""
    return iter_slices(processed, evenly_spaced(split_rows(processed, read_split("test", splits_dir)), most))


def iter_slices(processed: Path, rows: pd.DataFrame) -> Iterator[np.ndarray]:
    """The slices of these manifest rows (float32 NCHW), one shard at a time so memory stays bounded."""
    for shard_name, shard_rows in rows.groupby("shard", sort=False):
        images = read_shard(processed / shard_name).images[shard_rows["row"].to_numpy()]
        yield np.ascontiguousarray(images, dtype=np.float32)

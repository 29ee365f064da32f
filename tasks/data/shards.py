"""The on-disk format of processed data: one shard per patient (or Kaggle image group) + a manifest.

A shard is an uncompressed `.npz` (`np.savez`: a zip of `.npy` members, stored, not deflated) with
    images       float16 (N, C, H, W)  z-scored slices, C = len(slice.modalities)
    masks        uint8   (N, H, W)     BraTS 2020 label map 0/1/2/4 (tasks/data/regions.py; all zeros for Kaggle)
    has_mask     bool    (N,)          False for Kaggle images, whose masks are unknown
    labels       uint8   (N,)          1 = tumour present
    slice_index  int16   (N,)          axial index in the display-oriented volume, inferior to superior
                                       (tasks/data/orientation.py; BraTS's own index) (-1 for Kaggle images)
    spacing      float32 (3,)          pixel spacing in mm after resizing (x, y) and the source's slice thickness (z),
                                       of the display-oriented volume (NaN for Kaggle images; (2,) before 2026-12-02)
One shard per patient keeps the number of files DVC hashes small; the manifest has one row per slice.

Training streams its slices: `ShardRowReader` reads one row of `images` and `masks` in place (a stored member's
array lies at a fixed offset in the file, so row i is one `pread`), and holds nothing else in memory; the OS page
cache, which no process's RSS counts, keeps hot shards. Shards written compressed (`compress=True`, or by an older
version of the slice step) are read too: each member is decompressed whole, once, into an LRU cache bounded by
`cache_bytes` (`train.cache_mb`). docs/scale.md, "Streaming training data", has the measurements behind it.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections import OrderedDict
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


def write_shard(path: Path, shard: Shard, compress: bool = False) -> None:
    """Write atomically (temp file + rename) so a killed run never leaves a half shard that looks complete.

    Uncompressed by default, so training reads single rows in place (see the module docstring)."""
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        (np.savez_compressed if compress else np.savez)(fh, **shard.__dict__)


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
                "labels": (rows,), "slice_index": (rows,), "spacing": (3,)}
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
    # keep_default_na=False: a patient folder named NA, None or null is a name, not a missing value
    return pd.read_csv(path, dtype={"patient": str, "source": str, "shard": str}, keep_default_na=False)


ROW_ARRAYS = ("images", "masks")  # what training reads per slice; the rest comes from the manifest


@dataclass(frozen=True)
class Member:
    """Where one array of a shard lies: its dtype and shape, and its byte offset when stored (None: deflated)."""

    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int | None

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


def shard_members(path: Path) -> dict[str, Member]:
    """The layout of the row arrays of the shard at `path`, from its zip directory and `.npy` headers."""
    try:
        with open(path, "rb") as fh, zipfile.ZipFile(fh) as archive:
            return {name: _member(fh, archive, archive.getinfo(f"{name}.npy")) for name in ROW_ARRAYS}
    except UNREADABLE as exc:
        raise SliceWiseError(f"unreadable shard ({type(exc).__name__}: {exc}); run `dvc repro slice` (or "
                             "`python -m tasks slice`) to slice its patient again", path) from exc


def _member(fh, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Member:
    if info.compress_type != zipfile.ZIP_STORED:
        with archive.open(info) as member:
            shape, fortran, dtype = _npy_header(member)
        return Member(dtype, shape, None)
    fh.seek(info.header_offset)
    local = fh.read(30)  # the local file header: its name and extra field lengths sit at bytes 26-29
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    fh.seek(info.header_offset + 30 + name_length + extra_length)
    shape, fortran, dtype = _npy_header(fh)
    if fortran or dtype.hasobject:
        raise ValueError(f"{info.filename} is not a C-ordered plain array")
    return Member(dtype, shape, fh.tell())


def _npy_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(fh)


class ShardRowReader:
    """Single rows of the `images` and `masks` of any shard, read without loading the rest of the shard.

    Stored members: one `os.preadv` per row and array, nothing kept. Deflated members: decompressed whole on first
    use into an LRU cache whose accounted bytes (`cached_bytes`) stay within `cache_bytes` (one array more than the
    bound only while an array larger than the whole cache is in use). Open files are kept (at most `max_open`, the
    least recently used closed first); a forked DataLoader worker shares them safely, as `preadv` moves no file
    position. A pickled copy (a worker under spawn) starts empty.
    """

    def __init__(self, cache_bytes: int, max_open: int = 256):
        self.cache_bytes, self.max_open = cache_bytes, max_open
        self._files: OrderedDict[Path, tuple[int, dict[str, Member]]] = OrderedDict()
        self._layouts: dict[Path, dict[str, Member]] = {}
        self._arrays: OrderedDict[tuple[Path, str], np.ndarray] = OrderedDict()
        self.cached_bytes = 0
        self.peak_cached_bytes = 0

    def __getstate__(self) -> dict:
        return {"cache_bytes": self.cache_bytes, "max_open": self.max_open}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["cache_bytes"], state["max_open"])

    def members(self, path: Path) -> dict[str, Member]:
        return self._open(path)[1]

    def row(self, path: Path, row: int, out: tuple[np.ndarray, np.ndarray] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
        """(image C×H×W, mask H×W) of one row; read into `out` (e.g. rows of a batch buffer) when given."""
        fd, members = self._open(path)
        return tuple(self._read(path, fd, name, members[name], row, target)
                     for name, target in zip(ROW_ARRAYS, out or (None, None)))

    def _read(self, path: Path, fd: int, name: str, member: Member, row: int, out: np.ndarray | None) -> np.ndarray:
        if not 0 <= row < member.shape[0]:
            raise SliceWiseError(f"row {row} of {name} is out of range (the shard has {member.shape[0]}); the "
                                 "manifest does not match its shards: rerun the slice step", path)
        if member.offset is None or (out is not None and (out.dtype, out.shape) != (member.dtype, member.shape[1:])):
            source = self._cached(path, name)[row] if member.offset is None else self._read(path, fd, name, member,
                                                                                           row, None)
            if out is None:
                return source
            out[...] = source
            return out
        if out is None:
            out = np.empty(member.shape[1:], member.dtype)
        # Straight into `out`: no intermediate bytes object.
        if os.preadv(fd, [out], member.offset + row * member.row_bytes) != member.row_bytes:
            raise SliceWiseError(f"shard is truncated (row {row} of {name}); rerun the slice step", path)
        return out

    def _cached(self, path: Path, name: str) -> np.ndarray:
        key = (path, name)
        if key in self._arrays:
            self._arrays.move_to_end(key)
            return self._arrays[key]
        shard = read_shard(path)  # damaged: a SliceWiseError naming the file
        # Decompressing the shard unpacks every array: keep both row arrays (a row read wants the other one next),
        # the one asked for last so that it is the most recently used.
        for other in [n for n in ROW_ARRAYS if n != name and (path, n) not in self._arrays] + [name]:
            array = getattr(shard, other)
            while self._arrays and self.cached_bytes + array.nbytes > self.cache_bytes:
                self.cached_bytes -= self._arrays.popitem(last=False)[1].nbytes
            self._arrays[(path, other)] = array
            self.cached_bytes += array.nbytes
            self.peak_cached_bytes = max(self.peak_cached_bytes, self.cached_bytes)
        return self._arrays[key]

    def _open(self, path: Path) -> tuple[int, dict[str, Member]]:
        if path in self._files:
            self._files.move_to_end(path)
            return self._files[path]
        if not path.exists():
            raise SliceWiseError("shard listed in the manifest is missing (rerun the slice step)", path)
        if path not in self._layouts:  # a few hundred bytes per shard: kept for every shard, read once
            self._layouts[path] = shard_members(path)
        entry = (os.open(path, os.O_RDONLY), self._layouts[path])
        self._files[path] = entry
        while len(self._files) > self.max_open:
            os.close(self._files.popitem(last=False)[1][0])
        return entry

    def close(self) -> None:
        for fd, _ in self._files.values():
            os.close(fd)
        self._files.clear()
        self._layouts.clear()
        self._arrays.clear()
        self.cached_bytes = 0

    def __del__(self):
        try:
            self.close()
        except (OSError, AttributeError):
            pass

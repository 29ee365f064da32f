"""Reading and writing gzipped NIfTI files (.nii.gz, how BraTS ships) with ISA-L's gzip where it is installed.

Inflating and deflating are most of the cost of reading a BraTS patient and of writing a synthetic one. ISA-L
(`isal`, a pinned dependency of the pipeline; the API image does without it) produces and accepts standard gzip
streams: the voxels read are the same, and files it writes open in every NIfTI tool. Measured on 2 cores (one
patient's five files): reading in about 60 % of nibabel's time (0.11–0.17 s against 0.18–0.30 s, with the state of
the process's heap). Writing uses the standard library's zlib: ISA-L's deflate is not deterministic in a
long-lived process (the fetch step's pool workers wrote other bytes for the same voxels from one run to the next,
0–2 files of 240 per run, measured 2026-12-02), and a file's bytes are its identity for DVC and for the slice step's
fingerprints: every refetch then changed `data/raw`'s hash and retrained the model on the same voxels.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import nibabel as nib

import gzip

try:
    from isal import igzip as gzip_codec
except ImportError:  # an environment without the wheel reads the same format with the standard library
    gzip_codec = gzip

log = logging.getLogger(__name__)

# A single-file NIfTI's first four bytes, sizeof_hdr, say which version it is (in the file's byte order).
NIFTI_BY_HEADER_SIZE = {348: nib.Nifti1Image, 540: nib.Nifti2Image}
COMPRESS_LEVEL = 1  # what nibabel writes .nii.gz with: the volumes are noisy, higher levels gain little


def read_nifti(path: Path) -> nib.spatialimages.SpatialImage:
    """`nib.load(path)`, except that a single-file .nii.gz is inflated in large reads and parsed from memory.

    Never stricter than nib.load: a file the fast path does not take as it is (a header it does not recognise,
    bytes after the gzip stream, a damaged stream) goes to nib.load, whose verdict and error stand."""
    if path.name.lower().endswith(".nii.gz"):
        try:
            return _read_single_file(path)
        except Exception as exc:  # noqa: BLE001 (nib.load below decides, and reports, what this path did not take)
            log.debug("%s: read by nib.load (%s: %s)", path, type(exc).__name__, exc)
    return nib.load(path)


def _read_single_file(path: Path) -> nib.spatialimages.SpatialImage:
    """Header, extensions and the voxels the header declares, nothing after them: a small file with a long tail
    is not inflated whole (nibabel stops there too)."""
    with gzip_codec.open(path, "rb") as stream:
        head = stream.read(540)
        image_class = next((NIFTI_BY_HEADER_SIZE[size] for size in (int.from_bytes(head[:4], "little"),
                                                                     int.from_bytes(head[:4], "big"))
                            if size in NIFTI_BY_HEADER_SIZE), None)
        if image_class is None:
            raise ValueError(f"{path.name}: not a single-file NIfTI header")
        header = image_class.header_class(head[:image_class.header_class.sizeof_hdr], check=False)
        data_bytes = math.prod(header.get_data_shape()) * header.get_data_dtype().itemsize
        wanted = int(header.get_data_offset()) + data_bytes
        raw = head + stream.read(max(wanted - len(head), 0))
    if len(raw) < wanted:
        raise ValueError(f"{path.name}: {len(raw)} bytes, the header declares {wanted}")
    return image_class.from_bytes(raw)


def write_nifti_gz(image: nib.Nifti1Image, path: Path) -> None:
    """`nib.save(image, path)` for a .nii.gz: the same NIfTI bytes, gzipped with a zero timestamp as nibabel does, so
    the same image always gives the same file (zlib, not ISA-L: see the module docstring)."""
    path.write_bytes(gzip.compress(image.to_bytes(), COMPRESS_LEVEL, mtime=0))

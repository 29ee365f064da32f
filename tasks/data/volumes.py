"""Reading BraTS NIfTI volumes: intensities as float32, label maps as BraTS 2020 labels, damaged files named.

Shared by the slice step and the evaluation of whole volumes, which must read a patient the same way.
"""

from __future__ import annotations

import errno
import gzip
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tasks.data import regions
from tasks.data.gzip_nifti import DamagedStreamError, DeclaredSizeError, read_nifti
from tasks.errors import SliceWiseError


# Two files are on one grid when their affines agree to this (mm for the origin, direction cosines × spacing):
# float32 header rounding passes, a shift, flip or resampling does not. The serving API checks uploads the same way.
GRID_TOLERANCE = 1e-3


# An MRI axis has hundreds of voxels; slice numbers are stored as int16 (tasks/data/shards.py).
MAX_AXIS_VOXELS = 32_767


class Volume(NamedTuple):
    data: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray  # voxel → world (mm): which grid the voxels lie on
    # whether the header states where the voxels lie (a qform or sform code above 0); without, nibabel makes the
    # affine up from the voxel size alone, and it differs from a stated one though the voxels may be the same grid
    oriented: bool = True


# NIfTI's xyzt_units: the unit pixdim is in. "unknown" (0) is read as millimetres, as every tool does.
MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}


def mm_per_unit(header) -> float:
    """How many millimetres one unit of the header's pixdim and affine is (1 for mm, and for a unit code nibabel
    does not know, which it refuses with a KeyError: read as unknown)."""
    try:
        unit = header.get_xyzt_units()[0]
    except KeyError:
        unit = "unknown"
    return MM_PER_UNIT.get(unit, 1.0)


def spacing_mm(header) -> tuple[float, float, float]:
    """The voxel size in millimetres along x, y, z, whatever unit the header states it in."""
    scale = mm_per_unit(header)
    return tuple(float(z) * scale for z in header.get_zooms()[:3])


def affine_mm(header, affine: np.ndarray) -> np.ndarray:
    """`affine` (voxel → world in the header's unit) in millimetres, so that grids compare in mm."""
    scaled = np.array(affine, dtype=np.float64)
    scaled[:3] *= mm_per_unit(header)
    return scaled


# pixdim and the sform state the voxel size twice; float32 rounding and resampling tools agree far closer than this
VOXEL_SIZE_TOLERANCE = 0.01


def voxel_size_conflict(header, affine: np.ndarray) -> str | None:
    """Why the header's two voxel sizes cannot both be true, or None: pixdim (which distances and volumes use) against
    the spacing of the voxel-to-world transform's columns (nibabel builds a qform-only affine from pixdim itself, so
    only an sform can disagree). `affine`: the image's, finite."""
    stated = np.asarray(spacing_mm(header))
    linear = affine_mm(header, affine)[:3, :3]
    implied = np.linalg.norm(linear, axis=0)
    if not (implied > 0).all():
        return None  # a degenerate transform, which the orientation check names as such
    if not np.allclose(implied, stated, rtol=VOXEL_SIZE_TOLERANCE, atol=0):
        return (f"the header's voxel size (pixdim) is {_mm(stated)} mm but its voxel-to-world transform (sform) puts "
                f"voxels {_mm(implied)} mm apart: one was changed without the other, and distances (HD95) and volumes "
                "would be wrong; fix the header (nibabel: set_zooms or set_sform)")
    held, product = abs(float(np.linalg.det(linear))), float(np.prod(implied))
    if abs(held - product) > VOXEL_SIZE_TOLERANCE * product:  # a rotation keeps it; a shear does not
        return (f"the voxel-to-world transform shears the voxels: each holds {held:.4g} mm³, not the {product:.4g} "
                f"of its sides ({_mm(implied)} mm), so volumes would be off by {product / held:.3g}x and its slices "
                "are not planes of the head; resample it to an unsheared grid")
    return None


def _mm(sizes: np.ndarray) -> str:
    return " x ".join(f"{v:.4g}" for v in sizes)


def same_grid(affine: np.ndarray, other: np.ndarray) -> bool:
    return bool(np.allclose(affine, other, atol=GRID_TOLERANCE))


# Errors of the machine rather than of a file (a disk or network file system failing, memory short): a patient that
# meets one is not remembered as damaged; the slice step fails instead, so the next run reads it again.
MACHINE_ERRNOS = {errno.EIO, errno.ENOMEM, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR, errno.ENOSPC}


def load_volume(path: Path, labels: bool = False) -> Volume:
    """Voxel data, spacing and affine; truncated or corrupt files raise SliceWiseError naming the file.

    Intensities come as float32. A label map (`labels=True`) comes in the integer type it is stored in when it has
    no scaling, so `brats2020_labels` needs neither a float copy nor a rounding check (BraTS stores uint8 or int16).
    """
    try:
        image = read_nifti(path)
        stored_integers = np.issubdtype(image.get_data_dtype(), np.integer) and _unscaled(image)
        if labels and stored_integers:
            data = np.asanyarray(image.dataobj)
        else:
            data = np.asarray(image.dataobj, dtype=np.float32)
    except MemoryError:  # this machine's state, not the file's: the step fails, and the next run reads it again
        raise
    except OSError as exc:
        if exc.errno in MACHINE_ERRNOS:  # likewise: the slice step fails, and its next run reads it again
            raise
        raise _unreadable(path, exc) from exc
    except Exception as exc:  # nibabel, gzip, zlib and ISA-L raise many types for damaged files
        raise _unreadable(path, exc) from exc
    if data.ndim == 4 and data.shape[3] == 1:  # a 3D volume stored with a trailing time axis of one
        data = data[..., 0]
    if data.ndim != 3:
        raise SliceWiseError(f"expected a 3D volume, got shape {data.shape}", path)
    # unscaled integers (what BraTS stores) are finite as float32 too: only a float or scaled file needs the check
    if data.dtype.kind == "f" and not stored_integers and not np.isfinite(data).all():
        if labels:
            raise SliceWiseError("the segmentation holds NaN or infinite values", path)
        if np.isinf(data).any():  # it would pass as brain (> 0) and make every z-score NaN
            raise SliceWiseError(f"the volume holds {int(np.isinf(data).sum()):,} infinite values", path)
        data = np.nan_to_num(data, nan=0.0)  # NaN: outside the brain, as 0 is (it never counted as brain)
    affine = affine_mm(image.header, image.affine)
    if not np.isfinite(affine).all():  # NaN never equals itself: every grid comparison would blame another file
        raise SliceWiseError("the header's voxel-to-world transform (its sform or qform) holds NaN or infinite "
                             "values: a damaged header", path)
    spacing = spacing_mm(image.header)
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:  # HD95 in mm would fail (NaN) or lie, steps later
        raise SliceWiseError(f"the header's voxel size (pixdim) is {tuple(round(v, 4) for v in spacing)}: not a "
                             "positive finite size; a damaged header", path)
    if conflict := voxel_size_conflict(image.header, image.affine):
        raise SliceWiseError(conflict, path)
    if max(data.shape) > MAX_AXIS_VOXELS:
        raise SliceWiseError(f"shape {data.shape}: an axis longer than {MAX_AXIS_VOXELS:,} voxels is no MRI volume "
                             "(a damaged or forged header)", path)
    return Volume(data, spacing, affine, oriented=states_orientation(image.header))


def states_orientation(header) -> bool:
    """Whether a NIfTI header has a qform or an sform (its code above 0)."""
    return any(int(header.get(field, 0)) > 0 for field in ("qform_code", "sform_code"))


def _unreadable(path: Path, exc: Exception) -> SliceWiseError:
    """The error a damaged file raises, as the slice step reports it (a property of the file: remembered until it
    changes)."""
    # a dim[0] out of range first: nibabel then reads the header byte-swapped and its words name another field
    if fault := header_rank_fault(_first_bytes(path)):
        return SliceWiseError(fault, path)
    if isinstance(exc, DeclaredSizeError):
        return SliceWiseError(f"{exc}; a damaged or forged header", path)
    if isinstance(exc, DamagedStreamError):
        return SliceWiseError(str(exc), path)
    return SliceWiseError(f"unreadable NIfTI ({type(exc).__name__}: {exc})", path)


def header_rank_fault(head: bytes) -> str | None:
    """What is wrong with a NIfTI header's dim[0] (its number of dimensions) when it lies outside NIfTI's 1-7; else
    None. `head`: the header's first bytes (348 of NIfTI-1, 540 of NIfTI-2).

    nibabel tells a header's byte order by whether dim[0] lies in 0-7, so a dim[0] of 9 makes it read the whole header
    byte-swapped and fail on some other field ("vox offset 0 too low"). sizeof_hdr (348 or 540) tells the order
    without that ambiguity; a sizeof_hdr that is neither in either order is left to nibabel's message."""
    for size, dim_format, dim_at in ((348, "h", 40), (540, "q", 16)):
        for order in "<>":
            if len(head) >= dim_at + 8 and struct.unpack_from(order + "i", head, 0)[0] == size:
                rank = struct.unpack_from(order + dim_format, head, dim_at)[0]
                if 1 <= rank <= 7:
                    return None
                return f"the header's dim[0] (how many dimensions the volume has) is {rank}; NIfTI allows 1 to 7"
    return None


def _first_bytes(path: Path, count: int = 540) -> bytes:
    """A file's first `count` bytes, inflated when it is gzip; nothing when even that cannot be read."""
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gzipped else path.open("rb")) as stream:
            return stream.read(count)
    except (OSError, EOFError, zlib.error):
        return b""


def _unscaled(image) -> bool:
    slope, intercept = getattr(image.dataobj, "slope", 1.0), getattr(image.dataobj, "inter", 0.0)
    return slope == 1 and intercept == 0


def brats2020_labels(seg: np.ndarray, seg_path: Path) -> np.ndarray:
    """A patient's segmentation as uint8 labels in the 2020 convention, whichever BraTS release it comes from."""
    if np.issubdtype(seg.dtype, np.integer):
        codes = seg  # stored as integers (load_volume(..., labels=True)): nothing to check before mapping
    else:
        # label maps are small integers: one cast and one comparison (np.round cost more); a value beyond int16 casts
        # to garbage, which the comparison catches
        with np.errstate(invalid="ignore"):
            codes = seg.astype(np.int16)
        if not np.array_equal(codes, seg):
            if not np.array_equal(seg, np.round(seg)):
                raise SliceWiseError("segmentation holds non-integer values (resampled with interpolation?)", seg_path)
            if (largest := float(np.abs(seg).max())) >= 2**31:  # int64's cast would overflow, and no label is near
                raise SliceWiseError(f"segmentation holds values as large as {largest:g}: not a label map", seg_path)
            codes = seg.astype(np.int64)  # integers beyond int16: reported below as unknown labels
    try:
        labels = regions.to_brats2020_labels(codes)
    except regions.UnknownLabels as exc:
        raise SliceWiseError(f"unknown segmentation labels {exc.found}: neither BraTS 2017-2021 (0, 1, 2, 4) nor "
                             "BraTS 2023+ (0, 1, 2, 3)", seg_path) from exc
    if regions.label_set(labels) == {0, 1}:
        # a binary tumour mask (0/1, as many other data sets store one) fits the BraTS label set, as necrosis alone:
        # it would teach the tumour-core region the whole tumour and the enhancing region nothing. A BraTS glioma
        # always has oedema (label 2) around its core
        raise SliceWiseError("the segmentation holds label 1 only: a binary tumour mask? BraTS labels necrosis 1, "
                             "oedema 2 and enhancing tumour 4 (3 from 2023), and every BraTS tumour has oedema; a "
                             "binary mask cannot train the tumour-core and enhancing regions", seg_path)
    return labels

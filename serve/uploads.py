"""Uploaded files → arrays, with every way an upload can be wrong turned into a 4xx that names the problem.

The type is read from the file's first bytes (PNG, JPEG and NPY have magic numbers), never trusted from the
file name or the client's content type. Everything happens in memory: nothing of an upload touches the disk
here (Starlette spools large multipart parts to temporary files and removes them when the request ends).
"""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
NPY_MAGIC = b"\x93NUMPY"
GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_MAGICS = (b"n+1\x00", b"ni1\x00")  # at byte 344 of a NIfTI-1 header
NIFTI2_MAGIC = b"n+2\x00"  # at byte 4 of a NIfTI-2 header
MIN_SIDE = 8  # below this a slice holds no anatomy worth a prediction
MB = 1024 * 1024
# 16-bit and float images carry raw intensities, like an NPY slice; 8-bit ones are photos like Kaggle's.
RAW_INTENSITY_MODES = {"I", "I;16", "I;16B", "I;16L", "F"}


class UploadError(Exception):
    """A problem with what the client sent: becomes an HTTP error with `detail` as its JSON body."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


@dataclass(frozen=True)
class DecodedSlice:
    kind: str  # "photo" (PNG/JPEG) or "array" (NPY, 16-bit PNG)
    photo: Image.Image | None  # the decoded 8-bit image, for tasks.data.preprocess.prepare_photo
    array: np.ndarray | None  # (C, H, W) float32 intensities, for tasks.data.preprocess.prepare_array_slice
    rgb: np.ndarray | None  # (H, W, 3) uint8 of a photo: colour tells a photograph from an MRI slice

    @property
    def channels(self) -> int:
        return 1 if self.array is None else self.array.shape[0]


def check_size(data: bytes, limit_mb: float, what: str, name: str) -> None:
    if len(data) > limit_mb * MB:
        raise UploadError(413, f"{name}: {what} is {len(data) / MB:.1f} MB; the limit is {limit_mb:g} MB")
    if not data:
        raise UploadError(422, f"{name}: the file is empty")


def sniff_slice_type(data: bytes) -> str:
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(NPY_MAGIC):
        return "npy"
    raise UploadError(415, "unsupported file type: expected a PNG, JPEG or NPY slice (for a NIfTI volume use "
                           "/v1/predict/volume)")


def _check_side(height: int, width: int, max_side: int, name: str) -> None:
    if max(height, width) > max_side:
        raise UploadError(413, f"{name}: {width}x{height} pixels; the limit is {max_side} pixels per side")
    if min(height, width) < MIN_SIDE:
        raise UploadError(422, f"{name}: {width}x{height} pixels is too small for a slice (at least {MIN_SIDE})")


GRAYSCALE_MODES = ("1", "L", "LA")


def decode_image(data: bytes, name: str, max_side: int) -> DecodedSlice:
    """PNG/JPEG → an 8-bit photo (prepare_photo), or raw intensities for 16-bit/float grayscale PNGs."""
    try:
        image = Image.open(io.BytesIO(data))
        _check_side(image.height, image.width, max_side, name)  # before decoding the pixels: no decompression bomb
        image.load()
    except UploadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as exc:
        raise UploadError(422, f"{name}: undecodable image ({exc})") from exc
    if getattr(image, "n_frames", 1) > 1:
        raise UploadError(422, f"{name}: an animated/multi-frame image; send one slice per file")
    if image.mode in RAW_INTENSITY_MODES:
        return DecodedSlice("array", None, _as_array(np.asarray(image), name, max_side), None)
    # A grayscale file cannot be a colour photograph: no colour check (it costs ~2.5 ms per 256² slice).
    rgb = None if image.mode in GRAYSCALE_MODES else np.asarray(image.convert("RGB"))
    return DecodedSlice("photo", image, None, rgb)


def _as_array(array: np.ndarray, name: str, max_side: int) -> np.ndarray:
    """A numeric (H, W) or (C, H, W) array → (C, H, W) float32 with finite values, or a 4xx saying why not."""
    if array.dtype.kind not in "biuf":
        raise UploadError(422, f"{name}: array of dtype {array.dtype}; expected numbers (integer or float)")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise UploadError(422, f"{name}: array of shape {array.shape} has {array.ndim} dimensions; expected a 2D slice "
                               "(H, W) or (C, H, W) with one channel per modality")
    _check_side(array.shape[1], array.shape[2], max_side, name)
    with np.errstate(over="ignore", invalid="ignore"):
        out = array.astype(np.float32)
    if not np.isfinite(out).all():
        raise UploadError(422, f"{name}: the slice holds NaN or infinite values (or values beyond float32)")
    return out


def decode_npy(data: bytes, name: str, max_side: int) -> DecodedSlice:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)  # never unpickle what a client sent
    except (ValueError, OSError, EOFError) as exc:
        raise UploadError(422, f"{name}: undecodable NPY file ({exc})") from exc
    if not isinstance(array, np.ndarray):
        raise UploadError(422, f"{name}: an NPZ archive; send a single .npy array")
    return DecodedSlice("array", None, _as_array(array, name, max_side), None)


def decode_slice(data: bytes, name: str, limit_mb: float, max_side: int) -> DecodedSlice:
    """One uploaded slice (PNG, JPEG or NPY) in memory → DecodedSlice, or UploadError (4xx)."""
    check_size(data, limit_mb, "the slice", name)
    kind = sniff_slice_type(data)
    return decode_npy(data, name, max_side) if kind == "npy" else decode_image(data, name, max_side)


def gunzip_bounded(data: bytes, limit_bytes: int, name: str) -> bytes:
    """Decompress a .gz in memory, refusing to inflate beyond `limit_bytes` (a gzip bomb stays a 413)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit_bytes + 1)
    except zlib.error as exc:
        raise UploadError(422, f"{name}: undecodable gzip data ({exc})") from exc
    if len(out) > limit_bytes:
        raise UploadError(413, f"{name}: the volume is larger than {limit_bytes / MB:g} MB once decompressed")
    if not inflater.eof:
        raise UploadError(422, f"{name}: truncated gzip data")
    return out


def decode_volume(data: bytes, name: str, limit_mb: float):
    """An uploaded .nii or .nii.gz in memory → (volume (X, Y, Z) float32, nibabel image for affine and spacing)."""
    import nibabel as nib

    check_size(data, limit_mb, "the volume", name)
    if data.startswith(GZIP_MAGIC):
        data = gunzip_bounded(data, int(limit_mb * MB), name)
    if not (data[344:348] in NIFTI1_MAGICS or data[4:8] == NIFTI2_MAGIC):
        raise UploadError(415, f"{name}: not a NIfTI volume (.nii or .nii.gz); slices go to /v1/predict")
    image_class = nib.Nifti2Image if data[4:8] == NIFTI2_MAGIC else nib.Nifti1Image
    try:
        image = image_class.from_bytes(data)
        volume = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for a damaged header or short data
        raise UploadError(422, f"{name}: undecodable NIfTI volume ({type(exc).__name__}: {exc})") from exc
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise UploadError(422, f"{name}: volume of shape {volume.shape} has {volume.ndim} dimensions; expected one "
                               "3D (X, Y, Z) FLAIR volume")
    if min(volume.shape[:2]) < MIN_SIDE or volume.shape[2] < 1:
        raise UploadError(422, f"{name}: volume of shape {volume.shape} is too small (at least {MIN_SIDE}x{MIN_SIDE} "
                               "pixels per axial slice)")
    if not np.isfinite(volume).all():
        raise UploadError(422, f"{name}: the volume holds NaN or infinite values")
    spacing = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise UploadError(422, f"{name}: invalid voxel spacing {spacing.tolist()} in the header (pixdim); the tumour "
                               "volume needs positive sizes in millimetres")
    return volume, image


def nifti_bytes(data: np.ndarray, like) -> bytes:
    """`data` as a gzipped NIfTI with the affine and spacing of the uploaded image `like`."""
    header = like.header.copy()
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(1.0, 0.0)  # the input's intensity scaling must not rescale the mask
    out = type(like)(data, like.affine, header)
    out.set_qform(like.affine, code=int(like.header["qform_code"]) or 1)
    out.set_sform(like.affine, code=int(like.header["sform_code"]) or 1)
    return gzip.compress(out.to_bytes(), compresslevel=6)

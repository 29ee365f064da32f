"""Uploaded files → arrays, with every way an upload can be wrong turned into a 4xx that names the problem.

The type is read from the file's first bytes (PNG, JPEG and NPY have magic numbers), never trusted from the
file name or the client's content type. Everything happens in memory: nothing of an upload touches the disk
here (serve/multipart.py spools large parts to temporary files and removes them when the request ends).
NIfTI volumes are serve/volumes.py's.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks.data.preprocess import MIN_SIDE, RAW_INTENSITY_MODES, upright

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
NPY_MAGIC = b"\x93NUMPY"
GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_MAGICS = (b"n+1\x00", b"ni1\x00")  # at byte 344 of a NIfTI-1 header
NIFTI2_MAGIC = b"n+2\x00"  # at byte 4 of a NIfTI-2 header
MB = 1024 * 1024


class UploadError(Exception):
    """A problem with what the client sent: becomes an HTTP error with `detail` as its JSON body."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


# What one file of a batch can get wrong without spoiling the others: unreadable (422), unsupported (415) or too
# large an image (413). The body's own limits, a busy server (503) and timeouts still end the whole request.
FILE_FAULTS = (413, 415, 422)


@dataclass(frozen=True)
class FileFault:
    """One batch file that could not be read: it answers in its place in the list, the other files are predicted."""
    name: str
    status_code: int
    detail: str

    def answer(self) -> dict:
        return {"filename": self.name, "error": self.detail, "status": self.status_code}


def batch_refusal(faults: list[FileFault]) -> UploadError:
    """No file of a batch could be read: one error for the request, naming each file (each detail starts with its
    file's name), with their common status or else 422."""
    statuses = {fault.status_code for fault in faults}
    if len(faults) == 1:
        return UploadError(faults[0].status_code, faults[0].detail)
    return UploadError(statuses.pop() if len(statuses) == 1 else 422, f"none of the {len(faults)} files could be "
                       "read: " + "; ".join(fault.detail for fault in faults))


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


def sniff_slice_type(data: bytes, name: str) -> str:
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(NPY_MAGIC):
        return "npy"
    raise UploadError(415, f"{name}: unsupported file type: expected a PNG, JPEG or NPY slice (for a NIfTI volume "
                           "use /v1/predict/volume)")


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
    except Image.DecompressionBombError as exc:  # Pillow's own limit, met in open() before the side check: same answer
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
        raise UploadError(413, f"{name}: {size}; the limit is {max_side} pixels per side") from exc
    except UnidentifiedImageError as exc:  # its message names the in-memory buffer, which means nothing to a client
        what = "PNG" if data.startswith(PNG_MAGIC) else "JPEG" if data.startswith(JPEG_MAGIC) else None
        why = (f"it starts as a {what}, but its header is damaged (a checksum or a field Pillow cannot read)" if what
               else "Pillow recognises no PNG or JPEG in its bytes")
        raise UploadError(422, f"{name}: undecodable image ({why})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UploadError(422, f"{name}: undecodable image ({exc})") from exc
    # A camera's MPO JPEG holds the picture and a preview or second view: the first frame is the picture.
    if getattr(image, "n_frames", 1) > 1 and image.format != "MPO":
        raise UploadError(422, f"{name}: an animated/multi-frame image; send one slice per file")
    if image.mode in RAW_INTENSITY_MODES:  # upright, as a photo is (photo_gray): a viewer shows it so
        return DecodedSlice("array", None, _as_array(np.asarray(upright(image)), name, max_side), None)
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


def _check_npy_header(data: bytes, name: str, max_side: int) -> None:
    """Judge an NPY file by its header before numpy allocates what the header declares: np.load reserves the whole
    array first (a 100-byte file claiming (10**10, 8) float64 asks for 596 GiB), so the shape, the type and the
    bytes the shape implies are checked against the upload here."""
    from numpy.lib import format as npy

    stream = io.BytesIO(data)
    try:
        version = npy.read_magic(stream)
        if version not in ((1, 0), (2, 0)):  # 3.0 exists only for structured types with unicode field names
            raise ValueError(f"NPY format version {version[0]}.{version[1]}")
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = read_header(stream)
    except Exception as exc:  # numpy raises ValueError, and tokenize or syntax errors for a damaged header dict
        # ast.literal_eval's "malformed node or string: <ast.Call object at 0x...>" says nothing to a client
        reason = "its header holds an expression where numpy expects plain values" if "malformed node" in str(exc) \
            else f"{type(exc).__name__}: {exc}"
        raise UploadError(422, f"{name}: undecodable NPY file ({reason})") from exc
    if dtype.kind not in "biuf":
        raise UploadError(422, f"{name}: array of dtype {dtype}; expected numbers (integer or float)")
    if len(shape) not in (2, 3):
        raise UploadError(422, f"{name}: array of shape {shape} has {len(shape)} dimensions; expected a 2D slice "
                               "(H, W) or (C, H, W) with one channel per modality")
    if len(shape) == 3 and shape[-1] <= 4 and min(shape[:2]) >= MIN_SIDE:  # (H, W, C), as image libraries order it
        raise UploadError(422, f"{name}: array of shape {shape} looks channels-last (H, W, C); send (C, H, W), one "
                               "channel per modality first")
    _check_side(shape[-2], shape[-1], max_side, name)
    declared, held = math.prod(shape) * dtype.itemsize, len(data) - stream.tell()
    if declared > held:
        raise UploadError(422, f"{name}: undecodable NPY file, truncated or forged: its header declares {shape} "
                               f"{dtype} ({declared:,} bytes), the file holds {held:,}")


def decode_npy(data: bytes, name: str, max_side: int) -> DecodedSlice:
    _check_npy_header(data, name, max_side)
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
    kind = sniff_slice_type(data, name)
    return decode_npy(data, name, max_side) if kind == "npy" else decode_image(data, name, max_side)


# Bytes held per pixel while a photo (PNG/JPEG, up to 4 bands) is decoded and prepared: the decoded image, its RGB
# copy for the colour check, the grayscale as float32; and per pixel of the square it is padded to. An array slice
# (NPY, C channels) holds a float32 copy and the padded square per channel. Measured: a 4096² RGBA PNG peaked at
# 368 MB (22 bytes per pixel; peak RSS of a fresh process), against 448 MB estimated.
BYTES_PER_PHOTO_PIXEL = 20
BYTES_PER_ARRAY_PIXEL = 8
BYTES_PER_SQUARE_PIXEL = 8
HEAD_BYTES = 64 * 1024  # where PNG, JPEG and NPY headers say how large the image is


def jpeg_dimensions(fileobj: BinaryIO) -> tuple[int, int] | None:
    """(width, height) of a JPEG whose frame header lies beyond HEAD_BYTES (metadata: EXIF, an ICC profile, a
    thumbnail), read by Pillow from the whole file: it walks the segments to the frame header without decoding a
    pixel. None when it cannot tell."""
    fileobj.seek(0)
    try:
        with Image.open(fileobj) as image:
            return image.size if image.format in ("JPEG", "MPO") else None
    except Exception:  # noqa: BLE001 - damaged or cut short: not judged here (decode_slice answers that)
        return None


def slice_memory_bytes(head: bytes, size: int, name: str, max_side: int,
                       fileobj: BinaryIO | None = None) -> int:
    """What decoding and preparing a slice of `size` bytes will hold in memory, judged from its first bytes
    (`head`, HEAD_BYTES of them), or for a JPEG whose frame header lies beyond them from its segments in `fileobj`;
    the largest slice allowed when they do not tell."""
    if not head:
        return 0  # empty: decode_slice says so
    kind = sniff_slice_type(head, name)
    try:
        if kind == "npy":
            stream = io.BytesIO(head)
            version = np.lib.format.read_magic(stream)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(stream)
            shape = tuple(int(s) for s in shape)
            if math.prod(shape) * dtype.itemsize > size:  # more than the file holds: decode_slice refuses it unread
                return size
            channels, height, width = (1, *shape) if len(shape) == 2 else shape if len(shape) == 3 else (1, 1, 1)
        else:
            with Image.open(io.BytesIO(head)) as image:
                channels, (width, height) = 0, image.size
    except Exception:  # noqa: BLE001 - the header is not within `head`, or damaged (decode_slice answers that)
        if size <= len(head):
            return size
        found = jpeg_dimensions(fileobj) if fileobj is not None and head.startswith(b"\xff\xd8") else None
        channels, (width, height) = 0, found or (max_side, max_side)
    height, width = min(height, max_side), min(width, max_side)  # larger ones are refused before decoding
    side = max(height, width)
    if channels == 0:  # a photo
        return size + BYTES_PER_PHOTO_PIXEL * height * width + BYTES_PER_SQUARE_PIXEL * side * side
    return size + max(channels, 1) * (BYTES_PER_ARRAY_PIXEL * height * width + BYTES_PER_SQUARE_PIXEL * side * side)

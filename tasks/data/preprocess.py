"""Turning raw intensities into model inputs: the one implementation, used by slicing, evaluation and serving.

Numpy + Pillow only (no torch), so the slim serving image can import it.
"""

from __future__ import annotations

import numpy as np
from PIL import ExifTags, Image

# Foreground of a 2D photo-like image (Kaggle JPEG/PNG): pixels above this fraction of the image maximum.
FOREGROUND_FRACTION = 0.05
MIN_SIDE = 8  # below this an image holds no anatomy worth learning from or predicting on
# 16-bit and float images carry raw intensities, like an NPY slice; 8-bit ones are photos like Kaggle's.
RAW_INTENSITY_MODES = {"I", "I;16", "I;16B", "I;16L", "F"}


def axial_slice(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice `z` of an (X, Y, Z) volume in display orientation (LAS), rotated by 90°: anterior up, the patient's
    right on the image's left, as a radiology viewer and a photo of a scan show it. A volume stored otherwise is
    turned first (tasks/data/orientation.py: `Orientation.of(affine).display(volume)`)."""
    return np.rot90(volume[:, :, z])


def axial_planes(volume: np.ndarray) -> np.ndarray:
    """Every axial slice of an (X, Y, Z) volume as a (Z, H, W) view, plane z being `axial_slice(volume, z)`. Of a
    Fortran-ordered volume (nibabel's) in display orientation each plane lies in one run of memory, so the planes are
    read, masked or gathered in one sweep."""
    return np.moveaxis(np.rot90(volume), -1, 0)


def zscore(image: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Z-score over the foreground (brain) voxels; background set to 0. Works for 2D slices and 3D volumes."""
    return apply_zscore(image, foreground, foreground_stats(image, foreground))


def foreground_stats(image: np.ndarray, foreground: np.ndarray) -> tuple[float, float] | None:
    """Mean and standard deviation (1 when ~0 beside the mean) of the foreground voxels; None with fewer than two.

    Summed in float64, so the figures do not depend on the order the voxels are read in (float32 sums of a
    volume's two million brain voxels did, in their last bits): the voxels are gathered in `image`'s memory order,
    which reads a Fortran-ordered NIfTI volume in one sweep (7 ms per 240×240×155 modality, against 24 ms for
    gathering them in C order).
    """
    flipped = tuple(axis for axis, stride in enumerate(image.strides) if stride < 0)
    axes = np.argsort([-abs(stride) for stride in image.strides], kind="stable")
    image, foreground = (np.flip(array, flipped).transpose(axes) for array in (image, foreground))
    values = image[foreground]
    if values.size < 2:
        return None
    mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
    # flat only relative to its own level: an absolute floor flattened a whole volume stored in tiny units (1e-8 x)
    return mean, (std if std > 1e-6 * abs(mean) and std > 0 else 1.0)


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box (one slice per axis) holding every True of a boolean `mask` (empty slices when it holds none)."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, 0))
    return tuple(box)


def apply_zscore(image: np.ndarray, foreground: np.ndarray, stats: tuple[float, float] | None,
                 out: np.ndarray | None = None) -> np.ndarray:
    """`image` z-scored with a volume's `foreground_stats`, background 0. Applied slice by slice it gives exactly
    the slices of the z-scored volume, without computing the slices that are then dropped. `out` (float32, may be
    `image` itself) takes the result instead of a new array."""
    image = image.astype(np.float32, copy=False)
    out = np.empty_like(image) if out is None else out
    if stats is None:
        out.fill(0.0)
        return out
    np.subtract(image, stats[0], out=out)
    out /= stats[1]
    out[~foreground] = 0.0
    return out


def zscore_volume(volume: np.ndarray) -> np.ndarray:
    """Z-score a skull-stripped MRI volume over its brain (non-zero) voxels."""
    return zscore(volume, volume > 0)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a float 2D image to size x size."""
    image = image.astype(np.float32, copy=False)
    if image.shape == (size, size):
        return image
    return np.asarray(Image.fromarray(image, mode="F").resize((size, size), Image.BILINEAR))


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 2D label map (0/1/2/4) to size x size: no label is ever blended."""
    labels = np.asarray(labels, dtype=np.uint8)
    if labels.shape == (size, size):
        return labels
    return np.asarray(Image.fromarray(labels).resize((size, size), Image.NEAREST))


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Centre a 2D image on a square zero canvas so resizing keeps its aspect ratio."""
    h, w = image.shape
    side = max(h, w)
    out = np.zeros((side, side), dtype=image.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = image
    return out


# EXIF Orientation → the transpose that shows the picture upright (as Pillow's ImageOps.exif_transpose maps them)
ORIENTATION_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                         4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                         6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def upright(image: Image.Image) -> Image.Image:
    """`image` turned as its EXIF Orientation says. Not ImageOps.exif_transpose: it also writes the EXIF block back
    without the tag, and a block with one odd tag type (phones and editors write them) makes that raise struct.error,
    TypeError or AttributeError, a crash for a picture that decodes fine. An EXIF block Pillow cannot read at all
    counts as no orientation."""
    image.load()
    try:
        method = ORIENTATION_TRANSPOSE.get(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # noqa: BLE001 - any damage to the metadata block: the pixels stand as stored
        method = None
    return image.transpose(method) if method is not None else image


def photo_gray(image: Image.Image) -> np.ndarray:
    """A photo's grey levels as a viewer shows it: its EXIF orientation applied (a phone stores a portrait shot
    sideways and says so there) and any transparency laid on black (what lies under alpha 0, often white, is no
    picture, and a scan's background is black)."""
    image = upright(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return np.asarray(image.convert("L"), dtype=np.float32)


def prepare_photo(image: Image.Image, size: int) -> np.ndarray:
    """A 2D JPEG/PNG (any mode, any size) → (1, size, size) float32, z-scored over its foreground, as
    `photo_gray` sees it."""
    gray = photo_gray(image)
    square = pad_to_square(gray)
    resized = resize_image(square, size)
    foreground = resized > FOREGROUND_FRACTION * max(float(resized.max()), 1e-6)
    return zscore(resized, foreground)[None]


def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """A 2D image file's picture → (1, size, size): a 16-bit or float one as raw intensities (prepare_array_slice,
    as serving reads such a PNG: 8 bits would flatten it), any other as a photo (prepare_photo); either upright, as
    its EXIF orientation says."""
    if image.mode in RAW_INTENSITY_MODES:
        return prepare_array_slice(np.asarray(upright(image), dtype=np.float32), size)
    return prepare_photo(image, size)


def prepare_array_slice(array: np.ndarray, size: int) -> np.ndarray:
    """A raw 2D (H, W) or (C, H, W) intensity slice (e.g. from .npy) → (C, size, size), z-scored per channel."""
    if array.ndim == 2:
        array = array[None]
    channels = []
    for ch in array.astype(np.float32):
        resized = resize_image(pad_to_square(ch), size)
        channels.append(zscore(resized, resized != 0))
    return np.stack(channels)


def prepare_volume_slices(volumes: list[np.ndarray], size: int) -> np.ndarray:
    """Co-registered (X, Y, Z) modality volumes in display orientation → (Z, C, size, size) float32, z-scored per
    volume.

    The same normalisation the slice step applies, so a volume uploaded to the API matches training data.
    """
    normalised = [zscore_volume(v) for v in volumes]
    depth = volumes[0].shape[2]
    out = np.empty((depth, len(volumes), size, size), dtype=np.float32)
    for z in range(depth):
        for c, vol in enumerate(normalised):
            out[z, c] = resize_image(axial_slice(vol, z), size)
    return out

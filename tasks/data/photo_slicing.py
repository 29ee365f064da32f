"""Kaggle yes/no photos → one shard per class (`slice_kaggle`, called by the slice step, tasks/data/slicing.py).

A photo of unknown sequence fills channel 0 (FLAIR's), the other channels are all zero, as a missing modality; its
label is its folder's. A photo that cannot be read, is not JPEG or PNG, is too small or too large, or is blank is
listed in rejected.csv.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.data import preprocess
from tasks.data.brats_files import IMAGE_SUFFIXES, name_problem, shown
from tasks.data.shards import Shard, manifest_rows, write_shard

# A photo is padded to a square of its longer side before resizing: 8 x 1,000,000 pixels asked for 3.6 TiB. Serving
# refuses sides over serve.max_image_side (4096 by default) alike.
MAX_PHOTO_SIDE = 4096
PHOTO_FORMATS = {"JPEG", "MPO", "PNG"}  # as Pillow names what it decoded (MPO: a camera's multi-picture JPEG)


def _photo_problem(image: Image.Image) -> str | None:
    """Why a photo is not taken, or None: only JPEG and PNG content (what the data set holds and /v1/predict takes;
    a TIFF named .jpg can carry NaN floats), a side within bounds, and not one flat colour (a blank image would be
    labelled "tumour" or "no tumour" with nothing to show; an all-zero modality is rejected in slicing alike)."""
    if image.format not in PHOTO_FORMATS:
        return f"a {image.format or 'unknown'} image; only JPEG and PNG are taken, whatever the file's name"
    if min(image.size) < preprocess.MIN_SIDE or max(image.size) > MAX_PHOTO_SIDE:
        return (f"image of {image.width}x{image.height} pixels (at least {preprocess.MIN_SIDE} and at most "
                f"{MAX_PHOTO_SIDE} a side)")
    extrema = image.getextrema()  # (lo, hi), or one pair per band
    if all(lo == hi for lo, hi in (extrema if isinstance(extrema[0], tuple) else [extrema])):
        return "blank image (every pixel has one value)"
    return None


def slice_kaggle(kaggle_dir: Path, out_dir: Path, size: int, channels: int = 1) -> tuple[list[dict], list[dict]]:
    """Kaggle yes/no images → one shard per class; returns (manifest rows, rejected rows).

    An image of unknown sequence fills channel 0 (FLAIR's, see config.MODALITIES' order), the other `channels - 1`
    are all zero: a missing modality, as the model learns it through modality dropout."""
    rows, rejected = [], []
    for label_name, label in (("yes", 1), ("no", 0)):
        files = sorted(p for p in (kaggle_dir / label_name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        # An image is its own patient, named by its stem; two files of one stem (Y1.jpg, Y1.png) keep their
        # suffixes, or they would share one id and the near-duplicate check would see only one of them.
        stems = Counter(p.stem for p in files)
        images, patients = [], []
        for path in files:
            if problem := name_problem(path.name):
                rejected.append({"file": shown(path), "reason": problem})
                continue
            try:
                with Image.open(path) as image:
                    if problem := _photo_problem(image):
                        rejected.append({"file": str(path), "reason": problem})
                        continue
                    prepared = preprocess.prepare_image(image, size)
                    # blank as it is sliced: the stored bands above can differ while the picture is one colour (a
                    # fully transparent PNG laid on black, a palette whose entries are all one colour)
                    if not np.ptp(prepared):
                        rejected.append({"file": str(path), "reason": "blank image (one value everywhere once its "
                                                                      "transparency and palette are applied)"})
                        continue
                    images.append(prepared)
                patients.append(f"kaggle_{label_name}_{path.stem if stems[path.stem] == 1 else path.name}")
            except MemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types (SyntaxError for a PNG)
                rejected.append({"file": str(path), "reason": f"unreadable image ({type(exc).__name__}: {exc})"})
        if not images:
            continue
        n = len(images)
        stacked = np.zeros((len(images), channels, size, size), dtype=np.float16)
        stacked[:, :1] = np.stack(images)
        shard = Shard(
            images=stacked,
            masks=np.zeros((n, size, size), dtype=np.uint8),
            has_mask=np.zeros(n, dtype=bool),
            labels=np.full(n, label, dtype=np.uint8),
            slice_index=np.full(n, -1, dtype=np.int16),
            spacing=np.full(3, np.nan, dtype=np.float32),  # photos have no known pixel size
        )
        shard_name = f"kaggle/{label_name}.npz"
        write_shard(out_dir / shard_name, shard)
        for row in manifest_rows("", "kaggle", shard_name, shard):
            row["patient"] = patients[row["row"]]
            rows.append(row)
    return rows, rejected

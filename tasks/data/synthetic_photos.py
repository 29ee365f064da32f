"""The synthetic Kaggle-like photos ("brain-mri-images-for-brain-tumor-detection"): an axial slice of a synthetic
patient (tasks/data/synthetic.py) with scalp and skull around the brain, windowed to 8 bit, cropped, resized and
saved as the real set's files are: mixed sequences, sizes, colour modes, formats and names. Image k of a class draws
from its own generator, so the files do not depend on the number of workers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress
from scipy import ndimage

from tasks.data.orientation import BRATS_AFFINE, Orientation
from tasks.data.preprocess import axial_slice
from tasks.data.process_pool import process_pool
from tasks.data.synthetic import Contrast, render, sample_patient
from tasks.data.synthetic_shapes import BRATS_SHAPE, SmoothField, Template, load_template
from tasks.io import staged_folder

log = logging.getLogger(__name__)

KAGGLE_TAG = 7_919  # separates the Kaggle images' random streams from the patients'
# Kaggle "brain-mri-images-for-brain-tumor-detection": axial slices with skull, mixed sequences, sizes, modes, names.
KAGGLE_MODALITY_ODDS = {"flair": 0.25, "t1ce": 0.35, "t2": 0.4}
YES_NAMES = ("Y{}.jpg", "Y{}.jpg", "Y{}.JPG", "Y{}.jpeg")
NO_NAMES = ("No{}.jpg", "no {}.jpg", "{} no.jpg", "N{}.JPG", "No{}.jpeg")


def generate_kaggle(out_dir: Path, n_per_class: int, seed: int, workers: int = 1) -> dict[str, int]:
    """Writes out_dir/yes/* and out_dir/no/* 2D images (JPEG and PNG); returns counts per class.

    'yes' images cut through a tumour, 'no' images come from tumour-free synthetic brains. Image k of a class draws
    from its own generator, so the files do not depend on `workers`.
    """
    out_dir = Path(out_dir)
    load_template()  # once here: forked workers inherit it
    counts = {}
    with Progress(transient=True) as progress, process_pool(workers) as pool:
        task = progress.add_task("synthetic Kaggle images", total=2 * n_per_class)
        for label, folder in ((1, "yes"), (0, "no")):
            with staged_folder(out_dir / folder) as tmp:
                for _ in pool.map(_write_kaggle_image, [(tmp, seed, label, k) for k in range(n_per_class)]):
                    progress.advance(task)
            counts[folder] = n_per_class
    log.info("wrote synthetic Kaggle images to %s: %s", out_dir, counts)
    return counts


def _write_kaggle_image(job: tuple[Path, int, int, int]) -> None:
    folder, seed, label, k = job
    rng = np.random.default_rng([seed, KAGGLE_TAG, label, k])
    head, _ = kaggle_slice(rng, load_template(), with_tumour=bool(label))
    _save_photo(rng, _frame(rng, head), folder, (YES_NAMES if label else NO_NAMES), k + 1)


def kaggle_slice(rng: np.random.Generator, template: Template, with_tumour: bool) -> tuple[np.ndarray, int]:
    """One axial slice with scalp and skull, in display orientation, and how many of its pixels are tumour."""
    patient = sample_patient(rng, template, with_tumour, small_fraction=0.0)
    modality = str(rng.choice(list(KAGGLE_MODALITY_ODDS), p=list(KAGGLE_MODALITY_ODDS.values())))
    if patient.tumour is not None:
        z = patient.tumour.centre[2] + rng.uniform(-0.3, 0.3) * patient.tumour.core_mm
    else:
        z = patient.pose.out_centre[2] + rng.uniform(-20, 40)
    grid = (np.arange(BRATS_SHAPE[0], dtype=np.float32), np.arange(BRATS_SHAPE[1], dtype=np.float32),
            np.array([np.clip(round(z), 0, BRATS_SHAPE[2] - 1)], dtype=np.float32))
    values, seg, brain = render(patient, template, grid, (modality,))
    image = np.zeros(brain.shape, np.float32)
    image[brain] = values[modality]
    shown = Orientation.of(BRATS_AFFINE)  # anterior up, as a photo of a scan shows it (and as slicing shows volumes)
    head = _add_head(rng, axial_slice(shown.display(image), 0), axial_slice(shown.display(brain), 0),
                     patient.contrasts[modality])
    return head, int((seg > 0).sum())


def _add_head(rng: np.random.Generator, image: np.ndarray, brain: np.ndarray, c: Contrast) -> np.ndarray:
    """Surround the skull-stripped brain with CSF, dark cortical bone, bright marrow/scalp fat and skin."""
    hull = ndimage.binary_fill_holes(ndimage.gaussian_filter(brain.astype(np.float32), 3) > 0.2)
    outside = ndimage.distance_transform_edt(~hull).astype(np.float32)
    wobble = SmoothField(rng, (0, 0, 0), (*image.shape, 1), (6, 6, 2))(*(np.arange(n) for n in image.shape), [0])[0, ..., 0]
    outside *= 1 + 0.15 * wobble  # skull thickness varies around the head
    bone, fat = rng.uniform(2, 5), rng.uniform(3, 8)
    layers = [(0.0, c.tissue[0]), (bone, 0.05), (bone + fat, rng.uniform(0.8, 1.1)), (bone + fat + 2, 0.35)]
    head = np.zeros_like(image)
    for limit, level in reversed(layers):
        head[(outside <= limit) & ~brain] = level * c.scale
    head[brain] = image[brain]
    noise = np.abs(rng.normal(0, c.noise * c.scale, image.shape)).astype(np.float32)
    return head + noise


def _frame(rng: np.random.Generator, head: np.ndarray) -> Image.Image:
    """Window to 8 bit, crop with random margins and resize to a random size (150-700 px, not always square)."""
    reference = np.percentile(head[head > 0.1 * head.max()], 99.5)
    gray = (np.clip(head / reference, 0, 1) ** rng.uniform(0.8, 1.25) * rng.uniform(215, 255)).astype(np.uint8)
    rows, cols = np.nonzero(gray > 20)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    size = max(bottom - top, right - left)
    margins = (rng.uniform(0.0, 0.25, 4) * size).astype(int)
    padded = np.pad(gray, size)  # room for margins beyond the 240x240 canvas
    crop = padded[top + size - margins[0] : bottom + size + margins[1], left + size - margins[2] : right + size + margins[3]]
    width = int(np.exp(rng.uniform(np.log(150), np.log(700))))
    height = int(width * rng.uniform(0.85, 1.2))
    return Image.fromarray(crop).resize((width, height), Image.BICUBIC)


def _save_photo(rng: np.random.Generator, image: Image.Image, folder: Path, names: tuple[str, ...], number: int) -> None:
    """Save in a random colour mode and format, named like the real data set's files."""
    kind = rng.random()
    if kind < 0.4:
        photo, fmt = image, "JPEG"
    elif kind < 0.7:
        photo, fmt = image.convert("RGB"), "JPEG"
    elif kind < 0.8:  # some scans in the real set carry a coloured tint
        tint = rng.uniform(0.8, 1.0, 3)
        photo, fmt = Image.fromarray((np.asarray(image.convert("RGB")) * tint).astype(np.uint8)), "JPEG"
    elif kind < 0.9:
        photo, fmt = image.convert("RGBA"), "PNG"
    else:
        photo, fmt = image.convert("RGB"), "PNG"
    if fmt == "PNG":
        name = names[0].format(number).rsplit(".", 1)[0] + ".png"
        photo.save(folder / name)
    else:
        photo.save(folder / names[rng.integers(len(names))].format(number), quality=int(rng.integers(70, 96)))

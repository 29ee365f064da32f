"""Tiny real BraTS-layout NIfTI patients and Kaggle images for the data-step tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

SHAPE = (40, 40, 12)


def write_patient(root: Path, name: str, rng: np.random.Generator, *, ext: str = ".nii.gz",
                  parts=("flair", "t1", "t1ce", "t2", "seg"), seg_name: str | None = None, shape=SHAPE) -> Path:
    """A patient folder with a round 'brain' and a small tumour blob (labels 1/2/4) in some slices."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    cx, cy = shape[0] / 2, shape[1] / 2
    brain = ((x - cx) ** 2 + (y - cy) ** 2) < (0.4 * shape[0]) ** 2
    brain[:, :, :2] = False  # the first slices hold no brain: they must be dropped
    tx, ty, tz = cx + rng.integers(-5, 5), cy + rng.integers(-5, 5), shape[2] // 2
    r2 = (x - tx) ** 2 + (y - ty) ** 2 + 4 * (z - tz) ** 2
    seg = np.zeros(shape, dtype=np.uint8)
    seg[(r2 < 36) & brain] = 2
    seg[(r2 < 16) & brain] = 4
    seg[(r2 < 4) & brain] = 1
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    for part in parts:
        if part == "seg":
            data = seg
        else:
            data = np.where(brain, 100 + 20 * rng.standard_normal(shape) + 80 * (seg > 0), 0).astype(np.int16)
        filename = seg_name if (part == "seg" and seg_name) else f"{name}_{part}{ext}"
        nib.save(nib.Nifti1Image(data, affine), folder / filename)
    return folder


def write_kaggle(root: Path, rng: np.random.Generator, n_per_class: int = 3) -> Path:
    for label in ("yes", "no"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            size = (60 + 10 * i, 50 + 7 * i)
            pixels = rng.integers(0, 255, size=size[::-1], dtype=np.uint8)
            image = Image.fromarray(pixels).convert("RGB" if i % 2 else "L")
            image.save(root / label / (f"Y{i}.jpg" if label == "yes" else f"{i} no.PNG"))
    return root

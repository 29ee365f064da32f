"""Import a downloaded BraTS 2020 training folder and a Kaggle yes/no folder into the canonical raw layout.

Real downloads are messy: nested folders, `.nii` next to `.nii.gz`, upper-case extensions, CSV files lying
around, and patient 355 whose segmentation is called `W39_1998.09.19_Segm.nii`. Everything is found
recursively and linked (or copied across file systems) into
    data/raw/brats/<patient>/<patient>_<modality>.nii[.gz]   and   data/raw/kaggle/{yes,no}/<image>
Nothing is judged here: a patient with a missing modality is still imported, and the slice step rejects it
with a reason in rejected.csv, so the user sees every problem in one place.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np

from tasks.errors import SliceWiseError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
# Longest names first so that `_t1ce` is never taken for `_t1`.
_PART_PATTERNS = [(part, re.compile(rf"_{part}\.nii(\.gz)?$", re.IGNORECASE)) for part in ("t1ce", "flair", "t1", "t2", "seg")]
_ODD_SEG = re.compile(r"seg", re.IGNORECASE)  # e.g. BraTS20_Training_355's `W39_1998.09.19_Segm.nii`


def nifti_extension(path: Path) -> str:
    match = _NIFTI.search(path.name)
    return match.group(0).lower() if match else ""


def find_part(patient_dir: Path, part: str) -> Path:
    """The NIfTI file of one modality (or `seg`) in a BraTS patient folder (`<patient>_flair.nii.gz`, ...)."""
    for path in sorted(patient_dir.iterdir()):
        ext = nifti_extension(path)
        if ext and path.name[: -len(ext)].lower().endswith(f"_{part}"):
            return path
    what = "segmentation" if part == "seg" else f"modality {part}"
    raise SliceWiseError(f"missing {what}", patient_dir)


def classify_brats_file(path: Path) -> str | None:
    """Which BraTS part (flair, t1, t1ce, t2, seg) a NIfTI file is, or None for anything else."""
    if not nifti_extension(path):
        return None
    for part, pattern in _PART_PATTERNS:
        if pattern.search(path.name):
            return part
    return "seg" if _ODD_SEG.search(path.name) else None


def find_brats_patients(root: Path) -> dict[str, dict[str, Path]]:
    """Patient folder name → {part: file}, for every folder under `root` holding at least one BraTS NIfTI."""
    patients: dict[str, dict[str, Path]] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or (part := classify_brats_file(path)) is None:
            continue
        parts = patients.setdefault(path.parent.name, {})
        # Prefer a regular `_seg` file over an odd name, and never let a second copy overwrite the first.
        if part not in parts or (part == "seg" and _PART_PATTERNS[-1][1].search(path.name)):
            parts[part] = path
    return patients


def find_kaggle_images(root: Path) -> dict[str, list[Path]]:
    """{'yes': [...], 'no': [...]} from the first folders named yes/no (any case) under `root`."""
    found: dict[str, list[Path]] = {"yes": [], "no": []}
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        label = folder.name.lower()
        if label in found and not found[label]:
            found[label] = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return found


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link when possible (no extra disk for multi-GB data sets), copy otherwise."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def choose_fraction(names: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded subset of `names` (at least one), so smaller profiles use fewer patients reproducibly."""
    if fraction >= 1.0:
        return names
    count = max(1, round(len(names) * fraction))
    picked = np.random.default_rng(seed).choice(len(names), size=count, replace=False)
    return [names[i] for i in sorted(picked)]


def import_brats(source: Path, out_dir: Path, fraction: float = 1.0, seed: int = 0) -> int:
    if not source.is_dir():
        raise SliceWiseError("data.brats_dir is not a folder", source)
    patients = find_brats_patients(source)
    if not patients:
        raise SliceWiseError("no BraTS NIfTI files (*_flair.nii[.gz], ...) found under this folder", source)
    chosen = choose_fraction(sorted(patients), fraction, seed)
    for patient in chosen:
        for part, src in patients[patient].items():
            link_or_copy(src, out_dir / patient / f"{patient}_{part}{nifti_extension(src)}")
    log.info("imported %d of %d BraTS patients from %s", len(chosen), len(patients), source)
    return len(chosen)


def import_kaggle(source: Path, out_dir: Path, fraction: float = 1.0, seed: int = 0) -> dict[str, int]:
    if not source.is_dir():
        raise SliceWiseError("data.kaggle_dir is not a folder", source)
    images = find_kaggle_images(source)
    if not any(images.values()):
        raise SliceWiseError("no yes/ or no/ folder with JPEG/PNG images found under this folder", source)
    counts = {}
    for label, files in images.items():
        by_name = {f.name: f for f in files}
        chosen = choose_fraction(sorted(by_name), fraction, seed)
        for name in chosen:
            link_or_copy(by_name[name], out_dir / label / name)
        counts[label] = len(chosen)
    log.info("imported Kaggle images %s from %s", counts, source)
    return counts

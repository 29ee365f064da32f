"""The embedded synthetic data set, the pipeline's default source: BraTS-2020-like patients.

Each patient is the MNI152 brain (shipped offline by nilearn) warped, resized and tilted, with a nested, irregular
glioma (necrotic core inside an enhancing rim inside oedema), a mass effect, white-matter hyperintensities that are
not tumour, a bias field and Rician noise, rendered with per-patient contrast as FLAIR, T1, T1ce and T2.
Patient i draws from its own generator `default_rng([seed, i])`, so serial and parallel runs write identical files.
Geometry lives in tasks/data/synthetic_shapes.py; this module turns it into intensities and files. The Kaggle-like
photos are cut from such patients by tasks/data/synthetic_photos.py.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from rich.progress import Progress

from tasks.config import MODALITIES
from tasks.data.gzip_nifti import write_nifti_gz
from tasks.data.orientation import BRATS_AFFINE
from tasks.data.process_pool import process_pool
from tasks.data.synthetic_shapes import (BRATS_SHAPE, Anatomy, Pose, SmoothField, Template, Tumour, brain_region,
                                         load_template, push_tissue, ramp, sample_pose, sample_tumour, sub_box,
                                         tumour_maps, warp_anatomy)
from tasks.io import staged_folder

log = logging.getLogger(__name__)

# Mean relative intensity of (CSF, grey matter, white matter): T1 WM > GM > CSF, T2 the reverse, FLAIR dark CSF.
TISSUE = {"flair": (0.15, 0.66, 0.46), "t1": (0.30, 0.62, 0.88), "t1ce": (0.30, 0.62, 0.88), "t2": (1.00, 0.52, 0.36)}
# Typical scanner units of a relative intensity of 1, per modality (BraTS intensities are not calibrated).
SCALE_RANGE = {"flair": (250, 700), "t1": (300, 1000), "t1ce": (300, 1500), "t2": (800, 3000)}
PATIENT_ID = "BraTS20_Training_{:03d}"


@dataclass(frozen=True)
class Contrast:
    """How one modality shows each tissue for one patient (relative units; WM on T1 is about 0.9)."""

    tissue: np.ndarray  # (3,) CSF, GM, WM
    oedema: float  # added to the underlying tissue: oedematous tissue stays faintly visible
    enhancing: float
    necrotic: float
    hyperintensity: float  # added inside white-matter hyperintensities (distractors, not tumour)
    rim: float  # added along the ventricles (FLAIR's bright ependymal rim)
    vessels: float  # added in bright vessels / choroid plexus (T1ce)
    noise: float  # Rician noise sigma
    bias: float  # amplitude of the smooth multiplicative bias field
    scale: float  # scanner units per relative unit


def sample_contrasts(rng: np.random.Generator) -> dict[str, Contrast]:
    """Per-patient contrast; tumour conspicuity varies, from obvious to subtle."""
    strength = rng.uniform(0.4, 1.0)
    wmh = rng.uniform(0.2, 0.5)
    tumour = {  # (oedema, enhancing, necrotic)
        "flair": (strength * rng.uniform(0.35, 0.55), rng.uniform(0.65, 0.9), rng.uniform(0.2, 0.6)),
        "t1": (-0.15 * strength, rng.uniform(0.55, 0.7), rng.uniform(0.2, 0.35)),
        "t1ce": (-0.15 * strength, rng.uniform(1.05, 1.45), rng.uniform(0.2, 0.35)),
        "t2": (strength * rng.uniform(0.3, 0.5), rng.uniform(0.55, 0.75), rng.uniform(0.85, 1.05)),
    }
    # (white-matter hyperintensity, ventricle rim, vessels / CSF-flow artefacts): bright, but not tumour.
    extras = {"flair": (wmh, rng.uniform(0.15, 0.4), rng.uniform(0.2, 0.7)), "t1": (-0.3 * wmh, 0.0, 0.0),
              "t1ce": (-0.3 * wmh, 0.0, rng.uniform(0.3, 0.8)), "t2": (0.8 * wmh, 0.0, 0.0)}
    return {
        m: Contrast(
            tissue=np.array(TISSUE[m]) * rng.uniform(0.94, 1.06, 3),
            oedema=tumour[m][0], enhancing=tumour[m][1], necrotic=tumour[m][2],
            hyperintensity=extras[m][0], rim=extras[m][1], vessels=extras[m][2],
            noise=rng.uniform(0.015, 0.06), bias=rng.uniform(0.05, 0.25), scale=rng.uniform(*SCALE_RANGE[m]),
        )
        for m in MODALITIES
    }


@dataclass(frozen=True)
class Hyperintensity:
    centre: np.ndarray  # output voxel
    radius_mm: float


@dataclass
class Patient:
    """Everything random about one patient, drawn up front so any grid renders the same person."""

    pose: Pose
    tumour: Tumour | None
    contrasts: dict[str, Contrast]
    hyperintensities: list[Hyperintensity]
    bias: SmoothField  # one component per modality
    vessels: SmoothField
    noise_seed: int
    texture: float = field(default=0.06)


def sample_patient(rng: np.random.Generator, template: Template, with_tumour: bool = True,
                   small_fraction: float = 0.2) -> Patient:
    pose = sample_pose(rng, template)
    tumour = sample_tumour(rng, template, pose, small_fraction) if with_tumour else None
    n_wmh = int(rng.integers(1, 13)) if rng.random() < 0.8 else 0
    sites = template.wmh_sites[rng.integers(len(template.wmh_sites), size=n_wmh)]
    wmh = [Hyperintensity(pose.to_output(s[None])[0], float(rng.uniform(1.5, 7.0))) for s in sites]
    hi = np.array(BRATS_SHAPE) - 1
    return Patient(
        pose=pose, tumour=tumour, contrasts=sample_contrasts(rng), hyperintensities=wmh,
        bias=SmoothField(rng, (0, 0, 0), hi, (3, 3, 3), components=len(MODALITIES)),
        vessels=SmoothField(rng, (0, 0, 0), hi, (40, 40, 26)),
        noise_seed=int(rng.integers(2**31)), texture=float(rng.uniform(0.03, 0.1)),
    )


def render(patient: Patient, template: Template, grid: tuple[np.ndarray, ...],
           modalities: tuple[str, ...] = MODALITIES) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Render a patient on a grid: labels (uint8 BraTS codes), brain mask, and per modality the intensities of
    the brain voxels (1-D float32, in `brain`'s C order; everything else is background, exactly 0).

    Intensities are computed on brain voxels only: half the cost of whole-grid arrays.
    """
    anatomy = patient_anatomy(patient, template, grid)
    brain = anatomy.brain
    tumour = tumour_maps(patient.tumour, anatomy, grid) if patient.tumour is not None else None
    seg = np.zeros(brain.shape, np.uint8)
    if tumour is not None:
        box = seg[tumour.box]
        box[tumour.whole > 0.5] = 2
        box[tumour.core > 0.5] = 4
        box[tumour.necrotic > 0.5] = 1
    tissue = [m[brain] for m in (anatomy.csf, anatomy.gm, anatomy.wm)]
    vessels = (np.clip(patient.vessels(*grid)[0] - 1.6, 0, 1) * anatomy.csf)[brain]
    extras = (anatomy.rim[brain], vessels, _hyperintensity_map(patient.hyperintensities, anatomy, grid)[brain])
    parts = _tumour_vectors(tumour, brain) if tumour is not None else None
    bias = patient.bias(*grid)
    noise_rng = np.random.default_rng(patient.noise_seed)
    values = {}
    for index, modality in enumerate(MODALITIES):
        c = patient.contrasts[modality]
        noise = noise_rng.standard_normal((2, len(tissue[0])), dtype=np.float32) * np.float32(c.noise)
        if modality not in modalities:
            continue
        image = sum(np.float32(w) * m for w, m in zip(c.tissue, tissue))
        image += sum(np.float32(w) * m for w, m in zip((c.rim, c.vessels, c.hyperintensity), extras))
        if parts is not None:
            _add_tumour(image, parts, c, patient.texture)
        image *= np.exp(np.float32(c.bias) * bias[index][brain])
        # Rician noise: the magnitude of a complex signal with Gaussian noise in both channels.
        values[modality] = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2) * np.float32(c.scale)
    return values, seg, brain


def _tumour_vectors(tumour, brain: np.ndarray) -> dict[str, np.ndarray]:
    """The tumour's soft maps as brain-voxel vectors (zero outside its box)."""
    n = int(brain.sum())
    position = np.full(brain.shape, -1, np.int64)
    position[brain] = np.arange(n)
    inside = brain[tumour.box]
    where = position[tumour.box][inside]
    vectors = {}
    for name in ("necrotic", "core", "oedema_level", "texture"):
        vector = np.zeros(n, np.float32)
        vector[where] = getattr(tumour, name)[inside]
        vectors[name] = vector
    return vectors


def patient_anatomy(patient: Patient, template: Template, grid: tuple[np.ndarray, ...]) -> Anatomy:
    """The patient's tissue maps on a grid: the template posed, deformed and pushed aside by the tumour."""
    coords = patient.pose.template_coordinates(*grid)
    if patient.tumour is not None:
        push_tissue(coords, grid, patient.tumour)
    return warp_anatomy(template, coords)


def _add_tumour(image: np.ndarray, parts: dict[str, np.ndarray], c: Contrast, texture: float) -> None:
    """Blend the tumour in: oedema adds to the tissue (which stays faintly visible); the core replaces it."""
    heterogeneity = 1 + np.float32(texture) * parts["texture"]
    image *= 1 - parts["core"]
    image += parts["oedema_level"] * np.float32(c.oedema) * (2 * heterogeneity - 1)
    image += ((parts["core"] - parts["necrotic"]) * np.float32(c.enhancing)
              + parts["necrotic"] * np.float32(c.necrotic)) * heterogeneity


def _hyperintensity_map(spots: list[Hyperintensity], anatomy: Anatomy, grid) -> np.ndarray:
    """Small white-matter blobs, bright on FLAIR and T2 like the tumour's oedema, but not labelled."""
    out = np.zeros(anatomy.brain.shape, np.float32)
    for spot in spots:
        box = sub_box(grid, spot.centre, spot.radius_mm + 2)
        axes = [ax[b] - c for ax, b, c in zip(grid, box, spot.centre)]
        distance = np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2)
        np.maximum(out[box], ramp(distance / spot.radius_mm, 1.0, spot.radius_mm) * anatomy.wm[box], out=out[box])
    return out


def patient_grid(seed: int, index: int) -> tuple[Patient, tuple[slice, ...], tuple[np.ndarray, ...]]:
    """Patient `index` of data set `seed`, and the part of the 240x240x155 volume its brain can occupy."""
    template = load_template()
    patient = sample_patient(np.random.default_rng([seed, index]), template)
    region = brain_region(patient.pose, template)
    return patient, region, tuple(np.arange(s.start, s.stop, dtype=np.float32) for s in region)


def synthesize_patient(seed: int, index: int, with_tumour: bool = True,
                       bias_fields: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Full 240x240x155 volumes of patient `index`: int16 modalities (0 outside the brain) and uint8 labels.
    `with_tumour=False`: the same person without the tumour (and its mass effect), every other draw kept;
    `bias_fields=False`: without the smooth intensity inhomogeneity (a study of what fools a model, not data)."""
    patient, region, grid = patient_grid(seed, index)
    if not with_tumour:
        patient.tumour = None
    if not bias_fields:
        patient.contrasts = {m: replace(c, bias=0.0) for m, c in patient.contrasts.items()}
    values, seg, brain = render(patient, load_template(), grid)
    volumes = {}
    for modality, vector in values.items():
        full = np.zeros(BRATS_SHAPE, np.int16)
        # Brain voxels stay >= 1 so "non-zero" means "brain", as in skull-stripped BraTS volumes.
        full[region][brain] = np.clip(np.rint(vector), 1, np.iinfo(np.int16).max)
        volumes[modality] = full
    labels = np.zeros(BRATS_SHAPE, np.uint8)
    labels[region] = seg
    return volumes, labels


def write_patient(out_dir: Path, name: str, volumes: dict[str, np.ndarray], labels: np.ndarray) -> Path:
    """Write into a hidden temp folder, then rename: a killed run never leaves a half patient that looks complete."""
    final = out_dir / name
    with staged_folder(final, out_dir / f".tmp-{name}-{os.getpid()}") as tmp:
        for suffix, data in [*volumes.items(), ("seg", labels)]:
            image = nib.Nifti1Image(data, BRATS_AFFINE)
            image.header.set_xyzt_units("mm", "sec")
            image.set_qform(BRATS_AFFINE, code=1)
            image.set_sform(BRATS_AFFINE, code=1)
            write_nifti_gz(image, tmp / f"{name}_{suffix}.nii.gz")
    return final


def _generate_one(out_dir: Path, seed: int, index: int, with_tumour: bool = True) -> Path:
    volumes, labels = synthesize_patient(seed, index, with_tumour)
    return write_patient(out_dir, PATIENT_ID.format(index), volumes, labels)


def generate_brats(out_dir: Path, n_patients: int, seed: int, workers: int = 1, tumour_free: int = 0) -> list[Path]:
    """Writes out_dir/BraTS20_Training_NNN/BraTS20_Training_NNN_{flair,t1,t1ce,t2,seg}.nii.gz (NNN = 001..):
    `n_patients` with a tumour, then `tumour_free` more without one (an all-zero seg).

    Returns the patient folders in order. Output depends only on (seed, patient number), not on `workers`, so the
    first `n_patients` are the same whatever `tumour_free` is.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    indices = range(1, n_patients + tumour_free + 1)
    log.info("generating %d synthetic BraTS patients (%d of them without a tumour) in %s (%d workers)",
             len(indices), tumour_free, out_dir, workers)
    with Progress(transient=True) as progress:
        task = progress.add_task("synthetic BraTS patients", total=len(indices))
        load_template()  # once here: forked workers inherit it
        if workers <= 1:
            paths = []
            for i in indices:
                paths.append(_generate_one(out_dir, seed, i, i <= n_patients))
                progress.advance(task)
        else:
            with process_pool(workers, initializer=load_template) as pool:
                futures = [pool.submit(_generate_one, out_dir, seed, i, i <= n_patients) for i in indices]
                for future in futures:
                    future.result()
                    progress.advance(task)
                paths = [f.result() for f in futures]
    log.info("wrote %d synthetic patients", len(paths))
    return paths

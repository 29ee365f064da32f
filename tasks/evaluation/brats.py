"""BraTS-style evaluation: per region (WT, TC, ET), per test patient, on the whole 3D volume at native resolution.

The model runs on the patient's RAW volumes (data/raw/brats/<patient>/) through tasks/inference/volume.py, the code
that serves /v1/predict/volume: every axial slice (stride 1), the resize undone. Labels are mapped to the 2020
convention (checked and mapped as the slice step does, so a 2023-style segmentation with ET = 3 scores alike).

Metrics, as the organisers' `brats-evaluation` package (panoptica, `gli` config) computes the global ones:
    Dice   2|P∩T| / (|P| + |T|) (MONAI's `compute_dice`)
    HD95   the 95th percentile of the POOLED surface distances, prediction→truth and truth→prediction, surfaces
           being the voxels removed by one binary erosion (face connectivity), distances in mm from the voxel
           spacing. (MONAI's `compute_hausdorff_distance` takes the larger of the two directed percentiles instead,
           which gives other numbers, so this one is scipy's distance transform, as panoptica does.)
    empty  both empty → Dice 1, HD95 0; one empty → Dice 0, HD95 373.13 mm (the BraTS rule)
tests/test_brats_eval.py checks both against an independent implementation, and against the package itself when
its separate environment (.venv-brats) is there.

Whether the voxel uncertainty marks the mistakes: per patient, over the brain's voxels, the mean uncertainty on
wrongly labelled voxels (label map ≠ truth) and on correct ones, and the AUROC of uncertainty as a detector of
errors (0.5 = no better than chance).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_dice
from rich.progress import Progress
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure
from sklearn.metrics import roc_auc_score

from tasks.data.brats_files import find_part
from tasks.data.orientation import Orientation
from tasks.data.regions import REGIONS, regions_from_labels
from tasks.data.subjects import subjects
from tasks.data.volumes import brats2020_labels, load_volume
from tasks.evaluation import metrics
from tasks.evaluation.brats_reference import reference_scores, required_reference_python
from tasks.inference.predictor import MASK_THRESHOLD
from tasks.inference.postprocess import Component
from tasks.inference.volume import NO_TTA, SlicePredictor, brain_of, predict_volume

log = logging.getLogger(__name__)

EMPTY_HD95_MM = 373.13  # BraTS: one of prediction and truth empty (the diagonal of the 240x240x155 1 mm volume)
REGION_METRICS = ("dice", "hd95")


def brats_dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary volumes with the BraTS rule for empty ones."""
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    if not predicted.any() and not truth.any():
        return 1.0
    if not predicted.any() or not truth.any():
        return 0.0
    # Outside the box around both masks every voxel is true negative, which Dice ignores: on the box MONAI sums the
    # same overlap and areas (exactly: counts below 2**24 in float32) as on the whole volume, in a fraction of the time.
    predicted, truth = _crop_to_both(predicted, truth)
    y_pred = torch.from_numpy(np.ascontiguousarray(predicted)[None, None]).float()
    y_true = torch.from_numpy(np.ascontiguousarray(truth)[None, None]).float()
    return float(compute_dice(y_pred, y_true, include_background=True)[0, 0])


def surface_distances(source: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance (mm) from each surface voxel of `source` to the nearest surface voxel of `target`."""
    footprint = generate_binary_structure(source.ndim, 1)
    source_border = source ^ binary_erosion(source, structure=footprint, iterations=1)
    target_border = target ^ binary_erosion(target, structure=footprint, iterations=1)
    return distance_transform_edt(~target_border, sampling=spacing)[source_border]


def brats_hd95(predicted: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """HD95 (mm) of two binary volumes, pooled over both directions, with the BraTS rule for empty ones."""
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    if not predicted.any() and not truth.any():
        return 0.0
    if not predicted.any() or not truth.any():
        return EMPTY_HD95_MM
    spacing = tuple(float(s) for s in spacing[: predicted.ndim])
    predicted, truth = _crop_to_both(predicted, truth)
    pooled = np.hstack((surface_distances(predicted, truth, spacing), surface_distances(truth, predicted, spacing)))
    return float(np.percentile(pooled, 95))


def _crop_to_both(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the box around either's voxels, one voxel wider where the volume allows. Every surface voxel
    of both lies inside, so each nearest-surface distance is the same as on the whole volume, and the erosion finds
    the same surfaces (the margin keeps the cut from making new ones); the distance transform then covers a tumour's
    box instead of the 240x240x155 volume (it took 22 of evaluate's 60 s on the quick profile's four test patients)."""
    box = []
    for axis in range(a.ndim):
        others = tuple(i for i in range(a.ndim) if i != axis)
        present = np.flatnonzero(a.any(axis=others) | b.any(axis=others))
        box.append(slice(max(int(present[0]) - 1, 0), int(present[-1]) + 2))
    return a[tuple(box)], b[tuple(box)]


def region_scores(predicted_labels: np.ndarray, truth_labels: np.ndarray, spacing: Sequence[float],
                  regions: Sequence[str] = REGIONS) -> dict[str, dict[str, float]]:
    """{region: {dice, hd95}} of two 2020-convention label maps, for the regions the model predicts."""
    predicted, truth = regions_from_labels(predicted_labels), regions_from_labels(truth_labels)
    out = {}
    for i, region in enumerate(REGIONS):
        if region in regions:
            out[region] = {"dice": brats_dice(predicted[i], truth[i]),
                           "hd95": brats_hd95(predicted[i], truth[i], spacing),
                           "present": bool(truth[i].any())}  # absent: Dice 1 or 0 by the BraTS rule, no overlap
    return out


def uncertainty_on_errors(uncertainty: np.ndarray, wrong: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    """Mean uncertainty on wrong and on correct brain voxels, and the AUROC of uncertainty for errors
    (NaN when the brain has no error or no correct voxel)."""
    u, w = uncertainty[brain], wrong[brain]
    if not w.any() or w.all():
        return {"mean_on_errors": float(u[w].mean()) if w.any() else float("nan"),
                "mean_on_correct": float(u[~w].mean()) if (~w).any() else float("nan"), "auroc": float("nan")}
    return {"mean_on_errors": float(u[w].mean()), "mean_on_correct": float(u[~w].mean()),
            "auroc": float(roc_auc_score(w, u))}


def evaluate_patient(predictor: SlicePredictor, patient_dir: Path, modalities: Sequence[str], image_size: int,
                     flips: Sequence[Sequence[int]] = NO_TTA, threshold: float = MASK_THRESHOLD) -> dict:
    """One raw BraTS patient folder → its per-region scores and its uncertainty-on-errors figures."""
    loaded = [load_volume(find_part(patient_dir, modality)) for modality in modalities]
    volumes = [volume.data for volume in loaded]
    seg_path = find_part(patient_dir, "seg")
    stored = load_volume(seg_path, labels=True)  # as stored: a NaN label is an error, not 0
    truth_volume, spacing = stored.data, stored.spacing
    truth = brats2020_labels(truth_volume, seg_path)  # mapped and checked as the slice step does
    # sliced in display orientation, as the slice step cuts them; the answer comes back on the stored grid
    result = predict_volume(predictor, volumes, image_size, flips, threshold,
                            orientation=Orientation.of(loaded[0].affine))
    brain = brain_of(volumes)
    scores = region_scores(result.label_map, truth, spacing, result.regions)
    # a whole-tumour-only model labels all it finds 2: its errors are whole-tumour errors, not label mismatches
    wrong = (result.label_map > 0) != (truth > 0) if len(result.regions) == 1 else result.label_map != truth
    errors = uncertainty_on_errors(result.uncertainty, wrong, brain | (truth > 0))
    return {"patient": patient_dir.name, "regions": scores, "uncertainty": errors, "label_map": result.label_map,
            "truth": truth, "spacing": spacing, "prediction": result}


def score_patients(predictor: SlicePredictor, raw_brats: Path, patients: Sequence[str], modalities: Sequence[str],
                   image_size: int, flips: Sequence[Sequence[int]] = NO_TTA,
                   keep_label_maps: Path | None = None, threshold: float = MASK_THRESHOLD) -> pd.DataFrame:
    """One row per BraTS patient of `patients` found under `raw_brats`: patient, <region>_dice, <region>_hd95,
    uncertainty columns. A patient without a folder there is skipped with a warning naming it (pass BraTS patients
    only: the region figures are then over fewer patients than the split holds, and evaluate's metrics.json lists
    who is missing, in segmentation_regions_coverage). With `keep_label_maps`, each patient's predicted and true
    label maps are written there as NIfTI (for the organisers' package)."""
    found = [p for p in patients if (raw_brats / p).is_dir()]
    if missing := [p for p in patients if p not in found]:
        log.warning("evaluate: %d of %d test patients have no raw folder under %s, so the WT/TC/ET figures leave "
                    "them out: %s", len(missing), len(patients), raw_brats, ", ".join(missing))
    rows = []
    with Progress(transient=True) as progress:
        bar = progress.add_task("test volumes (BraTS regions)", total=len(found))
        for patient in found:
            scored = evaluate_patient(predictor, raw_brats / patient, modalities, image_size, flips, threshold)
            row = {"patient": patient}
            for region, values in scored["regions"].items():
                row |= {f"{region}_{name}": value for name, value in values.items()}
            row |= {f"uncertainty_{name}": value for name, value in scored["uncertainty"].items()}
            row |= cleanup_columns(scored["prediction"].components)
            rows.append(row)
            if keep_label_maps is not None:
                write_label_maps(keep_label_maps, patient, scored)
            progress.advance(bar)
    return pd.DataFrame(rows)


# What the volume clean-up dropped from a patient's whole tumour (native grid): in the per-patient table, a low volume
# Dice beside a large dropped component says the clean-up, not the segmentation, lost the tumour (docs/recipes.md,
# "Post-processing").
CLEANUP_COLUMNS = ("cleanup_dropped_voxels", "cleanup_largest_dropped_voxels")


def cleanup_columns(components: Sequence[Component]) -> dict[str, int]:
    dropped = [c.voxels for c in components if not c.kept]
    return dict(zip(CLEANUP_COLUMNS, (sum(dropped), max(dropped, default=0))))


def write_label_maps(folder: Path, patient: str, scored: dict) -> None:
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*scored["spacing"][:3], 1.0])
    for kind in ("label_map", "truth"):
        nib.save(nib.Nifti1Image(scored[kind].astype(np.uint8), affine), folder / f"{patient}_{kind}.nii.gz")


def regions_report(scores: pd.DataFrame, n_resamples: int, seed: int) -> tuple[dict, dict, dict]:
    """(segmentation_regions, their ci95 entries, the uncertainty summary) for metrics.json. A region the model
    does not predict is null; intervals resample subjects (tasks/evaluation/metrics.bootstrap_ci; a subject's timepoints
    together)."""
    section, intervals = {}, {}
    for region in REGIONS:
        columns = [f"{region}_{name}" for name in REGION_METRICS]
        if scores.empty or not set(columns) <= set(scores.columns):
            section[region] = {"dice": None, "hd95": None}
            continue
        section[region] = {name: float(scores[f"{region}_{name}"].mean()) for name in REGION_METRICS}
        # how many patients have the region at all: in the others it scores 1 (or 0) by the BraTS rule, which says
        # nothing of how well it is delineated; in fewer than two the interval would only repeat that rule
        present = scores.get(f"{region}_present")
        if present is not None and present.sum() < 2:
            intervals |= {f"segmentation_regions.{region}.{name}": None for name in REGION_METRICS}
            continue
        statistic = metrics.weighted_mean_statistic({name: scores[f"{region}_{name}"].to_numpy(dtype=float)
                                                     for name in REGION_METRICS})
        ci = metrics.bootstrap_ci(subjects(scores["patient"]).to_numpy(), statistic, n_resamples, seed)
        intervals |= {f"segmentation_regions.{region}.{name}": ci.get(name) for name in REGION_METRICS}
    uncertainty = {"kind": "entropy", "n_patients": int(len(scores))}
    for name in ("mean_on_errors", "mean_on_correct", "auroc"):
        column = f"uncertainty_{name}"
        defined = int(scores[column].notna().sum()) if column in scores else 0
        uncertainty[name] = float(np.nanmean(scores[column])) if defined else None
        if 0 < defined < len(scores):  # e.g. a patient with no wrong voxel has no AUROC: say over how many it is
            uncertainty[f"{name}_n_patients"] = defined
    return section, intervals, uncertainty


def regions_present(scores: pd.DataFrame) -> dict[str, int | None]:
    """In how many test patients' truth each region exists (metrics.json `segmentation_regions_present`): where it
    does not, its Dice and HD95 are the BraTS rule's 1 / 0 or 0 / 373.13, not a delineation measured."""
    return {region: int(scores[f"{region}_present"].sum()) if f"{region}_present" in scores else None
            for region in REGIONS}


def regions_lowest(scores: pd.DataFrame) -> dict[str, dict | None]:
    """The test patient with the lowest Dice in each region (metrics.json `segmentation_regions_lowest`): with a few
    test patients one failure sets a mean's interval (a TC Dice of 0.845 over seven patients had [0.459, 0.954]
    because one of them scored 0.261), and the model card names it."""
    lowest: dict[str, dict | None] = {}
    for region in REGIONS:
        column = f"{region}_dice"
        values = scores[column].dropna() if column in scores else pd.Series(dtype=float)
        lowest[region] = None if values.empty else {"patient": str(scores.loc[values.idxmin(), "patient"]),
                                                    "dice": float(values.min())}
    return lowest


def organisers_report(label_maps: Path, regions: Sequence[str]) -> dict:
    """The organisers' package's means over the patients whose label maps `score_patients` kept: global Dice, HD95
    and NSD, lesion-wise Dice, HD95 and NSD per region (`evaluate.organisers_check`; needs .venv-brats).

    The package gives no figure (NaN) where a region is empty in both the truth and the prediction, where our own
    report counts the BraTS rule's 1 / 0: each mean is over the patients with a figure, `n_scored` says how many."""
    python = required_reference_python()
    per_case = reference_scores(label_maps, python)
    out: dict = {"available": True, "package": "brats-evaluation (panoptica, gli config)",
                 "n_patients": len(per_case)}
    for region in regions:
        values = pd.DataFrame([case[region] for case in per_case.values()], dtype=float)
        if not len(values):
            out[region] = None
            continue
        out[region] = {name: (float(values[name].mean()) if values[name].notna().any() else None)
                       for name in values.columns}
        out[region]["n_scored"] = values.notna().sum().astype(int).to_dict()
    return out

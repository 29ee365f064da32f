"""`evaluate`: the joint model on the TEST split, with a decision threshold chosen on the VALIDATION split.

    classification  every test slice (BraTS slices and Kaggle images) at the validation threshold
    segmentation    Dice, IoU, HD95 (mm) per BraTS test slice whose ground truth has tumour
    volume          Dice, HD95 (mm) per BraTS test patient, slices re-stacked by slice_index
    ci95            percentile bootstrap resampling patients (a Kaggle image is its own patient)
Slices are predicted one shard at a time, so memory stays bounded by the largest shard. The report is written
atomically to reports/metrics.json in the contract's shape; plots and their DVC data files go to reports/plots/.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import Progress

from tasks import metrics, paths, plots
from tasks.config import EvaluateSettings, Settings
from tasks.errors import SliceWiseError
from tasks.predict import TorchPredictor
from tasks.shards import read_manifest, read_shard
from tasks.split import read_split
from tasks.tracking import NullTracker, Tracker, make_tracker

log = logging.getLogger(__name__)

EVALUATED_STAGE = "joint"  # the last training stage: the model that export and register ship
CLASSIFICATION_KEYS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc")
CI_KEYS = tuple(f"classification.{k}" for k in CLASSIFICATION_KEYS) + (
    "segmentation.dice", "segmentation.iou", "segmentation.hd95",
    "segmentation_volume.dice", "segmentation_volume.hd95",
)
HEADLINE = ("classification.accuracy", "classification.sensitivity", "classification.specificity",
            "classification.roc_auc", "segmentation.dice", "segmentation.hd95", "segmentation_volume.dice")


@dataclass(frozen=True)
class EvaluationPaths:
    """Where evaluation reads (processed data, split lists, training histories) and writes (metrics, plots)."""

    processed: Path
    splits: Path
    metrics: Path
    plots: Path
    histories: dict[str, Path]

    @classmethod
    def of_project(cls) -> "EvaluationPaths":
        return cls(paths.PROCESSED, paths.SPLITS, paths.METRICS, paths.PLOTS,
                   {stage: paths.history_file(stage) for stage in paths.STAGES})


@dataclass(frozen=True)
class SplitPredictions:
    """What the metrics need from one split: one row per slice with its tumour probability, and the segmentation
    scores per tumour slice and per BraTS patient volume (empty for the validation split)."""

    slices: pd.DataFrame  # manifest columns + probability
    slice_scores: pd.DataFrame  # patient, slice_index, dice, iou, hd95
    volume_scores: pd.DataFrame  # patient, dice, iou, hd95


def split_rows(processed: Path, patients: list[str]) -> pd.DataFrame:
    """The manifest rows of these patients (BraTS patients and Kaggle images alike)."""
    manifest_path = processed / paths.MANIFEST.name
    if not manifest_path.exists():
        raise SliceWiseError("manifest not found (run the slice step first)", manifest_path)
    rows = read_manifest(manifest_path)
    rows = rows[rows["patient"].isin(set(patients))].reset_index(drop=True)
    if rows.empty:
        raise SliceWiseError("no processed slice belongs to this split", processed)
    return rows


def predict_split(predictor, processed: Path, rows: pd.DataFrame, segmentation: bool,
                  description: str = "predicting") -> SplitPredictions:
    """Predict every row, one shard at a time; with `segmentation`, score the masks of BraTS shards."""
    probability = np.empty(len(rows), dtype=np.float64)
    slice_scores, volume_scores = [], []
    groups = rows.groupby("shard", sort=False)
    with Progress(transient=True) as progress:
        bar = progress.add_task(description, total=len(rows))
        for shard_name, shard_rows in groups:
            shard = read_shard(processed / shard_name)
            take = shard_rows["row"].to_numpy()
            prediction = predictor.predict(shard.images[take])
            probability[shard_rows.index.to_numpy()] = prediction.tumour_probability
            if segmentation and shard.has_mask[take].all():
                predicted = prediction.mask_probability >= metrics.MASK_THRESHOLD
                for patient, rows_of_patient in shard_rows.groupby("patient", sort=False):
                    at = shard_rows.index.get_indexer(rows_of_patient.index)
                    scores = score_patient(predicted[at], shard.masks[take[at]] > 0,
                                           shard.slice_index[take[at]], shard.spacing)
                    slice_scores.append(scores[0].assign(patient=patient))
                    volume_scores.append(scores[1] | {"patient": patient})
            progress.advance(bar, len(shard_rows))
    return SplitPredictions(
        slices=rows.assign(probability=probability),
        slice_scores=pd.concat(slice_scores, ignore_index=True) if slice_scores
        else pd.DataFrame(columns=["patient", "slice_index", "dice", "iou", "hd95"]),
        volume_scores=pd.DataFrame(volume_scores, columns=["patient", "dice", "iou", "hd95"]),
    )


def score_patient(predicted: np.ndarray, truth: np.ndarray, slice_index: np.ndarray,
                  spacing: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """Per-slice scores of the slices whose truth has tumour, and the scores of the re-stacked volume.

    In-plane spacing comes from the shard; through-plane spacing is the slice stride (read from the slice
    indices) x 1 mm, the BraTS voxel size, so HD95 of a volume sliced every 2nd slice is still in mm."""
    tumour = truth.reshape(len(truth), -1).any(axis=1)
    per_slice = {"dice": [], "iou": [], "hd95": []}
    if tumour.any():
        per_slice = metrics.segmentation_scores(predicted[tumour], truth[tumour], metrics.pixel_spacing(spacing))
    order, stride = np.argsort(slice_index), metrics.slice_step(slice_index)
    volume = metrics.segmentation_scores(
        metrics.stack_volume(predicted[order], slice_index[order], stride)[None],
        metrics.stack_volume(truth[order], slice_index[order], stride)[None],
        metrics.volume_spacing(spacing, stride),
    )
    return (pd.DataFrame({"slice_index": slice_index[tumour], **per_slice}),
            {name: float(values[0]) for name, values in volume.items()})


def build_report(val: SplitPredictions, test: SplitPredictions, cfg: EvaluateSettings, seed: int) -> dict:
    """metrics.json's content: the threshold comes from `val` only, every number from `test`."""
    threshold = metrics.choose_threshold(val.slices["label"].to_numpy(), val.slices["probability"].to_numpy(),
                                         cfg.threshold_rule, cfg.target_sensitivity)
    labels, probability = test.slices["label"].to_numpy(), test.slices["probability"].to_numpy()
    seg, vol = test.slice_scores, test.volume_scores
    report = {
        "classification": metrics.classification_metrics(labels, probability, threshold),
        "segmentation": {"dice": _mean(seg["dice"]), "iou": _mean(seg["iou"]), "hd95": _mean(seg["hd95"]),
                         "n_slices": int(len(seg))},
        "segmentation_volume": {"dice": _mean(vol["dice"]), "hd95": _mean(vol["hd95"]), "n_patients": int(len(vol))},
    }
    intervals = confidence_intervals(test, threshold, cfg.bootstrap, seed)
    # Every metric keeps its key; an interval that cannot be computed (no tumour slice at all) is null.
    report["ci95"] = {key: intervals.get(key) for key in CI_KEYS}
    return _finite_or_null(report)


def confidence_intervals(test: SplitPredictions, threshold: float, n_resamples: int, seed: int) -> dict:
    """Bootstrap 95 % intervals resampling patients: all test patients for classification (a Kaggle image is its
    own patient), the BraTS patients with tumour slices for the per-slice and per-volume segmentation scores."""
    labels, probability = test.slices["label"].to_numpy(), test.slices["probability"].to_numpy()
    seg, vol = test.slice_scores, test.volume_scores
    families = [
        ("classification", test.slices["patient"], metrics.classification_statistic(labels, probability, threshold)),
        ("segmentation", seg["patient"], _means_of(seg, ("dice", "iou", "hd95"))),
        ("segmentation_volume", vol["patient"], _means_of(vol, ("dice", "hd95"))),
    ]
    intervals = {}
    for prefix, groups, statistic in families:
        ci = metrics.bootstrap_ci(groups.to_numpy(), statistic, n_resamples, seed)
        intervals |= {f"{prefix}.{name}": bounds for name, bounds in ci.items()}
    return intervals


def _means_of(scores: pd.DataFrame, columns: tuple[str, ...]):
    return metrics.weighted_mean_statistic({name: scores[name].to_numpy(dtype=float) for name in columns})


def _mean(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else float("nan")


def _finite_or_null(value):
    """JSON has no NaN: an undefined metric (e.g. no tumour slice in the test split) is written as null."""
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_json_atomic(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_plots(test: SplitPredictions, report: dict, model, predictor, where: EvaluationPaths,
                cfg: EvaluateSettings, seed: int, device: str = "cpu") -> tuple[list[Path], float]:
    """Every figure and DVC plot file; returns the files written and the expected calibration error."""
    labels, probability = test.slices["label"].to_numpy(), test.slices["probability"].to_numpy()
    cls, out_dir = report["classification"], where.plots
    ece = metrics.expected_calibration_error(labels, probability)
    written = plots.confusion_plot(labels, probability >= cls["threshold"], cls["confusion_matrix"],
                                   cls["threshold"], out_dir)
    if len(np.unique(labels)) == 2:  # ROC, PR and calibration need both classes
        written += plots.roc_plot(labels, probability, cls["roc_auc"], out_dir)
        written += plots.pr_plot(labels, probability, cls["pr_auc"], out_dir)
        written += plots.calibration_plot(labels, probability, ece, out_dir)
    written += plots.training_curves_plot(where.histories, out_dir)
    written += plots.overlay_examples_plot(test.slices, where.processed, predictor, cfg.overlay_examples, out_dir)
    written += plots.gradcam_examples_plot(test.slices, where.processed, model, cfg.gradcam_examples, seed, out_dir,
                                           device)
    return written, ece


def evaluate_checkpoint(checkpoint: Path, where: EvaluationPaths, cfg: EvaluateSettings, seed: int,
                        tracker: Tracker = NullTracker(), device: str = "cpu") -> dict:
    """Evaluate one checkpoint; writes metrics.json and the plots, logs both to `tracker`, returns the report."""
    from tasks.checkpoints import load_model

    model, _ = load_model(checkpoint, map_location=device)
    predictor = TorchPredictor(model, device=device)
    val = predict_split(predictor, where.processed, split_rows(where.processed, read_split("val", where.splits)),
                        segmentation=False, description="validation (threshold)")
    test = predict_split(predictor, where.processed, split_rows(where.processed, read_split("test", where.splits)),
                         segmentation=True, description="test")
    report = build_report(val, test, cfg, seed)
    write_json_atomic(report, where.metrics)
    written, ece = write_plots(test, report, model, predictor, where, cfg, seed, device)

    tracker.log_metrics(flatten_metrics(report) | {"calibration.ece": ece})
    tracker.log_artifact(where.metrics)
    for path in written:
        tracker.log_artifact(path, "plots")
    log.info("evaluate: threshold %.3f, accuracy %.3f, slice Dice %s, ECE %.3f", report["classification"]["threshold"],
             report["classification"]["accuracy"], report["segmentation"]["dice"], ece)
    return report | {"calibration_ece": ece}


def flatten_metrics(report: dict) -> dict[str, float]:
    """Numeric leaves as dotted names (ci95 bounds as `ci95.<metric>.lo/.hi`); lists and nulls are left out."""
    flat = {}
    for section, values in report.items():
        for name, value in values.items():
            if section == "ci95" and value is not None:
                flat[f"ci95.{name}.lo"], flat[f"ci95.{name}.hi"] = value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"{section}.{name}"] = float(value)
    return flat


def headline(report: dict) -> dict:
    """The numbers `make run` prints: each headline metric with its 95 % interval."""
    out = {}
    for key in HEADLINE:
        section, name = key.split(".")
        out[key] = {"value": report[section].get(name), "ci95": report["ci95"].get(key)}
    return out


def main(settings: Settings) -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tracker = make_tracker(settings, "evaluate")
    try:
        report = evaluate_checkpoint(paths.best_checkpoint(EVALUATED_STAGE), EvaluationPaths.of_project(),
                                     settings.evaluate, settings.seed, tracker, device)
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.close()
    return {"metrics": str(paths.METRICS), "threshold": report["classification"]["threshold"],
            "calibration_ece": round(report["calibration_ece"], 4), "headline": headline(report)}

"""A model on the TEST split, with a decision threshold chosen on the VALIDATION split (`evaluate`).

    classification  every test slice (BraTS slices and Kaggle images) at the validation threshold
    segmentation    Dice, IoU, HD95 (mm) per BraTS test slice whose ground truth has tumour
    volume          Dice, HD95 (mm) per BraTS test patient, slices re-stacked by slice_index
    regions         WT, TC, ET Dice and HD95 per BraTS test patient on the raw volume at native resolution, every
                    slice, BraTS rule for empty regions (tasks/evaluation/brats.py); and whether the voxel
                    uncertainty is higher on the wrong voxels (`volume_uncertainty`)
    subgroups       accuracy, sensitivity, specificity per source (BraTS slices, Kaggle images), and the share of
                    BraTS tumour slices detected per tumour-area bin (where the classifier loses tumours)
    ci95            bootstrap resampling patients (a Kaggle image is its own patient; intervals.py): BCa, its tails
                    widened for few patients (metrics.bootstrap_ci); `ci95_method` says so, and
                    `ci95_degenerate` names the intervals every resample agreed on (no width)
    segmentation_threshold  the pixel threshold every mask above was cut at: `evaluate.mask_threshold`, or chosen on
                    the validation patients (with the table it was chosen from)
Slices are predicted one shard at a time, so memory stays bounded by the largest shard. The report is written
atomically to reports/metrics.json in the contract's shape; plots and their DVC data files go to reports/plots/.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from tasks import paths
from tasks.config import EvaluateSettings
from tasks.data.regions import REGIONS
from tasks.data.splits import read_split, split_rows
from tasks.evaluation import brats, metrics, plots
from tasks.evaluation.brats_reference import required_reference_python
from tasks.evaluation.intervals import (SOURCE_CI_METRICS, SOURCES, confidence_intervals, degenerate,
                                        resampling_units)
from tasks.evaluation.scoring import (InVolumeCandidates, MaskThresholdTally, SplitPredictions, choose_mask_threshold,
                                      predict_split)
from tasks.evaluation.tumour_free import tumour_free_twins
from tasks.inference.predictor import ALONE_SOURCES, TorchPredictor, decision_thresholds
from tasks.io import nested_value, sha256_file, write_json_atomic
from tasks.tracking.tracker import NullTracker, Tracker

log = logging.getLogger(__name__)
MASK_THRESHOLD_FALLBACK = "fallback: no validation slice has tumour"

CLASSIFICATION_KEYS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc")
CI_KEYS = tuple(f"classification.{k}" for k in CLASSIFICATION_KEYS) + (
    "segmentation.dice", "segmentation.iou", "segmentation.hd95",
    "segmentation_volume.dice", "segmentation_volume.hd95",
) + tuple(f"segmentation_regions.{region}.{name}" for region in REGIONS for name in brats.REGION_METRICS) + tuple(
    f"classification_by_source.{source}.{name}" for source in SOURCES for name in SOURCE_CI_METRICS)
HEADLINE = ("classification.accuracy", "classification.sensitivity", "classification.specificity",
            "classification.roc_auc", "segmentation.dice", "segmentation.hd95", "segmentation_volume.dice",
            "segmentation_regions.wt.dice", "segmentation_regions.tc.dice", "segmentation_regions.et.dice")


@dataclass(frozen=True)
class EvaluationPaths:
    """Where evaluation reads (processed data, split lists, training histories) and writes (metrics, plots)."""

    processed: Path
    splits: Path
    metrics: Path
    plots: Path
    histories: dict[str, Path]
    raw_brats: Path | None = None  # the raw patient folders: the BraTS-style volume evaluation reads them

    @classmethod
    def of_project(cls) -> "EvaluationPaths":
        return cls(paths.PROCESSED, paths.SPLITS, paths.METRICS, paths.PLOTS,
                   {stage: paths.history_file(stage) for stage in paths.STAGES}, paths.RAW_BRATS)


@dataclass(frozen=True)
class VolumeInputs:
    """What the BraTS-style volume evaluation needs to prepare a raw volume as the model was trained."""

    modalities: tuple[str, ...] = ("flair",)
    image_size: int = 128
    # the data set's seed when the raw volumes are the synthetic generator's (data.source synthetic): the test
    # patients are then rendered again without their tumour (tasks/evaluation/tumour_free.py); None: real data
    synthetic_seed: int | None = None


def build_report(val: SplitPredictions, test: SplitPredictions, cfg: EvaluateSettings, seed: int,
                 region_scores: pd.DataFrame | None = None, mask_threshold: dict | None = None,
                 units: pd.Series | None = None, val_alone: SplitPredictions | None = None) -> dict:
    """metrics.json's content: the thresholds come from `val` only, every number from `test`. `region_scores`:
    one row per test patient volume (tasks/evaluation/brats.score_patients); None or empty → null regions.
    `mask_threshold`: the `segmentation_threshold` section (mask_threshold_section); None → the fixed default.
    `val_alone`: the validation slices each scored alone (None: `val` is); the same rule on them gives the
    threshold for a slice that arrives alone (`lone_slice_value`), which serving's slice route applies, and which
    the test photos are therefore judged at (they always arrive alone; `decision_thresholds`)."""
    # Each threshold is chosen on the validation inputs it will judge: the in-volume one on those that arrive in a
    # volume (the photos, judged at the lone one, had moved it: review 2026-12-07), the lone one on every input scored
    # alone (serving's slice route takes BraTS slices and photos alike)
    judged = val if val_alone is None else in_volume_inputs(val)
    threshold = _chosen_threshold(judged, cfg)
    lone_threshold = threshold if val_alone is None else _chosen_threshold(val_alone, cfg)
    labels, probability = test.slices["label"].to_numpy(), test.slices["probability"].to_numpy()
    # each test input at the threshold serving decides it at: a photo always arrives alone (the slice route)
    at = decision_thresholds(test.slices["source"], threshold, lone_threshold)
    seg, vol = test.slice_scores, test.volume_scores
    report = {
        "classification": metrics.classification_metrics(labels, probability, threshold, at=at),
        "segmentation": {"dice": _mean(seg["dice"]), "iou": _mean(seg["iou"]), "hd95": _mean(seg["hd95"]),
                         "n_slices": int(len(seg))},
        "segmentation_misses": _hd95_apart(seg),
        "segmentation_volume": {"dice": _mean(vol["dice"]), "hd95": _mean(vol["hd95"]), "n_patients": int(len(vol))},
    }
    report |= metrics.subgroup_metrics(test.slices, at)
    regions, region_intervals, uncertainty = brats.regions_report(
        region_scores if region_scores is not None else pd.DataFrame(), cfg.bootstrap, seed)
    report["segmentation_regions"] = regions
    report["segmentation_regions_present"] = brats.regions_present(
        region_scores if region_scores is not None else pd.DataFrame())
    report["segmentation_regions_lowest"] = brats.regions_lowest(
        region_scores if region_scores is not None else pd.DataFrame())
    report["volume_uncertainty"] = uncertainty
    intervals = confidence_intervals(test, at, cfg.bootstrap, seed, units) | region_intervals
    # Every metric keeps its key; an interval that cannot be computed (no tumour slice at all) is null.
    report["ci95"] = {key: intervals.get(key) for key in CI_KEYS}
    # what every resample agreed on (a precision of 1 gets Wilson's instead; a Dice, an AUC or an HD95 has no such
    # interval): the model card marks them, as a zero-width interval would read as certainty from a few patients
    report["ci95_degenerate"] = sorted(key for key, bounds in report["ci95"].items() if degenerate(bounds))
    # how they were computed: the model card says it, and a metrics.json without it had percentile intervals
    # (`evaluate.bootstrap` resamples at least: bootstrap_ci raises them for few patients' widened tails)
    report["ci95_method"] = {"interval": metrics.INTERVAL_METHOD, "level": 0.95, "resampled": "patients",
                             "min_resamples": cfg.bootstrap}
    report["segmentation_threshold"] = mask_threshold or {"value": metrics.MASK_THRESHOLD, "rule": "fixed"}
    # what the threshold is applied to: export hands it to serving with the threshold (model.json `slice_score`)
    report["classification_threshold"] = {"value": threshold, "rule": threshold_origin(judged, cfg),
                                           "slice_score": cfg.slice_score, "slices_in_volume": cfg.slices_in_volume,
                                           "lone_slice_value": lone_threshold,
                                           # the photos' decisions above were made at the lone slice threshold
                                           "photos_at": "lone_slice_value"}
    return _finite_or_null(report)


def in_volume_inputs(split: SplitPredictions) -> SplitPredictions:
    """The split's inputs that reach serving in a volume (every source but ALONE_SOURCES: the BraTS slices)."""
    return replace(split, slices=split.slices[~split.slices["source"].isin(ALONE_SOURCES)])


def _chosen_threshold(val: SplitPredictions, cfg: EvaluateSettings) -> float:
    return metrics.choose_threshold(val.slices["label"].to_numpy(), val.slices["probability"].to_numpy(),
                                    cfg.threshold_rule, cfg.target_sensitivity, cfg.fixed_threshold)


def threshold_origin(val: SplitPredictions, cfg: EvaluateSettings) -> str:
    """How the decision threshold came about, for the model card: the rule, or why it fell back to 0.5."""
    if cfg.threshold_rule == "fixed":
        return "fixed"
    if val.slices["label"].nunique() < 2:
        return "fallback: the validation split holds one class only"
    return cfg.threshold_rule


def mask_threshold_section(cfg: EvaluateSettings, validation: MaskThresholdTally | None) -> dict:
    """The `segmentation_threshold` section: `evaluate.mask_threshold` as given, or, for "validation", the candidate
    with the best mean of validation slice and volume Dice (`validation`: the tally the validation pass filled),
    with every candidate's two figures."""
    if cfg.mask_threshold != "validation":
        return {"value": float(cfg.mask_threshold), "rule": "fixed"}
    table = validation.table()
    rule = "validation"
    if table["slice_dice"].isna().all():
        # no tumour slice, so no candidate has a figure to choose on: the 0.5 that comes back is the default, and
        # metrics.json and the model card say so
        rule = MASK_THRESHOLD_FALLBACK
        log.warning("evaluate: %s; pixels are cut at the default %.2f", rule, metrics.MASK_THRESHOLD)
    return {"value": choose_mask_threshold(table), "rule": rule,
            "validation": table.round(4).to_dict(orient="records")}


def _hd95_apart(seg: pd.DataFrame) -> dict:
    """The per-slice HD95 told apart: a tumour slice with nothing predicted scores the image diagonal (a few such
    misses made half of a quick model's mean), so the misses are counted and the boundary error of the slices found
    is given alone, with the median of all."""
    detected = seg["detected"].astype(bool) if "detected" in seg else pd.Series(True, index=seg.index)
    return {"n_slices_missed": int((~detected).sum()), "hd95_over_found": _mean(seg["hd95"][detected]),
            "hd95_median": float(seg["hd95"].median()) if len(seg) else float("nan")}


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


def per_patient_scores(test: SplitPredictions, region_scores: pd.DataFrame | None) -> pd.DataFrame:
    """One row per BraTS test patient: its tumour slices and their mean Dice, its re-stacked volume's Dice and HD95,
    and, when the native volumes were scored, their region figures and what the clean-up dropped. The means in
    metrics.json are over these rows (the volume's) or over the slices (the slice Dice), so a low mean can be traced
    to the patients that make it."""
    by_slice = test.slice_scores.groupby("patient", sort=False)["dice"].agg(tumour_slices="size", slice_dice="mean")
    volumes = test.volume_scores.rename(columns={"dice": "volume_dice", "iou": "volume_iou", "hd95": "volume_hd95"})
    table = volumes.merge(by_slice.reset_index(), on="patient", how="outer")
    if region_scores is not None and len(region_scores):
        scores = [*(f"{region}_{name}" for region in REGIONS for name in brats.REGION_METRICS), *brats.CLEANUP_COLUMNS]
        table = table.merge(region_scores[["patient", *(c for c in scores if c in region_scores)]], on="patient",
                            how="outer")
    table["tumour_slices"] = table["tumour_slices"].fillna(0).astype(int)
    return table.sort_values("patient", ignore_index=True)


def write_plots(test: SplitPredictions, report: dict, model, predictor, where: EvaluationPaths,
                cfg: EvaluateSettings, seed: int, device: str = "cpu",
                region_scores: pd.DataFrame | None = None) -> tuple[list[Path], float]:
    """Every figure and DVC plot file; returns the files written and the expected calibration error."""
    labels, probability = test.slices["label"].to_numpy(), test.slices["probability"].to_numpy()
    cls, out_dir = report["classification"], where.plots
    ece = metrics.expected_calibration_error(labels, probability)
    lone = report["classification_threshold"]["lone_slice_value"]
    at = decision_thresholds(test.slices["source"], cls["threshold"], lone)
    written = plots.confusion_plot(labels, probability >= at, cls["confusion_matrix"], cls["threshold"], out_dir,
                                   photo_threshold=lone)
    if len(np.unique(labels)) == 2:  # ROC, PR and calibration need both classes
        written += plots.roc_plot(labels, probability, cls["roc_auc"], out_dir)
        written += plots.pr_plot(labels, probability, cls["pr_auc"], out_dir)
        written += plots.calibration_plot(labels, probability, ece, out_dir)
    written += plots.training_curves_plot(where.histories, out_dir)
    written += plots.patients_csv(per_patient_scores(test, region_scores), out_dir)
    written += plots.overlay_examples_plot(test.slices, where.processed, predictor, cfg.overlay_examples, out_dir,
                                           report["segmentation_threshold"]["value"])
    written += plots.gradcam_examples_plot(test.slices, where.processed, model, cfg.gradcam_examples, seed, out_dir,
                                           device)
    return written, ece


def evaluate_checkpoint(checkpoint: Path, where: EvaluationPaths, cfg: EvaluateSettings, seed: int,
                        tracker: Tracker = NullTracker(), device: str = "cpu",
                        volume_inputs: VolumeInputs = VolumeInputs(),
                        near_duplicate_distance: int | None = None) -> dict:
    """Evaluate one checkpoint; writes metrics.json and the plots, logs both to `tracker`, returns the report.
    `near_duplicate_distance`: the split's pHash distance (split.phash_max_distance), so the classification
    intervals resample near-duplicate Kaggle images together; None: each image alone."""
    from tasks.inference.checkpoints import load_model

    if cfg.organisers_check and where.raw_brats is not None:
        required_reference_python()  # missing: said now, not after the minutes of scoring before it is needed
    model, _ = load_model(checkpoint, map_location=device)
    predictor = TorchPredictor(model, device=device, slice_score=cfg.slice_score)
    val_rows = split_rows(where.processed, read_split("val", where.splits))
    tally = MaskThresholdTally() if cfg.mask_threshold == "validation" else None
    fixed_cut = None if tally is not None else float(cfg.mask_threshold)
    # One pass over validation: each slice alone (a lone slice's threshold, and the mask cut when it is chosen here),
    # and, when evaluation scores BraTS slices in their volume, their in-volume scores at every cut it may choose.
    cuts = (fixed_cut,) if tally is None else (*tally.candidates, metrics.MASK_THRESHOLD)
    candidates = InVolumeCandidates(len(val_rows), cuts) if cfg.slices_in_volume else None
    val = val_alone = predict_split(predictor, where.processed, val_rows, segmentation=False, tally=tally,
                                    description="validation", candidates=candidates,
                                    mask_threshold=metrics.MASK_THRESHOLD if fixed_cut is None else fixed_cut)
    mask_threshold = mask_threshold_section(cfg, tally)
    if candidates is not None:
        val = candidates.at(val_alone, mask_threshold["value"])
    test = predict_split(predictor, where.processed, split_rows(where.processed, read_split("test", where.splits)),
                         segmentation=True, description="test", mask_threshold=mask_threshold["value"],
                         in_volume=cfg.slices_in_volume)
    region_scores, organisers, unscored = None, None, []
    in_brats = set(test.slices.loc[test.slices["source"] == "brats", "patient"])
    brats_test = [p for p in read_split("test", where.splits) if p in in_brats]  # the split's order, Kaggle left out
    if where.raw_brats is not None:
        with tempfile.TemporaryDirectory() as label_maps:
            region_scores = brats.score_patients(predictor, where.raw_brats, brats_test,
                                                 volume_inputs.modalities, volume_inputs.image_size,
                                                 keep_label_maps=Path(label_maps) if cfg.organisers_check else None,
                                                 threshold=mask_threshold["value"])
            unscored = sorted(set(brats_test) - set(region_scores.get("patient", [])))
            if cfg.organisers_check and len(region_scores):
                regions = [r for r in REGIONS if f"{r}_dice" in region_scores]
                organisers = brats.organisers_report(Path(label_maps), regions)
    if cfg.organisers_check and organisers is None and brats_test:
        log.warning("evaluate: evaluate.organisers_check is true, but no test volume was on disk to check (%s)",
                    where.raw_brats or "no raw BraTS folder")
    units = None if near_duplicate_distance is None else \
        resampling_units(test.slices, where.processed, near_duplicate_distance)
    report = build_report(val, test, cfg, seed, region_scores, mask_threshold, units,
                          val_alone if cfg.slices_in_volume else None)
    if volume_inputs.synthetic_seed is not None and region_scores is not None:  # the generator's test patients
        twins = tumour_free_twins(predictor, list(region_scores.get("patient", [])), volume_inputs.synthetic_seed,
                                  volume_inputs.modalities, volume_inputs.image_size, mask_threshold["value"],
                                  report["classification"]["threshold"], cfg.slices_in_volume)
        if twins is not None:
            report["tumour_free_volumes"] = twins
    # which weights these numbers are about: register refuses to ship other ones under them
    report["model"] = {"checkpoint_sha256": sha256_file(checkpoint)}
    if organisers is not None:
        report["segmentation_regions_brats_evaluation"] = _finite_or_null(organisers)
    if unscored and region_scores is not None:
        # the WT/TC/ET means above (null with none scored) are over fewer patients than the split's: how many, and
        # who is not in them
        report["segmentation_regions_coverage"] = {"n_patients": int(len(region_scores)),
                                                   "of_brats_test_patients": len(brats_test),
                                                   "missing_patients": unscored}
    written, ece = write_plots(test, report, model, predictor, where, cfg, seed, device, region_scores)
    # how far the tumour score is from a probability (it is a mean of two heads' figures): the model card says it
    report["calibration"] = {"ece": ece, "bins": metrics.CALIBRATION_BINS, "over": "every test input's tumour score"}
    write_json_atomic(report, where.metrics)  # last: a run stopped while plotting leaves the last run's metrics.json

    tracker.log_metrics(flatten_metrics(report))  # calibration.ece among them
    tracker.log_artifact(where.metrics)
    for path in written:
        tracker.log_artifact(path, "plots")
    dice = report["segmentation"]["dice"]  # None: no test slice has tumour
    log.info("evaluate: threshold %.3f (a slice or photo alone %.3f), accuracy %.3f, slice Dice %s (mask threshold "
             "%.2f, %s), ECE %.3f", report["classification"]["threshold"],
             report["classification_threshold"]["lone_slice_value"], report["classification"]["accuracy"],
             "n/a" if dice is None else f"{dice:.3f}", mask_threshold["value"], mask_threshold["rule"], ece)
    return report | {"calibration_ece": ece}


def flatten_metrics(report: dict) -> dict[str, float]:
    """Numeric leaves as dotted names (ci95 bounds as `ci95.<metric>.lo/.hi`); lists and nulls are left out."""
    flat = {}
    for section, values in report.items():
        if section == "ci95_method" or not isinstance(values, dict):  # settings, not figures; a list of names
            continue
        for name, value in values.items():
            if section == "ci95" and value is not None:
                flat[f"ci95.{name}.lo"], flat[f"ci95.{name}.hi"] = value
            elif isinstance(value, dict):  # segmentation_regions.<region>.<metric>
                flat |= {f"{section}.{name}.{k}": float(v) for k, v in value.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)}
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"{section}.{name}"] = float(value)
    return flat


def headline(report: dict) -> dict:
    """The numbers `make run` prints: each headline metric with its 95 % interval."""
    out = {}
    for key in HEADLINE:
        out[key] = {"value": nested_value(report, key), "ci95": report["ci95"].get(key)}
    return out


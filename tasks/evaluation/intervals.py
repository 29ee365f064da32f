"""Bootstrap 95 % confidence intervals of the test figures, resampling patients (`confidence_intervals`; BCa with its
tails widened for few patients: metrics.bootstrap_ci): every test patient for classification, with a Kaggle image's
near-duplicates as one (`resampling_units`), the BraTS patients with tumour slices for the per-slice segmentation
scores and every BraTS test patient for the per-volume ones. A subject's timepoints (BraTS 2023 names) are resampled
together everywhere: they are one person, as the split keeps them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.data import splitting
from tasks.data.subjects import subjects
from tasks.evaluation import metrics
from tasks.evaluation.scoring import SplitPredictions


SOURCES = ("brats", "kaggle")  # the test inputs' sources: MRI slices and photos
# roc_auc each source alone: the pooled one ranks MRI slices judged in their volume with photos judged alone, two
# scores with two thresholds, and its 0.98 hid how weakly the photos are ranked
SOURCE_CI_METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc")
# Proportions over the resampled units, which get the Wilson interval when every resample agrees on 0 or 1
WILSON_METRICS = ("accuracy", "sensitivity", "specificity", "precision")


def resampling_units(slices: pd.DataFrame, processed: Path, max_distance: int) -> pd.Series:
    """What the classification bootstrap resamples, per slice: its BraTS subject, or its Kaggle image's near-duplicate
    group (pHash distance <= `max_distance`, as the split step groups them: copies of one scan, kept in one split).
    Resampled one by one, copies counted as independent patients and narrowed the interval."""
    units = subjects(slices["patient"])
    kaggle = slices[slices["source"] == "kaggle"]
    if len(kaggle) > 1:
        pairs = splitting.kaggle_near_duplicates(processed, kaggle, max_distance)
        group_of = {image: group[0] for group in splitting.near_duplicate_groups(kaggle["patient"].tolist(), pairs)
                    for image in group}
        units = units.where(slices["source"] != "kaggle", slices["patient"].map(group_of))
    return units


def confidence_intervals(test: SplitPredictions, threshold: float | np.ndarray, n_resamples: int, seed: int,
                         units: pd.Series | None = None) -> dict:
    """Bootstrap 95 % intervals resampling patients: all test patients for classification (a Kaggle image is its
    own patient, near-duplicates one together when `units` says so: `resampling_units`; each source's within it),
    each source's inputs alone for its accuracy, sensitivity and specificity, the BraTS patients with tumour slices
    for the per-slice segmentation scores and every BraTS test patient for the per-volume ones (one without a
    tumour scores 1 or 0). An accuracy, sensitivity, specificity or precision of exactly 1 or 0, which every resample
    repeats, gets the Wilson interval over its units instead of a zero-width one (`degenerate` names what else
    every resample agreed on)."""
    labels, probability = test.slices["label"].to_numpy(), test.slices["probability"].to_numpy()
    seg, vol = test.slice_scores, test.volume_scores
    groups_all = subjects(test.slices["patient"]) if units is None else units
    sources = test.slices["source"].to_numpy() if "source" in test.slices else None
    families = [
        ("classification", groups_all, metrics.classification_statistic(labels, probability, threshold)),
        ("segmentation", subjects(seg["patient"]), _means_of(seg, ("dice", "iou", "hd95"))),
        ("segmentation_volume", subjects(vol["patient"]), _means_of(vol, ("dice", "hd95"))),
    ]
    # Each source alone too: the photos are a few dozen of the test inputs, so the pooled accuracy says little of
    # how a photo is answered (a quick model's photo accuracy ran 0.56-0.86 over seeds while the pooled one held).
    cuts = np.broadcast_to(np.asarray(threshold, dtype=np.float64), probability.shape)
    for source in SOURCES if "source" in test.slices else ():
        at = (test.slices["source"] == source).to_numpy()
        if at.any():
            statistic = metrics.classification_statistic(labels[at], probability[at], cuts[at])
            families.append((f"classification_by_source.{source}", groups_all[at],
                             _only(statistic, SOURCE_CI_METRICS)))
    intervals = {}
    for prefix, groups, statistic in families:
        # the pooled figures resample each source's units within it: the split's mix of sources is fixed
        ci = metrics.bootstrap_ci(groups.to_numpy(), statistic, n_resamples, seed,
                                  strata=sources if prefix == "classification" else None)
        point = None  # the figures themselves, computed only when an interval came out degenerate
        for name, bounds in ci.items():
            if name in WILSON_METRICS and degenerate(bounds):
                point = point or statistic(np.ones(len(groups)))
                if point.get(name) in (0.0, 1.0):
                    # no error at all (or no success): every resample agrees, and a zero-width interval would read
                    # as certainty from a few patients (and pass promotion.use_lower_bound as such)
                    called = pd.Series(probability >= cuts, index=test.slices.index)
                    bounds = metrics.wilson_interval(point[name], _units_counted(name, groups, test.slices["label"],
                                                                                 called))
            intervals[f"{prefix}.{name}"] = bounds
    return intervals


def degenerate(bounds) -> bool:
    """Whether an interval has no width: every resample gave the same figure (to rounding: the AUCs' came out
    [0.9999999999999999, 1.0]), which says nothing of the uncertainty of a few patients' figure."""
    return bounds is not None and all(map(np.isfinite, bounds)) and bounds[1] - bounds[0] <= DEGENERATE_WIDTH


DEGENERATE_WIDTH = 1e-9


def _units_counted(name: str, groups: pd.Series, labels: pd.Series, called: pd.Series) -> int:
    """How many resampled units a proportion is taken over: those with a tumour input (sensitivity), with a
    tumour-free one (specificity), with an input called tumour (precision), all (accuracy). `groups` is indexed as
    the slices it covers; `called`: each slice's decision."""
    within = {"sensitivity": labels == 1, "specificity": labels == 0, "precision": called}.get(name)
    return int(groups.nunique() if within is None else groups[within.loc[groups.index]].nunique())


def _only(statistic, names: tuple[str, ...]):
    """`statistic` reduced to the values `names`."""
    return lambda weights: {name: value for name, value in statistic(weights).items() if name in names}


def _means_of(scores: pd.DataFrame, columns: tuple[str, ...]):
    return metrics.weighted_mean_statistic({name: scores[name].to_numpy(dtype=float) for name in columns})

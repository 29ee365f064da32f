"""Metric functions of the evaluate step: classification at a threshold, segmentation overlap and distance,
calibration, and the patient-level bootstrap. Numpy in, plain floats / arrays out; no I/O.

Conventions (documented here because they decide what a number means):
- A slice is called positive when its tumour probability is >= the threshold (the same rule as sklearn's
  `roc_curve`), and a pixel when its probability is >= the mask threshold: `MASK_THRESHOLD` (0.5) unless the
  caller passes another (evaluate passes `evaluate.mask_threshold`, by default the cut chosen on validation).
- Empty ground truth and empty prediction: Dice = IoU = 1 and HD95 = 0 (a correct "no tumour"); exactly one of
  them empty: Dice = IoU = 0 and HD95 = the image diagonal in mm, the largest distance possible in the image,
  so an empty prediction of a real tumour is never NaN or infinite and is never rewarded.
- A metric that is undefined on the data (ROC-AUC with one class only) is NaN here; the report writes it as null.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from statistics import NormalDist
from typing import Callable, Literal, Mapping

import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou
from scipy import stats
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score, roc_curve

from tasks.inference.predictor import MASK_THRESHOLD  # noqa: F401  (re-exported: the metrics' pixel rule)

CALIBRATION_BINS = 10
# The slice thickness of a shard written before shards recorded it (2-element spacing): BraTS's, whose volumes are
# resampled to 1 mm isotropic voxels. A volume re-stacked from every `stride`-th slice has stride x thickness between
# its planes.
SOURCE_SLICE_THICKNESS_MM = 1.0


# --- classification ---------------------------------------------------------------------------------------------


def choose_threshold(
    labels: np.ndarray,
    probabilities: np.ndarray,
    rule: Literal["fixed", "youden", "target_sensitivity"] = "youden",
    target_sensitivity: float = 0.9,
    fixed: float = 0.5,
) -> float:
    """Decision threshold from (validation) scores.

    fixed: `fixed`, whatever the scores.
    youden: maximises Youden's J = sensitivity + specificity - 1.
    target_sensitivity: the highest threshold whose sensitivity reaches the target, i.e. the best specificity
    that still meets it. With a single class the ROC is undefined and 0.5 is returned.
    """
    if rule == "fixed":
        return float(fixed)
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(labels, probabilities, drop_intermediate=False)
    if rule == "youden":
        best = int(np.argmax(tpr - fpr))  # first maximum = highest threshold among ties
    elif rule == "target_sensitivity":
        best = int(np.flatnonzero(tpr >= target_sensitivity - 1e-12)[0])
    else:
        raise ValueError(f"unknown threshold rule {rule!r}")
    # roc_curve's first threshold is +inf ("nothing positive"): the float32 just above 1, so that `p >= threshold`
    # stays false for a float32 sigmoid that saturated at exactly 1.0, compared in float32 or float64
    return float(min(thresholds[best], np.nextafter(np.float32(1.0), np.float32(2.0))))


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, sample_weight: np.ndarray | None = None,
    at: np.ndarray | None = None,
) -> dict:
    """Accuracy, sensitivity, specificity, precision, F1, ROC-AUC, PR-AUC and the confusion matrix
    [[tn, fp], [fn, tp]] at `threshold` (or, given `at`, each input at its own threshold:
    tasks.inference.predictor.decision_thresholds; `threshold` is then the one recorded). A ratio with nothing to
    count (the sensitivity of a split without tumour, the precision of a model that calls nothing) is NaN, null in
    metrics.json, as the bootstrap statistic and the per-source figures have it: a 0.0 there read as a measured
    miss. F1 = 2tp / (2tp + fp + fn) is 0 when tumours were all missed."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = (probabilities >= (threshold if at is None else at)).astype(int)
    (tn, fp), (fn, tp) = confusion_matrix(labels, predicted, labels=[0, 1], sample_weight=sample_weight)
    # ROC-AUC and PR-AUC are undefined with one class only (NaN here, null in metrics.json)
    auc, ap = np.nan, np.nan
    if len(np.unique(labels)) == 2:
        auc = float(roc_auc_score(labels, probabilities, sample_weight=sample_weight))
        ap = float(average_precision_score(labels, probabilities, sample_weight=sample_weight))
    return {
        "accuracy": _ratio_or_nan(tp + tn, tp + tn + fp + fn),
        "sensitivity": _ratio_or_nan(tp, tp + fn),
        "specificity": _ratio_or_nan(tn, tn + fp),
        "precision": _ratio_or_nan(tp, tp + fp),
        "f1": _ratio_or_nan(2 * tp, 2 * tp + fp + fn),
        "roc_auc": auc,
        "pr_auc": ap,
        "threshold": float(threshold),
        "confusion_matrix": [[int(round(tn)), int(round(fp))], [int(round(fn)), int(round(tp))]],
        "n": int(len(labels)),
    }


# Tumour slices grouped by how much of the slice is tumour (whole tumour, mm² in the slice plane): where a slice
# classifier loses tumours is at the top and bottom of a tumour, where its cross-section is small.
TUMOUR_AREA_BINS_MM2 = (0.0, 100.0, 500.0, 2000.0, float("inf"))


def subgroup_metrics(slices: pd.DataFrame, threshold: float | np.ndarray) -> dict[str, dict]:
    """Where the classifier is right and wrong, at `threshold` (one, or one per slice): per source (BraTS slices,
    Kaggle images) the counts, accuracy, sensitivity and specificity; per tumour-area bin of the BraTS tumour slices
    the share detected.

    `slices` needs label, probability, source and, for the area bins, tumour_area_mm2."""
    probability = slices["probability"].to_numpy()
    predicted = probability >= threshold
    labels = slices["label"].to_numpy().astype(bool)
    by_source = {}
    for source in sorted(slices["source"].unique()):
        at = (slices["source"] == source).to_numpy()
        positives, negatives = int(labels[at].sum()), int((~labels[at]).sum())
        # a source with no tumour has no sensitivity (and one with only tumours no specificity): NaN, null in
        # metrics.json, never a 0.0 that reads like a measured miss
        by_source[source] = {"n": int(at.sum()), "positives": positives,
                             "accuracy": _ratio_or_nan(int((predicted[at] == labels[at]).sum()), int(at.sum())),
                             "sensitivity": _ratio_or_nan(int((predicted[at] & labels[at]).sum()), positives),
                             "specificity": _ratio_or_nan(int((~predicted[at] & ~labels[at]).sum()), negatives),
                             # the source's own ranking: the pooled ROC-AUC mixes slices and photos scored two ways
                             "roc_auc": float(roc_auc_score(labels[at], probability[at]))
                             if positives and negatives else np.nan}
    by_area = {}
    if "tumour_area_mm2" in slices:
        area = slices["tumour_area_mm2"].to_numpy(dtype=float)
        tumour = labels & (slices["source"] == "brats").to_numpy()
        for low, high in zip(TUMOUR_AREA_BINS_MM2[:-1], TUMOUR_AREA_BINS_MM2[1:]):
            at = tumour & (area >= low) & (area < high)
            name = f"{low:g}_to_{high:g}_mm2" if np.isfinite(high) else f"over_{low:g}_mm2"
            share = _ratio_or_nan(int((predicted & at).sum()), at.sum())
            # Wilson over slices, which come a few dozen from each patient: a floor of the uncertainty, not all of it
            by_area[name] = {"n": int(at.sum()), "sensitivity": share,
                             "patients": int(slices.loc[at, "patient"].nunique()) if "patient" in slices else None,
                             "ci95_slices": wilson_interval(share, int(at.sum())) if at.any() else None}
    return {"classification_by_source": by_source, "sensitivity_by_tumour_area": by_area}


def _ratio_or_nan(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else np.nan


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, n_bins: int = CALIBRATION_BINS) -> float:
    """ECE with equal-width bins: sum over bins of (bin share) x |fraction positive - mean probability|."""
    labels, probabilities = np.asarray(labels, dtype=np.float64), np.asarray(probabilities, dtype=np.float64)
    if len(labels) == 0:
        return 0.0
    bins = np.minimum((probabilities * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        ece += in_bin.mean() * abs(labels[in_bin].mean() - probabilities[in_bin].mean())
    return float(ece)


# --- segmentation -----------------------------------------------------------------------------------------------


def segmentation_scores(predicted: np.ndarray, truth: np.ndarray, spacing: np.ndarray) -> dict[str, np.ndarray]:
    """Dice, IoU and HD95 (mm) of each item of a batch of binary masks, 2D (N, H, W) or 3D (N, D, H, W).

    `spacing` is the voxel size in mm along the spatial axes, (ndim,) for all items or (N, ndim) per item.
    MONAI computes the metrics; the empty-mask cases follow the module docstring.
    """
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"prediction {predicted.shape} and truth {truth.shape} differ in shape")
    n, spatial = predicted.shape[0], predicted.shape[1:]
    spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (n, len(spatial)))
    y_pred = torch.from_numpy(predicted[:, None].astype(np.float32))
    y = torch.from_numpy(truth[:, None].astype(np.float32))
    dice = compute_dice(y_pred, y, include_background=True, ignore_empty=False)[:, 0].numpy()
    iou = compute_iou(y_pred, y, include_background=True, ignore_empty=False)[:, 0].numpy()

    pred_empty = ~predicted.reshape(n, -1).any(axis=1)
    truth_empty = ~truth.reshape(n, -1).any(axis=1)
    diagonal = np.sqrt(((np.array(spatial) * spacing) ** 2).sum(axis=1))
    hd95 = np.where(pred_empty & truth_empty, 0.0, diagonal)
    both = np.flatnonzero(~pred_empty & ~truth_empty)
    if len(both):
        with warnings.catch_warnings():  # MONAI 1.6 warns about its own deprecated internal argument
            warnings.simplefilter("ignore", FutureWarning)
            distances = compute_hausdorff_distance(
                y_pred[both], y[both], include_background=True, percentile=95, spacing=spacing[both].tolist()
            )
        hd95[both] = distances[:, 0].numpy()
    return {"dice": dice.astype(np.float64), "iou": iou.astype(np.float64), "hd95": hd95.astype(np.float64)}


def pixel_spacing(shard_spacing: np.ndarray) -> tuple[float, float]:
    """(row, column) pixel size in mm of a slice. Shards store the (x, y) spacing of the display-oriented volume
    (tasks/data/orientation.py); the axial slice is rotated by 90° (tasks/data/preprocess.axial_slice), so rows run
    along y and columns along x."""
    x, y = (float(s) for s in shard_spacing[:2])
    return y, x


def slice_step(slice_index: np.ndarray) -> int:
    """The stride the slices were taken with, read from the data: the greatest common divisor of the gaps
    between their axial indices (slices dropped for lack of brain only leave gaps that are multiples of it)."""
    gaps = np.diff(np.unique(np.asarray(slice_index, dtype=np.int64)))
    return int(np.gcd.reduce(gaps)) if len(gaps) else 1


def stack_volume(masks: np.ndarray, slice_index: np.ndarray, stride: int) -> np.ndarray:
    """Re-stack (n, H, W) slices into a (D, H, W) volume ordered by `slice_index`, one plane every `stride` source
    slices; the planes of slices that the slice step dropped (too little brain) stay empty, so distances between
    the kept planes stay true."""
    position = stack_positions(slice_index, stride)
    volume = np.zeros((int(position.max()) + 1, *masks.shape[1:]), dtype=masks.dtype)
    volume[position] = masks
    return volume


def stack_positions(slice_index: np.ndarray, stride: int) -> np.ndarray:
    """The plane of each slice in the volume `stack_volume` builds (so a re-stacked volume can be read back per
    slice)."""
    slice_index = np.asarray(slice_index, dtype=np.int64)
    return np.rint((slice_index - slice_index.min()) / stride).astype(np.int64)


def volume_spacing(shard_spacing: np.ndarray, stride: int) -> tuple[float, float, float]:
    """(through-plane, row, column) voxel size in mm of a re-stacked volume: the kept slices lie `stride` source
    slices apart, each as thick as the shard records (1 mm for a shard that does not say)."""
    thickness = float(shard_spacing[2]) if len(shard_spacing) > 2 else SOURCE_SLICE_THICKNESS_MM
    return (stride * thickness, *pixel_spacing(shard_spacing))


# --- bootstrap ----------------------------------------------------------------------------------------------------


# A BCa bound is read at least this many resamples in from either end of the bootstrap distribution: further out it
# is Monte-Carlo noise (read at the 1st of 1,000 resamples, a 7-patient lower bound moved by 0.1 between seeds).
MIN_TAIL_RESAMPLES = 20
# `n_resamples` is raised until the widened tail holds MIN_TAIL_RESAMPLES x this many resamples: room for BCa's
# adjustment, which reads a skewed value's far tail further out still
TAIL_HEADROOM = 4
MAX_RESAMPLES = 20_000  # what the widened tails of very few patients may raise `n_resamples` to
# How every interval of evaluate is read (BCa, widened for few patients): `bootstrap_ci`'s default, which metrics.json
# states in `ci95_method`; "percentile" only for the comparison in bench/bench_intervals.py
INTERVAL_METHOD: Literal["bca", "percentile"] = "bca"


def bootstrap_ci(
    groups: np.ndarray,
    statistic: Callable[[np.ndarray], Mapping[str, float]],
    n_resamples: int,
    seed: int,
    level: float = 0.95,
    strata: np.ndarray | None = None,
    method: Literal["bca", "percentile"] = INTERVAL_METHOD,
) -> dict[str, list[float]]:
    """Bootstrap interval of each value `statistic` returns, resampling GROUPS (patients).

    `groups[i]` is the patient of item i. Each resample draws as many patients as there are, with replacement;
    `statistic` receives one weight per item (how often its patient was drawn, 0 when not drawn) so that it can
    evaluate weighted metrics without copying data. Resamples where a value is undefined (NaN) are skipped for
    that value. Same seed, same intervals. Fewer than two patients give no interval: resampling one patient always
    draws the same data, and its zero-width "interval" would read as certainty (and pass a lower-bound gate).

    `method="bca"` (evaluate's): the bias-corrected and accelerated interval (Efron 1987; the acceleration from the
    leave-one-patient-out jackknife, per stratum as scipy's multi-sample BCa takes it), read at tails widened for few
    patients as Hesterberg's expanded percentile interval does (`small_sample_tail`; with strata, at the
    Welch-Satterthwaite degrees of freedom of their jackknife variances). So that those tails hold resamples enough,
    `n_resamples` is raised until each widened tail holds TAIL_HEADROOM x MIN_TAIL_RESAMPLES of them (19,469 for 7
    patients), and a bound is never read further out than MIN_TAIL_RESAMPLES from either end. A test split of 7
    patients is where the plain percentile interval is narrowest: over 400 draws of 7 patients' skewed Dice it held
    the true mean 72.5 % of the time, this one 82.5 % (bench/bench_intervals.py; README, "Evaluation").
    `method="percentile"`: the plain percentile interval over `n_resamples`, for that comparison.

    `strata[i]` (optional) is the stratum of item i (its source): each resample then draws within each stratum as
    many of its patients as it has, since the test split's mix is fixed by design (7 BraTS patients and 36 photo
    groups always; pooled, a resample held anything from 0 to 18 BraTS patients, a variance the design does not have).
    """
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    if n_groups < 2:
        return {}
    rng = np.random.default_rng(seed)
    pools = [np.arange(n_groups)] if strata is None else _group_pools(codes, np.asarray(strata), n_groups)
    tail = (1 - level) / 2
    # a stratum of one patient is drawn whole every time: it adds no spread, to widen or to resample for
    if method == "bca" and (sizes := [len(pool) for pool in pools if len(pool) > 1]):
        needed = math.ceil(TAIL_HEADROOM * MIN_TAIL_RESAMPLES / max(small_sample_tail(tail, min(sizes)), 1e-12))
        n_resamples = max(n_resamples, min(needed, MAX_RESAMPLES))
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(n_resamples):
        drawn = np.zeros(n_groups, dtype=np.int64)
        for pool in pools:
            drawn += np.bincount(pool[rng.integers(0, len(pool), len(pool))], minlength=n_groups)
        for name, value in statistic(drawn[codes].astype(np.float64)).items():
            samples[name].append(value)
    if method == "percentile":
        return {name: bounds for name, values in samples.items()
                if (bounds := _read_at(np.asarray(values, dtype=np.float64), tail, 1 - tail))}
    estimate = statistic(np.ones(len(codes)))
    jackknife = [statistic((codes != group).astype(np.float64)) for group in range(n_groups)]
    intervals = {}
    for name, values in samples.items():
        leave_one_out = np.array([row.get(name, np.nan) for row in jackknife], dtype=np.float64)
        bounds = _bca_bounds(np.asarray(values, dtype=np.float64), estimate.get(name, np.nan),
                             [leave_one_out[pool] for pool in pools], tail)
        if bounds:
            intervals[name] = bounds
    return intervals


def small_sample_tail(tail: float, n: float) -> float:
    """The tail probability at which to read a bootstrap distribution of `n` patients (Hesterberg 2015, "expanded
    percentile interval"): its spread is the sample's divided by sqrt(n / (n - 1)), and the normal quantile should
    have been Student's t with n - 1 degrees of freedom. For 7 patients the 2.5 % tail becomes 0.4 %."""
    t = float(stats.t.ppf(tail, n - 1))
    return NormalDist().cdf(math.sqrt(n / (n - 1)) * t)


def _bca_bounds(values: np.ndarray, estimate: float, leave_one_out: list[np.ndarray],
                tail: float) -> list[float] | None:
    """The BCa interval of one value from its resamples, its estimate and its leave-one-patient-out values, one array
    per stratum.

    The bias correction z0 says where the estimate sits in its resamples; the acceleration a, from the jackknife's
    skewness, how the spread changes with the value: each stratum's jackknife about its own mean, as scipy's
    multi-sample BCa (Efron & Tibshirani eq. 15.36), so the gap between two sources is no skew. The tails are widened
    for the strata's Welch-Satterthwaite degrees of freedom. Where z0 cannot be had (an estimate outside every
    resample, or undefined), the widened tails are read as they are."""
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    numerator = denominator = 0.0
    spreads = []  # (jackknife variance, patients) of each stratum
    for jack in leave_one_out:
        jack = jack[np.isfinite(jack)]
        n = len(jack)
        if n < 2:
            continue
        u = (n - 1) * (jack.mean() - jack)
        numerator += float(np.sum(u**3)) / n**3
        denominator += float(np.sum(u**2)) / n**2
        spreads.append((float(np.sum(u**2)) / (n * (n - 1)), n))
    total = sum(v for v, _ in spreads)
    if total > 0:
        freedom = total**2 / sum(v**2 / (n - 1) for v, n in spreads if v > 0)
        tail = small_sample_tail(tail, freedom + 1)
    elif spreads:  # every patient left out gives the same value: the smallest stratum's widening
        tail = small_sample_tail(tail, min(n for _, n in spreads))
    # never further out than MIN_TAIL_RESAMPLES resamples from either end
    floor = min(MIN_TAIL_RESAMPLES / len(values), 0.5)
    below = (np.sum(values < estimate) + 0.5 * np.sum(values == estimate)) / len(values)
    if not math.isfinite(estimate) or not 0 < below < 1:
        return _read_at(values, max(tail, floor), min(1 - tail, 1 - floor))
    normal = NormalDist()
    z0 = normal.inv_cdf(below)
    acceleration = numerator / (6 * denominator**1.5) if denominator > 0 else 0.0

    def adjusted(q: float) -> float:
        if not 0 < q < 1:  # two patients: the widened upper tail rounds to 1 (and the lower one nearly to 0)
            return q
        z = z0 + normal.inv_cdf(q)
        scale = 1 - acceleration * z
        return normal.cdf(z0 + z / scale) if scale > 0 else float(q > 0.5)

    return _read_at(values, max(adjusted(tail), floor), min(adjusted(1 - tail), 1 - floor))


def _read_at(values: np.ndarray, low: float, high: float) -> list[float] | None:
    """The finite `values`' quantiles at probabilities `low` and `high` (numpy's linear interpolation)."""
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    return [float(np.quantile(values, min(max(low, 0.0), 1.0))), float(np.quantile(values, min(max(high, 0.0), 1.0)))]


def _group_pools(codes: np.ndarray, strata: np.ndarray, n_groups: int) -> list[np.ndarray]:
    """The group codes of each stratum, in a fixed order; a group spanning two strata is a caller's error."""
    stratum_of = {}
    for code, stratum in zip(codes.tolist(), strata.tolist()):
        if stratum_of.setdefault(code, stratum) != stratum:
            raise ValueError(f"a resampling group lies in two strata ({stratum_of[code]!r}, {stratum!r})")
    return [np.array(sorted(c for c in range(n_groups) if stratum_of[c] == stratum))
            for stratum in sorted(set(stratum_of.values()), key=str)]


def wilson_interval(proportion: float, n: int, level: float = 0.95) -> list[float]:
    """Wilson score interval of a proportion observed over `n` independent units: what a degenerate bootstrap (no
    error anywhere, so every resample gives 1.0) cannot say. With a test split's few patients as `n` it is honest
    about them (0 errors in 7 patients: [0.65, 1])."""
    z = float(NormalDist().inv_cdf(0.5 + level / 2))
    centre = (proportion + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(proportion * (1 - proportion) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, round(centre - half, 12)), min(1.0, round(centre + half, 12))]


def weighted_mean_statistic(values: Mapping[str, np.ndarray]) -> Callable[[np.ndarray], dict[str, float]]:
    """A bootstrap statistic: the weighted mean of each per-item value (e.g. per-slice Dice)."""

    def statistic(weights: np.ndarray) -> dict[str, float]:
        total = weights.sum()
        return {name: float(weights @ v / total) if total > 0 else np.nan for name, v in values.items()}

    return statistic


class WeightedClassification:
    """The classification metrics of fixed scores under many weightings: the bootstrap statistic.

    Equal to `classification_metrics(..., sample_weight=w)` (tests check it against scikit-learn), but the sort
    and the checks are done once instead of once per resample: scikit-learn's input validation made 1000
    resamples take tens of seconds. ROC-AUC is the trapezoidal area under the weighted ROC curve and PR-AUC the
    step-wise average precision, both over distinct scores as in scikit-learn, so ties are handled alike.
    """

    def __init__(self, labels: np.ndarray, probabilities: np.ndarray, threshold: float | np.ndarray):
        labels = np.asarray(labels).astype(bool)
        probabilities = np.asarray(probabilities, dtype=np.float64)
        predicted = probabilities >= threshold
        self.cells = np.stack([~labels & ~predicted, ~labels & predicted, labels & ~predicted, labels & predicted])
        self.order = np.argsort(-probabilities, kind="stable")
        ranked = probabilities[self.order]
        # last position of each distinct score, in descending order of score: the ROC / PR operating points
        self.ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
        self.ranked_labels = labels[self.order]

    def __call__(self, weights: np.ndarray) -> dict[str, float]:
        tn, fp, fn, tp = self.cells.astype(np.float64) @ weights
        # A ratio with nothing to count (no tumour drawn, nothing called positive) is undefined in that resample,
        # not 0: NaN, which bootstrap_ci skips, as it skips ROC-AUC there (0 would drag the lower bound down).
        sensitivity, precision = _ratio_or_nan(tp, tp + fn), _ratio_or_nan(tp, tp + fp)
        values = {
            "accuracy": _ratio_or_nan(tp + tn, tp + tn + fp + fn),
            "sensitivity": sensitivity,
            "specificity": _ratio_or_nan(tn, tn + fp),
            "precision": precision,
            "f1": _ratio_or_nan(2 * tp, 2 * tp + fp + fn),  # 0 when tumours were drawn and none was called
        }
        return values | self._ranking(weights[self.order])

    def _ranking(self, w: np.ndarray) -> dict[str, float]:
        tps = np.cumsum(w * self.ranked_labels)[self.ends]
        fps = np.cumsum(w * ~self.ranked_labels)[self.ends]
        if tps[-1] <= 0 or fps[-1] <= 0:
            return {"roc_auc": np.nan, "pr_auc": np.nan}  # one class only in this resample
        tpr, fpr = np.r_[0.0, tps / tps[-1]], np.r_[0.0, fps / fps[-1]]
        precision = np.divide(tps, tps + fps, out=np.zeros_like(tps), where=(tps + fps) > 0)
        return {"roc_auc": float(np.trapezoid(tpr, fpr)), "pr_auc": float(np.sum(np.diff(tpr) * precision))}


def classification_statistic(labels: np.ndarray, probabilities: np.ndarray,
                             threshold: float | np.ndarray) -> Callable:
    """A bootstrap statistic: the classification metrics at a FIXED threshold (chosen once on validation; or one
    per input, `tasks.inference.predictor.decision_thresholds`)."""
    return WeightedClassification(labels, probabilities, threshold)

"""Metric functions against cases small enough to compute by hand."""

import math

import numpy as np
import pytest

from tasks.evaluation import metrics


def masks(shape, *boxes):
    """A stack of binary masks; box i = (row0, row1, col0, col1) or None for an empty mask."""
    out = np.zeros((len(boxes), *shape), dtype=bool)
    for i, box in enumerate(boxes):
        if box is not None:
            r0, r1, c0, c1 = box
            out[i, r0:r1, c0:c1] = True
    return out


# --- classification -----------------------------------------------------------------------------------------------


def test_classification_metrics_by_hand():
    labels = np.array([1, 1, 1, 0, 0])
    probs = np.array([0.9, 0.6, 0.2, 0.7, 0.1])
    m = metrics.classification_metrics(labels, probs, threshold=0.5)
    # predicted [1, 1, 0, 1, 0]: tp=2, fn=1, fp=1, tn=1
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(4 / 6)  # 4 of the 6 (positive, negative) pairs are ranked right
    assert m["n"] == 5 and m["threshold"] == 0.5


def test_threshold_is_inclusive():
    m = metrics.classification_metrics(np.array([1, 0]), np.array([0.5, 0.49]), threshold=0.5)
    assert m["confusion_matrix"] == [[1, 0], [0, 1]]


def test_a_ratio_with_nothing_to_count_is_undefined_not_zero():
    """No tumour in the split: its sensitivity was written as 0.0, a measured miss of every tumour, and the gate
    said "sensitivity 0.000 < 0.800" while the same report's interval for it was null."""
    m = metrics.classification_metrics(np.zeros(4, dtype=int), np.array([0.1, 0.2, 0.7, 0.3]), threshold=0.5)
    assert math.isnan(m["sensitivity"]) and m["precision"] == 0.0 and m["f1"] == 0.0  # one slice called, wrongly
    assert m["specificity"] == pytest.approx(3 / 4)
    assert math.isnan(m["roc_auc"])
    calls_nothing = metrics.classification_metrics(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4]), 0.9)
    assert math.isnan(calls_nothing["precision"]) and calls_nothing["f1"] == 0.0 and calls_nothing["sensitivity"] == 0.0
    only_tumour = metrics.classification_metrics(np.ones(3, dtype=int), np.array([0.9, 0.8, 0.2]), 0.5)
    assert math.isnan(only_tumour["specificity"]) and only_tumour["sensitivity"] == pytest.approx(2 / 3)
    # the fast bootstrap statistic agrees with the point estimate on every one of these
    for labels, scores in ((np.zeros(4, int), np.array([0.1, 0.2, 0.7, 0.3])), (np.array([1, 1, 0, 0]), np.array(
            [0.1, 0.2, 0.3, 0.4]))):
        point = metrics.classification_metrics(labels, scores, 0.5)
        weighted = metrics.classification_statistic(labels, scores, 0.5)(np.ones(len(labels)))
        for key in ("sensitivity", "specificity", "precision", "f1"):
            assert point[key] == pytest.approx(weighted[key], nan_ok=True), key


def test_youden_threshold_separates_perfectly_separable_scores():
    labels, probs = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.6, 0.7])
    assert metrics.choose_threshold(labels, probs, "youden") == pytest.approx(0.6)


def test_target_sensitivity_takes_the_highest_threshold_reaching_it():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    probs = np.array([0.1, 0.3, 0.55, 0.2, 0.5, 0.8, 0.9])
    # sensitivity 3/4 is first reached at 0.5; 1.0 needs 0.2
    assert metrics.choose_threshold(labels, probs, "target_sensitivity", 0.75) == pytest.approx(0.5)
    assert metrics.choose_threshold(labels, probs, "target_sensitivity", 1.0) == pytest.approx(0.2)


def test_a_nothing_positive_threshold_keeps_a_probability_of_exactly_one_negative():
    """Anti-correlated scores: Youden's J is never positive, the rule picks roc_curve's "nothing positive" point,
    and a float32 sigmoid that saturated at exactly 1.0 must not be called positive by `p >= threshold`."""
    labels, probs = np.array([0, 0, 1, 1]), np.array([1.0, 0.9, 0.2, 0.1], dtype=np.float32)
    threshold = metrics.choose_threshold(labels, probs, "youden")
    assert threshold > 1.0 and not (probs >= threshold).any()


def test_threshold_with_one_class_falls_back_to_half():
    assert metrics.choose_threshold(np.ones(3), np.array([0.2, 0.4, 0.9])) == 0.5


def test_expected_calibration_error_by_hand():
    assert metrics.expected_calibration_error(np.array([0, 1, 0, 1]), np.full(4, 0.5)) == pytest.approx(0.0)
    assert metrics.expected_calibration_error(np.zeros(3), np.full(3, 0.95)) == pytest.approx(0.95)
    # two bins of two: |0.5 - 0.15| and |1 - 0.85|, each half of the data
    ece = metrics.expected_calibration_error(np.array([0, 1, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]), n_bins=2)
    assert ece == pytest.approx(0.5 * 0.35 + 0.5 * 0.15)


# --- segmentation -------------------------------------------------------------------------------------------------


def test_perfect_and_disjoint_predictions():
    truth = masks((16, 16), (2, 6, 2, 6), (2, 6, 2, 6))
    pred = masks((16, 16), (2, 6, 2, 6), (10, 14, 10, 14))
    s = metrics.segmentation_scores(pred, truth, (1.0, 1.0))
    assert s["dice"].tolist() == [1.0, 0.0]
    assert s["iou"].tolist() == [1.0, 0.0]
    assert s["hd95"][0] == 0.0 and s["hd95"][1] > 0


def test_partial_overlap_dice_and_iou_by_hand():
    truth = masks((8, 8), (0, 2, 0, 2))  # 4 pixels
    pred = masks((8, 8), (0, 2, 0, 1))  # 2 of them
    s = metrics.segmentation_scores(pred, truth, (1.0, 1.0))
    assert s["dice"][0] == pytest.approx(2 * 2 / (4 + 2))
    assert s["iou"][0] == pytest.approx(2 / 4)


def test_empty_masks_never_give_nan():
    truth = masks((10, 20), None, (1, 3, 1, 3), None)
    pred = masks((10, 20), None, None, (1, 3, 1, 3))
    s = metrics.segmentation_scores(pred, truth, (0.5, 2.0))
    for values in s.values():
        assert np.isfinite(values).all()
    assert s["dice"].tolist() == [1.0, 0.0, 0.0]  # both empty = correct "no tumour"
    assert s["hd95"][0] == 0.0
    diagonal_mm = math.hypot(10 * 0.5, 20 * 2.0)
    assert s["hd95"][1] == pytest.approx(diagonal_mm)  # missed tumour: the image diagonal, documented fallback
    assert s["hd95"][2] == pytest.approx(diagonal_mm)


def test_hd95_is_in_millimetres():
    truth = masks((16, 16), (4, 5, 4, 5))
    pred = masks((16, 16), (7, 8, 4, 5))  # one pixel, 3 rows away
    assert metrics.segmentation_scores(pred, truth, (1.0, 1.0))["hd95"][0] == pytest.approx(3.0)
    assert metrics.segmentation_scores(pred, truth, (2.0, 0.5))["hd95"][0] == pytest.approx(6.0)  # rows are 2 mm
    assert metrics.segmentation_scores(pred, truth, (0.5, 9.0))["hd95"][0] == pytest.approx(1.5)


def test_per_item_spacing():
    truth = masks((16, 16), (4, 5, 4, 5), (4, 5, 4, 5))
    pred = masks((16, 16), (4, 5, 8, 9), (4, 5, 8, 9))  # 4 columns away
    hd = metrics.segmentation_scores(pred, truth, np.array([[1.0, 1.0], [1.0, 0.25]]))["hd95"]
    assert hd.tolist() == pytest.approx([4.0, 1.0])


def test_shapes_must_match():
    with pytest.raises(ValueError, match=r"prediction \(1, 4, 4\) and truth \(1, 4, 5\) differ in shape"):
        metrics.segmentation_scores(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)), (1, 1))


def test_spacing_of_rotated_slices_and_strided_volumes():
    shard_spacing = np.array([0.8, 1.2, 2.5], dtype=np.float32)  # source (x, y) and the slice thickness
    assert metrics.pixel_spacing(shard_spacing) == pytest.approx((1.2, 0.8))  # rows run along y
    assert metrics.volume_spacing(shard_spacing, stride=3) == pytest.approx((7.5, 1.2, 0.8))
    legacy = np.array([0.8, 1.2], dtype=np.float32)  # a shard from before the thickness was recorded: 1 mm
    assert metrics.volume_spacing(legacy, stride=3) == pytest.approx((3.0, 1.2, 0.8))


def test_stack_volume_orders_slices_and_keeps_gaps():
    slices = np.stack([np.full((2, 2), v, dtype=np.uint8) for v in (3, 1, 4)])
    volume = metrics.stack_volume(slices, np.array([10, 4, 12]), stride=2)
    assert volume.shape == (5, 2, 2)  # planes 4, 6, 8, 10, 12
    assert volume[:, 0, 0].tolist() == [1, 0, 0, 3, 4]


def test_volume_hd95_uses_through_plane_spacing():
    truth = np.zeros((1, 5, 8, 8), dtype=bool)
    pred = np.zeros_like(truth)
    truth[0, 0, 3, 3] = pred[0, 2, 3, 3] = True  # two planes apart
    hd = metrics.segmentation_scores(pred, truth, metrics.volume_spacing(np.array([1.0, 1.0]), stride=2))["hd95"]
    assert hd[0] == pytest.approx(4.0)  # 2 planes x 2 mm


# --- bootstrap ----------------------------------------------------------------------------------------------------


def test_bootstrap_resamples_whole_patients():
    groups = np.array(["a"] * 5 + ["b"] * 2 + ["c"])
    seen = []

    def record(weights):
        seen.append(weights.copy())
        return {"x": 0.0}

    metrics.bootstrap_ci(groups, record, n_resamples=50, seed=0)
    for weights in seen[:50]:  # the resamples; then the estimate and the jackknife (below)
        for patient in "abc":
            assert len(set(weights[groups == patient])) == 1  # all slices of a patient drawn together
        assert sum(weights[groups == p][0] for p in "abc") == 3  # as many patients drawn as there are


def test_bootstrap_ci_contains_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(30), 4)
    values = rng.normal(0.7, 0.1, size=30).repeat(4) + rng.normal(0, 0.02, size=120)
    statistic = metrics.weighted_mean_statistic({"dice": values})
    first = metrics.bootstrap_ci(groups, statistic, n_resamples=300, seed=7)
    assert first == metrics.bootstrap_ci(groups, statistic, n_resamples=300, seed=7)
    assert first != metrics.bootstrap_ci(groups, statistic, n_resamples=300, seed=8)
    lo, hi = first["dice"]
    assert lo < values.mean() < hi
    assert hi - lo < 0.2


def test_the_bca_interval_reads_the_estimate_and_each_patient_left_out():
    groups = np.array(["a"] * 5 + ["b"] * 2 + ["c"])
    seen = []

    def record(weights):
        seen.append(weights.copy())
        return {"x": float(weights @ np.arange(8.0))}

    metrics.bootstrap_ci(groups, record, n_resamples=50, seed=0)
    # three patients: the widened tails (0.00000007) ask for more resamples than the cap, so the cap is drawn
    assert len(seen) == metrics.MAX_RESAMPLES + 1 + 3
    assert (seen[-4] == 1).all()  # the estimate: every patient once
    for weights, patient in zip(seen[-3:], "abc"):  # the jackknife: one patient left out at a time
        assert (weights[groups == patient] == 0).all() and (weights[groups != patient] == 1).all()


def test_few_patients_draw_resamples_enough_for_their_widened_tails_and_no_bound_lies_beyond_them():
    """7 patients: the widened 0.4 % tails held 4 resamples of 1,000, and BCa read a skewed mean's lower bound at the
    1st of them (it moved by 0.1 between bootstrap seeds). Now the tails hold TAIL_HEADROOM x MIN_TAIL_RESAMPLES, and a
    bound is never read further out than MIN_TAIL_RESAMPLES from the end."""
    dice = np.array([0.95, 0.94, 0.93, 0.92, 0.91, 0.90, 0.10])  # one failure
    drawn = []

    def statistic(weights):
        drawn.append(float(weights @ dice / weights.sum()))
        return {"dice": drawn[-1]}

    low, high = metrics.bootstrap_ci(np.arange(7), statistic, 1000, seed=3)["dice"]
    resamples = np.sort(drawn[: -1 - 7])  # without the estimate and the jackknife
    tail = metrics.small_sample_tail(0.025, 7)
    assert len(resamples) >= metrics.TAIL_HEADROOM * metrics.MIN_TAIL_RESAMPLES / tail
    assert resamples[metrics.MIN_TAIL_RESAMPLES - 2] <= low and high <= resamples[-metrics.MIN_TAIL_RESAMPLES + 1]
    assert low < dice.mean() < high


def test_the_bca_interval_agrees_with_scipys_on_independent_items():
    """One item per patient and many patients (no widening to speak of): the BCa interval of a skewed sample's mean
    is scipy's, up to the resampling noise of two different draws."""
    from scipy import stats

    values = np.random.default_rng(3).lognormal(0, 0.8, 200)
    ours = metrics.bootstrap_ci(np.arange(200), metrics.weighted_mean_statistic({"m": values}), 4000, seed=1)["m"]
    theirs = stats.bootstrap((values,), np.mean, n_resamples=4000, method="BCa", random_state=1).confidence_interval
    width = theirs.high - theirs.low
    assert ours[0] == pytest.approx(theirs.low, abs=0.06 * width)
    assert ours[1] == pytest.approx(theirs.high, abs=0.06 * width)
    # and BCa is not the percentile interval here: a right-skewed mean's interval moves right
    plain = metrics.bootstrap_ci(np.arange(200), metrics.weighted_mean_statistic({"m": values}), 4000, seed=1,
                                 method="percentile")["m"]
    assert ours[1] > plain[1] + 0.02 * width


def test_stratified_bca_takes_each_strata_jackknife_about_its_own_mean_as_scipy_does():
    """Two sources of different means, each symmetric: no skew, so no acceleration. Pooled about one mean, the
    jackknife read the gap between the sources as skew and moved the pooled accuracy's interval up."""
    from scipy import stats

    rng = np.random.default_rng(5)
    first, second = rng.normal(0.9, 0.05, 300), rng.normal(0.2, 0.05, 30)  # many enough that widening is negligible
    values = np.r_[first, second]
    strata = np.r_[["brats"] * 300, ["kaggle"] * 30]

    def pooled(x, y, axis=-1):
        return (np.sum(x, axis=axis) + np.sum(y, axis=axis)) / (x.shape[axis] + y.shape[axis])

    ours = metrics.bootstrap_ci(np.arange(330), metrics.weighted_mean_statistic({"m": values}), 4000, seed=2,
                                strata=strata)["m"]
    theirs = stats.bootstrap((first, second), pooled, n_resamples=4000, method="BCa",
                             random_state=2).confidence_interval
    width = theirs.high - theirs.low
    # pooled about one mean, the lower bound lay 4.7 % of the width below scipy's; now within the two draws' noise
    assert ours[0] == pytest.approx(theirs.low, abs=0.025 * width)
    assert ours[1] == pytest.approx(theirs.high, abs=0.025 * width)


def test_the_percentile_method_is_the_plain_percentile_of_the_resamples():
    groups = np.repeat(np.arange(9), 2)
    values = np.random.default_rng(0).uniform(0.5, 1, 18)
    collected = []

    def statistic(weights):
        value = float(weights @ values / weights.sum())
        collected.append(value)
        return {"dice": value}

    ci = metrics.bootstrap_ci(groups, statistic, 200, seed=5, method="percentile")
    assert ci["dice"] == [float(np.percentile(collected, 2.5)), float(np.percentile(collected, 97.5))]


def test_few_patients_widen_the_tails_as_students_t_does():
    # 7 patients: the 2.5 % tail is read at about 0.4 %; many patients: at 2.5 % again
    tails = [metrics.small_sample_tail(0.025, n) for n in (3, 7, 30, 1000)]
    assert tails == sorted(tails) and all(t < 0.025 for t in tails)  # wider the fewer the patients, never narrower
    assert tails[0] < 0.002 and 0.003 < tails[1] < 0.005  # 3 patients: far out; 7: about 0.4 %
    assert metrics.small_sample_tail(0.025, 10_000) == pytest.approx(0.025, abs=1e-4)
    values = np.random.default_rng(2).beta(20, 3, 7)
    statistic = metrics.weighted_mean_statistic({"dice": values})
    bca = metrics.bootstrap_ci(np.arange(7), statistic, 1000, seed=0)["dice"]
    plain = metrics.bootstrap_ci(np.arange(7), statistic, 1000, seed=0, method="percentile")["dice"]
    assert bca[1] - bca[0] > 1.15 * (plain[1] - plain[0])
    assert bca[0] < values.mean() < bca[1]


def test_widened_bca_intervals_hold_a_skewed_mean_more_often_at_seven_patients():
    """What bench/bench_intervals.py measures, smaller: 7 patients' skewed Dice (one in ten a failure), 120 trials
    on the same draws; over 400 trials the percentile interval held the mean 72.5 % of the time, the widened BCa
    82.5 %."""
    from bench.bench_intervals import coverage, skewed

    row = coverage(skewed, 7, trials=120, resamples=300, seed=0)
    assert row["bca"]["coverage"] >= row["percentile"]["coverage"] + 0.05
    assert row["bca"]["mean_width"] > row["percentile"]["mean_width"]


def test_one_patient_gives_no_interval_rather_than_a_certain_one():
    groups = np.array(["a"] * 6)  # one test patient: every resample is that patient again
    statistic = metrics.weighted_mean_statistic({"dice": np.linspace(0.6, 0.8, 6)})
    assert metrics.bootstrap_ci(groups, statistic, n_resamples=50, seed=0) == {}
    assert set(metrics.bootstrap_ci(np.array(["a"] * 3 + ["b"] * 3), statistic, n_resamples=50, seed=0)) == {"dice"}


def test_classification_bootstrap_skips_undefined_resamples():
    # two patients, one of each class: many resamples hold a single class, where ROC-AUC is undefined
    groups = np.array(["p", "p", "q", "q"])
    statistic = metrics.classification_statistic(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.2, 0.1]), 0.5)
    ci = metrics.bootstrap_ci(groups, statistic, n_resamples=100, seed=0)
    assert ci["roc_auc"] == [1.0, 1.0]
    assert all(np.isfinite(bounds).all() for bounds in ci.values())
    # a perfect classifier: a resample without tumour has no sensitivity (nor precision), not a sensitivity of 0
    assert ci["sensitivity"] == [1.0, 1.0] and ci["precision"] == [1.0, 1.0] and ci["specificity"] == [1.0, 1.0]


def test_a_classifier_that_calls_nothing_has_f1_zero_not_undefined():
    """Tumours present, none called: precision is undefined, but F1 = 2tp / (2tp + fp + fn) = 0 is not."""
    statistic = metrics.classification_statistic(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4]), 0.9)
    for weights in (np.ones(4), np.array([0.0, 2, 1, 1])):  # the point value, and a resample that drew one tumour twice
        values = statistic(weights)
        assert np.isnan(values["precision"]) and values["f1"] == 0.0 and values["sensitivity"] == 0.0
        assert values["specificity"] == 1.0


def test_slice_step_is_read_from_the_indices():
    assert metrics.slice_step(np.array([12, 4, 8, 20])) == 4  # 16 missing: a dropped slice leaves a gap
    assert metrics.slice_step(np.array([7])) == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_bootstrap_statistic_equals_sklearn_with_weights(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    probs = np.round(rng.uniform(0, 1, 60) * 0.5 + labels * 0.3, 1)  # rounding makes many ties
    weights = rng.integers(0, 4, 60).astype(float)  # bootstrap weights: 0 = patient not drawn
    fast = metrics.classification_statistic(labels, probs, threshold=0.5)(weights)
    drawn = weights > 0
    reference = metrics.classification_metrics(labels[drawn], probs[drawn], 0.5, sample_weight=weights[drawn])
    for name in ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc"):
        assert fast[name] == pytest.approx(reference[name], abs=1e-12), name


def test_the_fixed_rule_ignores_the_scores():
    labels, probs = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.6, 0.7])
    assert metrics.choose_threshold(labels, probs, "fixed", fixed=0.42) == 0.42
    assert metrics.choose_threshold(np.ones(3), np.array([0.2, 0.4, 0.9]), "fixed", fixed=0.42) == 0.42


def test_per_input_thresholds_agree_between_the_bootstrap_statistic_and_the_metrics():
    """Evaluation judges photos at another threshold than BraTS slices (tasks.inference.predictor.
    decision_thresholds): the bootstrap statistic must decide each input at its own, as classification_metrics does."""
    rng = np.random.default_rng(4)
    labels, probs = rng.integers(0, 2, 60), rng.uniform(0, 1, 60)
    at = np.where(np.arange(60) % 5 == 0, 0.8, 0.4)  # every fifth input at a threshold of its own
    weights = rng.integers(0, 3, 60).astype(float)
    fast = metrics.classification_statistic(labels, probs, at)(weights)
    reference = metrics.classification_metrics(labels, probs, 0.4, sample_weight=weights, at=at)
    for key in ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc"):
        assert fast[key] == pytest.approx(reference[key]), key
    # and the per-input thresholds decide: one threshold for all gives other counts
    assert reference["confusion_matrix"] != metrics.classification_metrics(labels, probs, 0.4,
                                                                           sample_weight=weights)["confusion_matrix"]
    assert reference["threshold"] == 0.4


def test_a_stratified_bootstrap_keeps_each_strata_count_of_patients():
    """The test split always holds its 7 BraTS patients and its photo groups: pooled, a resample held 0 to 18 of the
    patients, a variance the design does not have."""
    groups = np.array(["a", "a", "b", "c", "x", "y", "z", "w"])
    strata = np.array(["brats"] * 4 + ["kaggle"] * 4)
    seen = []

    def record(weights):
        seen.append(weights.copy())
        return {"x": float(weights[:4].sum())}

    metrics.bootstrap_ci(groups, record, n_resamples=100, seed=0, strata=strata)
    for weights in seen[:100]:
        assert weights[[0, 2, 3]].sum() == 3 and weights[4:].sum() == 4  # 3 BraTS patients, 4 photo groups each time
        assert weights[0] == weights[1]  # a patient's slices together, as before
    with pytest.raises(ValueError, match="lies in two strata"):
        metrics.bootstrap_ci(np.array(["a", "a", "b"]), record, 10, 0, strata=np.array(["brats", "kaggle", "brats"]))


def test_wilson_interval_is_honest_about_a_few_patients():
    assert metrics.wilson_interval(1.0, 7) == [pytest.approx(0.6457, abs=1e-4), 1.0]
    lo, hi = metrics.wilson_interval(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert metrics.wilson_interval(0.0, 43)[0] == 0.0

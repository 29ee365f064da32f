"""The photo threshold study (bench/bench_photo_threshold.py) scores each threshold on the photos it names."""

from __future__ import annotations

import numpy as np
import pytest

from bench.bench_photo_threshold import compare


def test_each_threshold_is_scored_on_the_test_photos_and_the_own_one_comes_from_validation():
    # validation photos separate perfectly at 0.8; at evaluate's 0.3 every test photo is called tumour
    scores = {"evaluate": 0.3, "lone": 0.6, "rule": {"rule": "youden", "target_sensitivity": 0.9, "fixed": 0.5},
              "val": {"labels": [0, 0, 0, 0, 1, 1, 1, 1], "p": [0.1, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95]},
              "val_mri": {"labels": [0, 0, 0, 1, 1, 1], "p": [0.2, 0.55, 0.58, 0.6, 0.9, 0.95]},
              "test": {"labels": [0, 0, 1, 1], "p": [0.4, 0.65, 0.85, 0.9]}}
    result = compare(scores)
    assert result["test_accuracy_evaluate"] == 0.5  # 0.4 and 0.65 called tumour
    assert result["test_accuracy_lone"] == 0.75  # 0.65 called tumour
    assert result["test_accuracy_own"] == 1.0  # Youden on the validation photos: 0.8
    assert result["val_roc_auc"] == 1.0 and result["test_roc_auc"] == 1.0
    # validation halves: the lone threshold misses 0.6 and 0.7 whichever half they fall in
    assert result["val_halves_accuracy_lone"] < 1.0
    assert result["val_photos"] == 8 and result["test_photos"] == 4
    # at 0.3 the tumour-free 0.5, 0.6 and 0.7 are called tumour, at 0.6 the 0.6 and 0.7
    assert result["val_accuracy_evaluate"] == 0.625 and result["val_accuracy_lone"] == 0.75
    # the own threshold is chosen on one half and scored on the other: on all of them it would score 1.0
    assert result["val_halves_accuracy_own"] < 1.0


def test_the_lone_threshold_is_chosen_again_without_the_photos_it_is_scored_on():
    """Scored on a half of the validation photos, the lone threshold must not have been chosen on them: it is chosen
    again on the MRI slices and the other half, as `own` is. The recorded one had seen every photo, so with the same
    rule on both sides it beat `own` on the halves by the leak alone."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    p = np.clip(labels * 0.2 + rng.random(40) * 0.8, 0, 1)
    from tasks.evaluation.metrics import choose_threshold

    recorded = choose_threshold(labels, p, "youden")  # fitted on every photo, as evaluate's lone value was
    scores = {"evaluate": 0.5, "lone": recorded, "rule": {"rule": "youden", "target_sensitivity": 0.9, "fixed": 0.5},
              "val": {"labels": labels.tolist(), "p": p.tolist()}, "val_mri": {"labels": [], "p": []},
              "test": {"labels": [0, 1], "p": [0.2, 0.8]}}
    result = compare(scores)
    # no MRI slices: lone and own are then the same rule on the same half, so they score the same
    assert result["val_halves_accuracy_lone"] == pytest.approx(result["val_halves_accuracy_own"])

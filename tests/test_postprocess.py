"""The clean-up of predicted volumes (tasks/inference/postprocess.py) and where it applies: volumes, not slices."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluation.scoring import score_patient
from tasks.inference.postprocess import cleaned_components, clean_regions, drop_stray_components


def _volume_with(*boxes: tuple[slice, slice, slice]) -> np.ndarray:
    volume = np.zeros((20, 32, 32), dtype=bool)
    for box in boxes:
        volume[box] = True
    return volume


LESION = (slice(5, 15), slice(5, 15), slice(5, 15))  # 1,000 voxels
SPECK = (slice(2, 3), slice(25, 27), slice(25, 27))  # 4 voxels, not touching the lesion
SECOND_LESION = (slice(5, 13), slice(20, 28), slice(20, 28))  # 512 voxels, half the first


def test_a_speck_far_smaller_than_the_lesion_is_dropped():
    cleaned = drop_stray_components(_volume_with(LESION, SPECK), min_share=0.3)
    np.testing.assert_array_equal(cleaned, _volume_with(LESION))


def test_a_second_lesion_of_comparable_size_is_kept():
    both = _volume_with(LESION, SECOND_LESION)
    np.testing.assert_array_equal(drop_stray_components(both, min_share=0.3), both)
    # ... and dropped once the share asks for more than it has (0.512 of the largest)
    np.testing.assert_array_equal(drop_stray_components(both, min_share=0.6), _volume_with(LESION))


def test_share_zero_and_empty_masks_pass_through():
    speckled = _volume_with(LESION, SPECK)
    np.testing.assert_array_equal(drop_stray_components(speckled, min_share=0), speckled)
    empty = np.zeros((4, 4, 4), dtype=bool)
    assert not drop_stray_components(empty).any()


def test_nested_regions_stay_inside_the_cleaned_whole_tumour():
    whole = _volume_with(LESION, SPECK)
    core = _volume_with(SPECK) | _volume_with((slice(8, 12), slice(8, 12), slice(8, 12)))
    cleaned = clean_regions(np.stack([whole, core]), min_share=0.3)
    np.testing.assert_array_equal(cleaned[0], _volume_with(LESION))
    assert not cleaned[1][SPECK].any() and cleaned[1][8:12, 8:12, 8:12].all()


def test_evaluation_cleans_the_volume_but_scores_each_slice_as_predicted():
    truth = _volume_with(LESION)
    predicted = _volume_with(LESION, SPECK)
    slice_index = np.arange(len(truth)) * 2  # stride 2, as the quick profile slices
    slices, volume = score_patient(predicted, truth, slice_index, np.array([1.0, 1.0, 1.0]))
    assert volume["dice"] == 1.0  # the speck is gone from the volume
    # the speck's slice has no tumour in the truth, so it is not a scored slice; the tumour slices are exact
    assert (slices["dice"] == 1.0).all() and len(slices) == 10
    speck_on_tumour_slice = _volume_with(LESION, (slice(6, 7), slice(25, 27), slice(25, 27)))
    slices, volume = score_patient(speck_on_tumour_slice, truth, slice_index, np.array([1.0, 1.0, 1.0]))
    assert volume["dice"] == 1.0
    assert slices["dice"].min() < 1.0  # the slice itself keeps its speck


# The seed-4 failure (docs/recipes.md, "Post-processing"): a false lesion larger than a small true tumour, on slices the
# classifier calls tumour-free. Size alone keeps the false one and drops the tumour.
SMALL_TUMOUR = (slice(2, 6), slice(5, 12), slice(5, 12))  # 196 voxels on planes 2-5
FALSE_LESION = (slice(10, 18), slice(16, 26), slice(16, 26))  # 800 voxels on planes 10-17


def _evidence(confirmed_planes: range, depth: int = 20, low: float = 0.2, high: float = 0.95) -> np.ndarray:
    evidence = np.full(depth, low)
    evidence[list(confirmed_planes)] = high
    return evidence


def test_a_larger_lesion_the_classifier_does_not_confirm_is_dropped_and_the_tumour_kept():
    both = _volume_with(SMALL_TUMOUR, FALSE_LESION)
    np.testing.assert_array_equal(drop_stray_components(both), _volume_with(FALSE_LESION))  # size alone: wrong one
    cleaned = drop_stray_components(both, slice_probability=_evidence(range(2, 6)))
    np.testing.assert_array_equal(cleaned, _volume_with(SMALL_TUMOUR))
    # the veto alone (no size rule) gives the same here; min_evidence 0 turns it off
    np.testing.assert_array_equal(drop_stray_components(both, 0, _evidence(range(2, 6))), _volume_with(SMALL_TUMOUR))
    np.testing.assert_array_equal(drop_stray_components(both, 0, _evidence(range(2, 6)), min_evidence=0), both)


def test_the_veto_reads_the_median_over_the_planes_a_component_spans():
    lesion = _volume_with(FALSE_LESION)  # planes 10-17: 8 planes
    mostly_confirmed = _evidence(range(10, 15))  # 5 of its 8 planes above 0.5
    np.testing.assert_array_equal(drop_stray_components(lesion, slice_probability=mostly_confirmed), lesion)
    barely = _evidence(range(10, 13))  # 3 of 8: one confident plane does not carry a component
    assert not drop_stray_components(lesion, slice_probability=barely).any()


def test_the_slice_axis_may_be_the_last_one():
    """The native grid is (X, Y, Z): the classifier's planes are along the last axis."""
    both = np.moveaxis(_volume_with(SMALL_TUMOUR, FALSE_LESION), 0, -1)
    cleaned = drop_stray_components(both, slice_probability=_evidence(range(2, 6)), slice_axis=2)
    np.testing.assert_array_equal(cleaned, np.moveaxis(_volume_with(SMALL_TUMOUR), 0, -1))
    regions = clean_regions(np.stack([both, both]), slice_probability=_evidence(range(2, 6)), slice_axis=2)
    np.testing.assert_array_equal(regions[1], cleaned)


def test_evaluation_volumes_use_the_classifier_as_evidence_on_the_restacked_planes():
    truth, predicted = _volume_with(SMALL_TUMOUR), _volume_with(SMALL_TUMOUR, FALSE_LESION)
    slice_index = np.arange(len(truth)) * 2 + 10  # stride 2, starting at source slice 10
    shuffled = np.random.default_rng(0).permutation(len(truth))  # shards need not be in slice order
    evidence = _evidence(range(2, 6))
    _, sized = score_patient(predicted[shuffled], truth[shuffled], slice_index[shuffled], np.ones(3))
    _, vetoed = score_patient(predicted[shuffled], truth[shuffled], slice_index[shuffled], np.ones(3),
                              evidence[shuffled])
    assert sized["dice"] == 0.0 and vetoed["dice"] == 1.0


def test_each_component_says_what_the_clean_up_did_with_it_and_why():
    """The reasons /v1/predict/volume reports: unconfirmed, too small beside the largest confirmed, kept; largest
    first, with the planes each spans (offset by the box around the mask) and its median evidence."""
    speck_on_false_lesion_planes = (slice(12, 13), slice(2, 4), slice(2, 4))  # 4 voxels on plane 12
    mask = _volume_with(SMALL_TUMOUR, FALSE_LESION, speck_on_false_lesion_planes, SPECK)
    cleaned, components = cleaned_components(mask, slice_probability=_evidence(range(2, 6)))
    np.testing.assert_array_equal(cleaned, drop_stray_components(mask, slice_probability=_evidence(range(2, 6))))
    assert [(c.voxels, c.planes, c.kept) for c in components] == [
        (800, (10, 17), False), (196, (2, 5), True), (4, (2, 2), False), (4, (12, 12), False)]
    assert components[0].evidence == 0.2 and components[0].reason.startswith("dropped: classifier evidence 0.20 < 0.70")
    assert components[1].reason == "kept: classifier evidence 0.95 >= 0.70"
    assert components[2].evidence == 0.95  # the speck on the tumour's plane is confirmed, then too small
    assert components[2].reason == "dropped: 4 voxels < 0.30 x 196 (the largest confirmed)"
    assert components[1].as_dict() == {"voxels": 196, "slices": [2, 5], "evidence": 0.95, "kept": True,
                                       "reason": "kept: classifier evidence 0.95 >= 0.70"}


def test_without_a_veto_components_have_no_evidence_and_the_size_rule_alone_decides():
    _, components = cleaned_components(_volume_with(LESION, SPECK), min_share=0.3)
    assert [(c.voxels, c.evidence, c.kept) for c in components] == [(1000, None, True), (4, None, False)]
    assert components[0].reason == "kept"
    # no rule at all: every component listed, every one kept; an empty mask has none
    _, components = cleaned_components(_volume_with(LESION, SPECK), min_share=0)
    assert [c.kept for c in components] == [True, True]
    assert cleaned_components(np.zeros((4, 4, 4), dtype=bool))[1] == ()


def test_a_dropped_component_leaves_the_fused_score_with_its_fringe_under_the_cut():
    """A slice whose only lesion the clean-up dropped was still called tumour by a pixel just under the mask cut at the
    lesion's edge: (0.52 + 0.73) / 2 = 0.63 over a 0.60 threshold, with no mask on it (a review, 2026-12-06). The
    fringe connected to a dropped component goes with it; a kept component's fringe and a faint spot apart from
    any component stay."""
    from tasks.inference.postprocess import scores_after_cleanup
    from tasks.inference.predictor import Prediction

    z, size, cut = 4, 12, 0.75
    probability = np.full((z, 1, size, size), 0.05, np.float32)
    probability[1, 0, 2:5, 2:5] = 0.9  # a lesion the clean-up dropped (slice 1)...
    probability[1, 0, 5, 3] = 0.73  # ... and its fringe under the cut
    probability[1, 0, 10, 10] = 0.6  # a faint spot of its own, touching nothing
    probability[2, 0, 6:9, 6:9] = 0.95  # a kept lesion (slice 2) with its fringe
    probability[2, 0, 9, 7] = 0.74
    kept = np.zeros((z, 1, size, size), bool)
    kept[2, 0, 6:9, 6:9] = True
    prediction = Prediction(classifier_probability=np.full(z, 0.52, np.float32), region_probability=probability,
                            slice_score="fused")
    scores = scores_after_cleanup(prediction, kept, cut)
    assert scores[1] == pytest.approx((0.52 + 0.6) / 2)  # the dropped lesion's fringe gone; the lone spot stays
    assert scores[2] == pytest.approx((0.52 + 0.95) / 2)
    assert scores[0] == pytest.approx((0.52 + 0.05) / 2)


def test_a_dropped_speck_bridged_to_a_kept_lesion_leaves_the_lesions_edge_slices_their_scores():
    """A kept lesion whose edge slice holds only its fringe (0.70 under a 0.75 cut): that slice's score must not
    depend on whether a dropped speck happens to touch the lesion's soft edge (it flipped from 0.61 to 0.285, a
    review, 2026-12-06)."""
    from tasks.inference.postprocess import scores_after_cleanup
    from tasks.inference.predictor import Prediction

    z, size, cut = 5, 12, 0.75
    base = np.full((z, 1, size, size), 0.05, np.float32)
    base[1:3, 0, 3:7, 3:7] = 0.95  # the kept lesion, slices 1-2 ...
    base[3, 0, 3:7, 3:7] = 0.70  # ... and its edge slice, under the cut
    base[2, 0, 3:7, 9] = 0.9  # a speck the clean-up dropped
    kept = np.zeros((z, 1, size, size), bool)
    kept[1:3, 0, 3:7, 3:7] = True
    scores = {}
    for how in ("apart", "bridged"):
        probability = base.copy()
        if how == "bridged":
            probability[2, 0, 3:7, 7:9] = 0.45  # soft pixels joining the speck to the lesion
        prediction = Prediction(classifier_probability=np.full(z, 0.52, np.float32), region_probability=probability,
                                slice_score="fused")
        scores[how] = scores_after_cleanup(prediction, kept, cut)
    assert scores["apart"][3] == scores["bridged"][3] == pytest.approx((0.52 + 0.70) / 2)
    assert scores["apart"][2] == scores["bridged"][2] == pytest.approx((0.52 + 0.95) / 2)


@pytest.mark.parametrize("slice_index", [[0, 2, 1, 3], [0, 2, 3]], ids=["rows out of axial order", "a plane dropped"])
def test_a_dropped_lesions_fringe_is_found_in_the_head_not_in_the_shards_row_order(slice_index):
    """The fringe rule labels 3D components: evaluation stacked one patient's slices in the shard's row order, so a
    shard whose rows were not in axial order, or a plane the slice step dropped, joined a dropped lesion (z 0) with a
    faint spot two planes away (z 2) that touches nothing, and took that spot's score with it."""
    from tasks.evaluation.scoring import scores_in_volume
    from tasks.inference.predictor import Prediction

    slice_index = np.array(slice_index)
    size, cut, plane = 8, 0.75, {z: row for row, z in enumerate(slice_index)}
    probability = np.full((len(slice_index), 1, size, size), 0.05, np.float32)
    probability[plane[0], 0, 2:5, 2:5] = 0.9  # a lesion the clean-up dropped, on plane 0
    probability[plane[2], 0, 3, 3] = 0.6  # a faint spot of its own, two planes up, in line with the lesion
    prediction = Prediction(classifier_probability=np.full(len(slice_index), 0.5, np.float32),
                            region_probability=probability, slice_score="fused")
    cleaned = np.zeros((int(slice_index.max()) + 1, size, size), bool)  # everything dropped
    scores = scores_in_volume(prediction, np.arange(len(slice_index)), cleaned, slice_index, cut)
    assert scores[plane[2]] == pytest.approx((0.5 + 0.6) / 2)  # the spot's own score stays
    assert scores[plane[0]] == pytest.approx((0.5 + 0.05) / 2)  # the dropped lesion and its fringe go

"""The clean-up of predicted volumes (tasks/inference/postprocess.py) and where it applies: volumes, not slices."""

from __future__ import annotations

import numpy as np

from tasks.evaluation.scoring import score_patient
from tasks.inference.postprocess import clean_regions, drop_small_components


def _volume_with(*boxes: tuple[slice, slice, slice]) -> np.ndarray:
    volume = np.zeros((20, 32, 32), dtype=bool)
    for box in boxes:
        volume[box] = True
    return volume


LESION = (slice(5, 15), slice(5, 15), slice(5, 15))  # 1,000 voxels
SPECK = (slice(2, 3), slice(25, 27), slice(25, 27))  # 4 voxels, not touching the lesion
SECOND_LESION = (slice(5, 13), slice(20, 28), slice(20, 28))  # 512 voxels, half the first


def test_a_speck_far_smaller_than_the_lesion_is_dropped():
    cleaned = drop_small_components(_volume_with(LESION, SPECK), min_share=0.3)
    np.testing.assert_array_equal(cleaned, _volume_with(LESION))


def test_a_second_lesion_of_comparable_size_is_kept():
    both = _volume_with(LESION, SECOND_LESION)
    np.testing.assert_array_equal(drop_small_components(both, min_share=0.3), both)
    # ... and dropped once the share asks for more than it has (0.512 of the largest)
    np.testing.assert_array_equal(drop_small_components(both, min_share=0.6), _volume_with(LESION))


def test_share_zero_and_empty_masks_pass_through():
    speckled = _volume_with(LESION, SPECK)
    np.testing.assert_array_equal(drop_small_components(speckled, min_share=0), speckled)
    empty = np.zeros((4, 4, 4), dtype=bool)
    assert not drop_small_components(empty).any()


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

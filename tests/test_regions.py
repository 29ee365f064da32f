import numpy as np
import pytest

from tasks.data.regions import (UnknownLabels, detect_convention, labels_from_regions, regions_from_labels,
                                to_brats2020_labels)


def test_conventions_are_detected_and_mapped_to_2020():
    labels_2020 = np.array([[0, 1], [2, 4]])
    labels_2023 = np.array([[0, 1], [2, 3]])
    assert detect_convention(labels_2020) == "brats2020"
    assert detect_convention(labels_2023) == "brats2023"
    np.testing.assert_array_equal(to_brats2020_labels(labels_2023), labels_2020)
    np.testing.assert_array_equal(to_brats2020_labels(labels_2020), labels_2020)


@pytest.mark.parametrize("bad", [[0, 1, 5], [0, 3, 4], [0, 7]])
def test_an_unknown_label_set_is_rejected_with_the_labels_found(bad):
    with pytest.raises(UnknownLabels) as caught:
        to_brats2020_labels(np.array(bad))
    assert caught.value.found == sorted(bad)
    assert str(sorted(bad)) in str(caught.value)


def test_regions_are_nested_and_built_from_their_labels():
    labels = np.array([0, 1, 2, 4])
    wt, tc, et = regions_from_labels(labels)
    assert wt.tolist() == [False, True, True, True]
    assert tc.tolist() == [False, True, False, True]
    assert et.tolist() == [False, False, False, True]


def test_label_map_round_trips_through_regions():
    labels = np.random.default_rng(0).choice([0, 1, 2, 4], size=(7, 9)).astype(np.uint8)
    np.testing.assert_array_equal(labels_from_regions(regions_from_labels(labels)), labels)


def test_whole_tumour_alone_becomes_oedema_labels():
    wt = np.array([[True, False]])
    assert labels_from_regions(wt[None]).tolist() == [[2, 0]]


def test_label_set_counts_what_np_unique_finds_in_any_layout():
    from tasks.data.regions import label_set

    rng = np.random.default_rng(0)
    volume = np.asfortranarray(rng.choice([0, 1, 2, 4], size=(12, 10, 8)).astype(np.int64))  # nibabel's order
    assert label_set(volume) == {0, 1, 2, 4}
    assert label_set(volume[:, :, :1] * 0) == {0}
    # a wider range (counted), then what falls back to np.unique
    for odd in (np.array([0, 17, 300], dtype=np.uint16), np.array([-1, 0, 3]), np.array([0, 5000]),
                np.array([0.0, 2.0, 4.0])):
        assert label_set(odd) == {int(v) for v in np.unique(odd)}

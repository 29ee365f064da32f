"""The clean-up rule study (bench/bench_cleanup_rule.py): its rules do what their names say, and its tumour-free
volumes have no tumour."""

from __future__ import annotations

import numpy as np

from bench.bench_cleanup_rule import healthy_volumes, rules

TUMOUR = (slice(2, 8), slice(4, 10), slice(4, 10))  # (X, Y, Z): planes 4-9 along the slice axis (the last)
FALSE_LESION = (slice(14, 24), slice(14, 24), slice(12, 20))  # 800 voxels on planes 12-19; the tumour 216


def _mask(*boxes) -> np.ndarray:
    mask = np.zeros((28, 28, 20), dtype=bool)
    for box in boxes:
        mask[box] = True
    return mask


def _evidence(planes: range, value: float, low: float = 0.1) -> np.ndarray:
    evidence = np.full(20, low)
    evidence[list(planes)] = value
    return evidence


def test_a_lone_faint_tumour_is_deleted_by_the_shipped_veto_and_kept_by_a_floor():
    candidates, mask = rules(), _mask(TUMOUR)
    faint = _evidence(range(4, 10), 0.56)
    assert not candidates["median >= 0.7 (shipped)"](mask[None], faint).any()
    np.testing.assert_array_equal(candidates["median >= 0.7, else >= 0.5"](mask[None], faint), mask)
    assert not candidates["median >= 0.7, else >= 0.5"](mask[None], _evidence(range(4, 10), 0.45)).any()
    np.testing.assert_array_equal(
        candidates["median >= 0.7, else the size rule"](mask[None], _evidence(range(4, 10), 0.01)), mask)


def test_a_floor_never_keeps_a_lesion_beside_a_confirmed_tumour():
    evidence = _evidence(range(4, 10), 0.95)
    evidence[12:20] = 0.6
    both = _mask(TUMOUR, FALSE_LESION)
    for name in ("median >= 0.7 (shipped)", "median >= 0.7, else >= 0.5", "median >= 0.7, else the size rule"):
        np.testing.assert_array_equal(rules()[name](both[None], evidence), _mask(TUMOUR))
    # the size rule alone keeps the larger false lesion and drops the tumour (0.27 of its size)
    np.testing.assert_array_equal(rules()["size rule only"](both[None], evidence), _mask(FALSE_LESION))


def test_the_percentile_rules_read_the_upper_quarter_of_a_components_planes():
    mask = _mask(TUMOUR)
    evidence = _evidence(range(4, 10), 0.2)
    evidence[7:10] = 0.9  # half its planes confident: median 0.55, 75th percentile 0.9
    np.testing.assert_array_equal(rules()["p75 >= 0.8"](mask[None], evidence), mask)
    assert not rules()["median >= 0.7 (shipped)"](mask[None], evidence).any()
    one_confident_plane = _evidence(range(4, 10), 0.2)
    one_confident_plane[9] = 0.9  # its maximum is 0.9, its 75th percentile 0.2
    assert not rules()["p75 >= 0.8"](mask[None], one_confident_plane).any()


def test_the_voxel_weighted_veto_lets_a_tumours_body_outvote_its_thin_doubted_caps():
    mask = np.zeros((28, 28, 20), dtype=bool)
    mask[2:12, 4:14, 7:10] = True  # the body: 100 voxels on each of planes 7-9
    mask[6:8, 8:10, 3:7] = True  # thin caps: 4 voxels on each of planes 3-6 and 10-13
    mask[6:8, 8:10, 10:14] = True
    evidence = _evidence(range(3, 14), 0.3)
    evidence[7:10] = 0.95  # the classifier confirms the body's planes only: 3 of 11, median 0.3
    assert not rules()["median >= 0.7 (shipped)"](mask[None], evidence).any()
    np.testing.assert_array_equal(rules()["voxel-weighted median >= 0.7"](mask[None], evidence), mask)
    # a component as thick on its doubted planes as on its confirmed ones is still dropped
    slab = _mask((slice(2, 8), slice(4, 10), slice(3, 14)))
    assert not rules()["voxel-weighted median >= 0.7"](slab[None], evidence).any()


def test_the_core_rules_let_a_tumour_core_confirm_a_doubted_component():
    """Each rule gets every region mask, whole tumour first: the tumour core (the second) may vouch for a component
    the classifier doubts, by its voxel count or by its share of the component."""
    mask = _mask(TUMOUR)  # 216 voxels
    core = _mask((slice(3, 7), slice(5, 9), slice(5, 9)))  # 64 voxels inside it: 30 %
    doubted = _evidence(range(4, 10), 0.4)
    regions = np.stack([mask, core])
    candidates = rules()
    assert not candidates["median >= 0.7 (shipped)"](regions, doubted).any()
    np.testing.assert_array_equal(candidates["median >= 0.7 or TC >= 1"](regions, doubted), mask)
    assert not candidates["median >= 0.7 or TC >= 100"](regions, doubted).any()  # 64 core voxels
    np.testing.assert_array_equal(candidates["median >= 0.7 or TC share >= 0.2"](regions, doubted), mask)
    assert not candidates["median >= 0.7 or TC >= 1"](np.stack([mask, np.zeros_like(mask)]), doubted).any()  # no core
    assert not candidates["median >= 0.7 or TC >= 1"](mask[None], doubted).any()  # a whole-tumour-only model: none
    np.testing.assert_array_equal(candidates["median >= 0.7 or TC >= 1"](mask[None], _evidence(range(4, 10), 0.9)),
                                  mask)
    # the evidence floor: at 0.4 below it, at 0.55 above it, with >= 100 core voxels
    big_core = np.stack([mask, _mask((slice(3, 8), slice(5, 10), slice(5, 10)))])  # 125 core voxels
    assert not candidates["median >= 0.7 or (>= 0.5 and TC >= 100)"](big_core, doubted).any()
    np.testing.assert_array_equal(
        candidates["median >= 0.7 or (>= 0.5 and TC >= 100)"](big_core, _evidence(range(4, 10), 0.55)), mask)


def test_healthy_volumes_are_the_patients_without_their_tumour():
    from tasks.data.orientation import BRATS_AFFINE, Orientation
    from tasks.data.synthetic import synthesize_patient

    (volumes,) = healthy_volumes(1, data_seed=3)
    assert len(volumes) == 4 and {v.shape for v in volumes} == {volumes[0].shape}
    with_tumour, labels = synthesize_patient(3, 1)
    flair = Orientation.of(BRATS_AFFINE).display(with_tumour["flair"])
    assert labels.any()  # the same patient drawn with its tumour has one ...
    brain, healthy_brain = flair > 0, volumes[0] > 0
    overlap = 2 * (brain & healthy_brain).sum() / (brain.sum() + healthy_brain.sum())
    assert overlap > 0.98  # ... and the tumour-free one is the same brain (another patient's overlaps about 0.89) ...
    tumour = Orientation.of(BRATS_AFFINE).display(labels) > 0
    assert not np.array_equal(volumes[0][tumour], flair[tumour])  # ... without the tumour's intensities

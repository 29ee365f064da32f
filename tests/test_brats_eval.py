"""BraTS-style volume evaluation (tasks/evaluation/brats.py): the empty-region rule, an independent Dice/HD95 on
hand-made volumes, the organisers' package (brats-evaluation, in .venv-brats) agreeing to 1e-3, the raw-patient
path through volume inference, and metrics.json's region section."""

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import cdist

from tasks.data.preprocess import zscore_volume
from tasks.data.regions import regions_from_labels
from tasks.evaluation import brats
from tasks.evaluation.brats_reference import reference_python, reference_scores
from tasks.inference.predictor import TorchPredictor

REPO = Path(__file__).resolve().parents[1]


def hand_made_cases() -> dict[str, tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """(prediction, truth, spacing) label maps in the 2020 convention: overlaps, a missed lesion, empty regions."""
    shape = (28, 30, 16)
    truth = np.zeros(shape, np.uint8)
    truth[4:16, 5:17, 3:11] = 2
    truth[6:13, 7:14, 4:10] = 1
    truth[8:11, 9:12, 5:8] = 4
    truth[20:25, 21:27, 9:13] = 2  # a second lesion, oedema only
    shifted = np.zeros_like(truth)
    shifted[5:17, 5:18, 3:12] = 2
    shifted[6:12, 7:15, 4:10] = 1
    shifted[8:12, 9:11, 5:9] = 4
    no_et = np.where(shifted == 4, 1, shifted).astype(np.uint8)
    only_core = np.zeros_like(truth)
    only_core[6:13, 7:14, 4:10] = 1
    return {
        "shifted": (shifted, truth, (1.0, 1.0, 1.0)),
        "perfect": (truth.copy(), truth, (1.0, 1.0, 1.0)),
        "missed_et": (no_et, truth, (1.0, 1.0, 1.0)),  # ET truth present, prediction empty
        "spurious_et": (shifted, np.where(truth == 4, 1, truth).astype(np.uint8), (1.0, 1.0, 1.0)),
        "core_only": (only_core, only_core.copy(), (1.0, 1.0, 1.0)),  # ET empty in both
    }


def independent_hd95(predicted: np.ndarray, truth: np.ndarray, spacing) -> float:
    """Brute force: surface = mask voxels with a face neighbour outside the mask (or the array); all pairwise
    distances in mm; the 95th percentile of both directions' nearest distances pooled."""
    def surface(mask):
        padded = np.pad(mask, 1)
        inner = padded[1:-1, 1:-1, 1:-1].copy()
        for axis in range(3):
            for step in (1, -1):
                inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(mask & ~inner) * np.asarray(spacing)

    a, b = surface(predicted), surface(truth)
    distances = cdist(a, b)
    return float(np.percentile(np.r_[distances.min(axis=1), distances.min(axis=0)], 95))


def test_empty_region_rule():
    empty, full = np.zeros((8, 8, 4), bool), np.zeros((8, 8, 4), bool)
    full[2:5, 2:5, 1:3] = True
    assert brats.brats_dice(empty, empty) == 1.0 and brats.brats_hd95(empty, empty, (1, 1, 1)) == 0.0
    assert brats.brats_dice(full, empty) == 0.0 and brats.brats_hd95(full, empty, (1, 1, 1)) == 373.13
    assert brats.brats_dice(empty, full) == 0.0 and brats.brats_hd95(empty, full, (1, 1, 1)) == 373.13
    scores = brats.region_scores(hand_made_cases()["missed_et"][0], hand_made_cases()["missed_et"][1], (1, 1, 1))
    assert scores["et"] == {"dice": 0.0, "hd95": 373.13, "present": True}
    assert brats.region_scores(*hand_made_cases()["core_only"])["et"] == {"dice": 1.0, "hd95": 0.0, "present": False}


@pytest.mark.parametrize("case", ["shifted", "perfect", "missed_et", "spurious_et"])
def test_region_scores_match_an_independent_dice_and_hd95(case):
    predicted, truth, spacing = hand_made_cases()[case]
    if case == "shifted":
        spacing = (1.0, 1.5, 2.0)  # anisotropic voxels: distances in mm
    scores = brats.region_scores(predicted, truth, spacing)
    for i, region in enumerate(("wt", "tc", "et")):
        p, t = regions_from_labels(predicted)[i], regions_from_labels(truth)[i]
        if p.any() and t.any():
            assert scores[region]["dice"] == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum()), abs=1e-6)
            assert scores[region]["hd95"] == pytest.approx(independent_hd95(p, t, spacing), abs=1e-6)
    assert 0 < scores["wt"]["dice"] < 1 or case == "perfect"


def brats_env_python():
    python = reference_python(REPO / ".venv-brats")
    if python is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the cross-check: .venv-brats is missing (make brats-env)")
        pytest.skip(".venv-brats not created (make brats-env)")
    return python


def test_global_dice_and_hd95_agree_with_the_organisers_package(tmp_path):
    python = brats_env_python()
    cases = hand_made_cases()
    ours = {}
    for case, (predicted, truth, _) in cases.items():
        scored = {"label_map": predicted, "truth": truth, "spacing": (1.0, 1.0, 1.0)}
        brats.write_label_maps(tmp_path, case, scored)
        ours[case] = brats.region_scores(predicted, truth, (1.0, 1.0, 1.0))
    theirs = reference_scores(tmp_path, python)
    assert set(theirs) == set(cases)
    for case in cases:
        for region in ("wt", "tc", "et"):
            reference = theirs[case][region]
            if reference["dice"] is None:  # empty in both: the package says NaN, BraTS' rule says 1 and 0
                assert ours[case][region] == {"dice": 1.0, "hd95": 0.0, "present": False}
                continue
            assert ours[case][region]["dice"] == pytest.approx(reference["dice"], abs=1e-3), (case, region)
            assert ours[case][region]["hd95"] == pytest.approx(reference["hd95"], abs=1e-3), (case, region)
    # the multi-lesion case: lesion-wise Dice (BraTS' ranking since 2023) differs from the global one
    assert theirs["shifted"]["wt"]["lesion_dice"] != pytest.approx(theirs["shifted"]["wt"]["dice"], abs=1e-3)


class Bright(torch.nn.Module):
    """Pointwise stand-in model: three nested regions from channel 0's z-score (above each of `levels`)."""

    def __init__(self, levels):
        super().__init__()
        self.levels = levels

    def forward(self, x):
        seg = torch.cat([30.0 * (x[:, :1] - level) for level in self.levels], dim=1)
        return {"seg": seg, "cls": x[:, 0].amax(dim=(1, 2)) - 1.0}


def write_raw_patient(root, name, seg_labels, volume):
    folder = root / name
    folder.mkdir(parents=True)
    for part in ("flair", "t1", "t1ce", "t2"):
        nib.save(nib.Nifti1Image(volume, np.eye(4)), folder / f"{name}_{part}.nii.gz")
    nib.save(nib.Nifti1Image(seg_labels, np.eye(4)), folder / f"{name}_seg.nii.gz")


def test_score_patients_on_raw_volumes_2020_and_2023_conventions(tmp_path):
    truth = hand_made_cases()["shifted"][1]
    volume = np.where(np.ones(truth.shape, bool), 100.0, 0.0).astype(np.float32)
    volume[truth == 2], volume[truth == 1], volume[truth == 4] = 300.0, 500.0, 800.0
    write_raw_patient(tmp_path, "BraTS20_Training_001", truth, volume)
    write_raw_patient(tmp_path, "BraTS23_002", np.where(truth == 4, 3, truth).astype(np.uint8), volume)
    z = zscore_volume(volume)
    brain, oedema, core, et = (float(z[np.nonzero(truth == label)][0]) for label in (0, 2, 1, 4))
    levels = ((brain + oedema) / 2, (oedema + core) / 2, (core + et) / 2)
    scores = brats.score_patients(TorchPredictor(Bright(levels)), tmp_path, ["BraTS20_Training_001", "BraTS23_002",
                                                                       "kaggle_no_1"], ["flair"], 32)
    assert scores["patient"].tolist() == ["BraTS20_Training_001", "BraTS23_002"]  # the Kaggle image is skipped
    first, second = scores.drop(columns="patient").to_numpy(dtype=float)
    np.testing.assert_allclose(first, second)  # ET = 3 (2023) scores as ET = 4 (2020)
    assert {"wt_dice", "tc_dice", "et_dice", "wt_hd95", "uncertainty_auroc"} <= set(scores.columns)
    assert (scores[["wt_dice", "tc_dice", "et_dice"]] > 0.5).all().all()


def test_a_whole_tumour_models_errors_are_whole_tumour_errors(tmp_path):
    """A 1-region model labels all it finds 2: compared label by label with the truth, every correctly found
    necrosis or enhancing voxel (1, 4) counted as an error of its uncertainty figures."""
    truth = hand_made_cases()["shifted"][1]
    volume = np.where(np.ones(truth.shape, bool), 100.0, 0.0).astype(np.float32)
    volume[truth == 2], volume[truth == 1], volume[truth == 4] = 300.0, 500.0, 800.0
    write_raw_patient(tmp_path, "BraTS20_Training_001", truth, volume)
    z = zscore_volume(volume)
    brain, oedema = (float(z[np.nonzero(truth == label)][0]) for label in (0, 2))
    scored = brats.evaluate_patient(TorchPredictor(Bright([(brain + oedema) / 2])), tmp_path / "BraTS20_Training_001",
                                    ["flair"], 32)
    assert scored["prediction"].regions == ("wt",) and scored["regions"]["wt"]["dice"] > 0.9
    found = (scored["label_map"] > 0) & (scored["truth"] > 0)
    assert ((scored["truth"] != 2) & found).any()  # core voxels found, labelled 2 by a whole-tumour model
    wrong = (scored["label_map"] > 0) != (scored["truth"] > 0)
    brain_mask = np.ones(truth.shape, bool)
    assert scored["uncertainty"] == brats.uncertainty_on_errors(scored["prediction"].uncertainty, wrong, brain_mask)


def test_regions_report_shape_intervals_and_null_regions():
    scores = pd.DataFrame({"patient": ["a", "b", "c"], "wt_dice": [0.8, 0.9, 0.7], "wt_hd95": [3.0, 2.0, 5.0],
                           "wt_present": [True, True, True], "uncertainty_mean_on_errors": [0.5, 0.6, 0.4],
                           "uncertainty_mean_on_correct": [0.01, 0.02, 0.01], "uncertainty_auroc": [0.9, 0.8, np.nan]})
    section, intervals, uncertainty = brats.regions_report(scores, 200, seed=0)
    assert section["wt"] == {"dice": pytest.approx(0.8), "hd95": pytest.approx(10 / 3)}
    assert brats.regions_present(scores) == {"wt": 3, "tc": None, "et": None}
    assert brats.regions_lowest(scores) == {"wt": {"patient": "c", "dice": pytest.approx(0.7)}, "tc": None, "et": None}
    assert section["tc"] == {"dice": None, "hd95": None} and section["et"] == {"dice": None, "hd95": None}
    lo, hi = intervals["segmentation_regions.wt.dice"]
    assert lo <= 0.8 <= hi and lo >= 0.7 - 1e-9 and hi <= 0.9 + 1e-9
    assert uncertainty["auroc"] == pytest.approx(0.85)
    assert uncertainty["mean_on_errors"] > uncertainty["mean_on_correct"]


def test_a_region_present_in_fewer_than_two_patients_says_so_and_has_no_interval():
    """ET absent from two of three truths scores 1 (or 0) there by the BraTS rule: its mean and a [1, 1]-like
    interval read as a delineation measured, when one patient had the region at all."""
    scores = pd.DataFrame({"patient": ["a", "b", "c"], "wt_dice": [0.8, 0.9, 0.7], "wt_hd95": [3.0, 2.0, 5.0],
                           "wt_present": [True] * 3, "et_dice": [1.0, 1.0, 0.6], "et_hd95": [0.0, 0.0, 4.0],
                           "et_present": [False, False, True]})
    section, intervals, _ = brats.regions_report(scores, 100, seed=0)
    assert brats.regions_present(scores)["et"] == 1 and section["et"]["dice"] == pytest.approx(2.6 / 3)
    assert intervals["segmentation_regions.et.dice"] is None and intervals["segmentation_regions.et.hd95"] is None
    assert intervals["segmentation_regions.wt.dice"] is not None


def test_region_intervals_resample_a_subjects_timepoints_together():
    """Two timepoints of one BraTS 2023 subject are one person: a bootstrap over one person gives no interval, while
    two people give one."""
    scores = pd.DataFrame({"wt_dice": [0.8, 0.6], "wt_hd95": [3.0, 5.0]})
    one_subject = scores.assign(patient=["BraTS-GLI-00008-000", "BraTS-GLI-00008-001"])
    two_subjects = scores.assign(patient=["BraTS-GLI-00008-000", "BraTS-GLI-00009-000"])
    assert brats.regions_report(one_subject, 50, seed=0)[1]["segmentation_regions.wt.dice"] is None
    lo, hi = brats.regions_report(two_subjects, 50, seed=0)[1]["segmentation_regions.wt.dice"]
    assert lo < hi


def test_uncertainty_on_errors_auroc():
    uncertainty = np.array([0.9, 0.8, 0.1, 0.2, 0.05, 0.7])
    wrong = np.array([True, True, False, False, False, False])
    result = brats.uncertainty_on_errors(uncertainty, wrong, np.ones(6, bool))
    assert result["auroc"] == pytest.approx(1.0)
    assert result["mean_on_errors"] == pytest.approx(0.85) and result["mean_on_correct"] == pytest.approx(0.2625)


def test_hd95_on_the_cropped_box_equals_the_whole_volume_computation():
    """brats_hd95 crops to both masks' box before the distance transform: same figure as without, also for masks
    touching the volume's border (where the erosion must still see the edge as outside)."""
    rng = np.random.default_rng(11)
    for touching in (False, True):
        truth = np.zeros((40, 36, 30), dtype=bool)
        truth[12:25, 10:22, 8:20] = True
        predicted = np.roll(truth, 2, axis=0) & (rng.random(truth.shape) > 0.2)
        predicted[30:33, 3:5, 2:4] = True  # a stray blob far away
        if touching:
            truth[0:6, 0:5, 0:4] = True
        spacing = (1.0, 1.2, 2.0)
        whole = np.percentile(np.hstack((brats.surface_distances(predicted, truth, spacing),
                                         brats.surface_distances(truth, predicted, spacing))), 95)
        assert brats.brats_hd95(predicted, truth, spacing) == pytest.approx(whole, abs=1e-9)


def test_organisers_check_without_its_environment_stops_before_any_work(tmp_path, monkeypatch):
    """`evaluate.organisers_check: true` and no .venv-brats: one error naming the fix, before the checkpoint is even
    read (the checkpoint here does not exist), not a metrics.json that silently lacks the organisers' figures."""
    from tasks.config import EvaluateSettings
    from tasks.errors import SliceWiseError
    from tasks.evaluation.report import EvaluationPaths, evaluate_checkpoint

    monkeypatch.chdir(tmp_path)  # .venv-brats is looked up in the project folder: none here
    where = EvaluationPaths(tmp_path, tmp_path, tmp_path / "metrics.json", tmp_path / "plots", {}, tmp_path / "brats")
    with pytest.raises(SliceWiseError, match="make brats-env") as caught:
        evaluate_checkpoint(tmp_path / "absent.pt", where, EvaluateSettings(organisers_check=True), seed=0)
    assert ".venv-brats" in str(caught.value)
    assert not (tmp_path / "metrics.json").exists()
    with pytest.raises(SliceWiseError, match="checkpoint not found"):  # switched off, the call goes on to the weights
        evaluate_checkpoint(tmp_path / "absent.pt", where, EvaluateSettings(organisers_check=False), seed=0)
    # review 2026-12-07: a venv whose install failed (python there, no packages) passed `tasks check` as ready
    (tmp_path / ".venv-brats" / "bin").mkdir(parents=True)
    (tmp_path / ".venv-brats" / "bin" / "python").write_text("")
    with pytest.raises(SliceWiseError, match="its install did not finish: run `make brats-env`"):
        evaluate_checkpoint(tmp_path / "absent.pt", where, EvaluateSettings(organisers_check=True), seed=0)
    (tmp_path / ".venv-brats" / ".installed-0123456789abcdef").write_text("")  # what make writes after pip succeeded
    assert reference_python() == Path(".venv-brats/bin/python")


def test_an_uncertainty_mean_over_fewer_patients_says_over_how_many():
    """A patient with no wrong voxel has no AUROC: the mean of the others was shown beside n_patients of all."""
    scores = pd.DataFrame({"patient": ["a", "b", "c"], "uncertainty_auroc": [0.9, np.nan, np.nan],
                           "uncertainty_mean_on_errors": [0.5, 0.6, 0.7], "uncertainty_mean_on_correct": [0.1] * 3})
    _, _, uncertainty = brats.regions_report(scores, n_resamples=10, seed=0)
    assert uncertainty["n_patients"] == 3 and uncertainty["auroc"] == pytest.approx(0.9)
    assert uncertainty["auroc_n_patients"] == 1
    assert "mean_on_errors_n_patients" not in uncertainty  # defined for every patient: n_patients says it


def test_the_organisers_means_say_how_many_patients_they_are_over(monkeypatch, tmp_path):
    """Review 2026-12-07: the package gives no figure where a region is empty in truth and prediction alike (our report
    counts the BraTS rule's 1 / 0), so its mean was over fewer patients than the `n_patients` beside it said."""
    from tasks.evaluation import brats

    monkeypatch.setattr(brats, "required_reference_python", lambda: Path("python"))
    monkeypatch.setattr(brats, "reference_scores", lambda folder, python: {
        "p1": {"et": {"dice": 0.5, "hd95": 10.0}}, "p2": {"et": {"dice": None, "hd95": None}}})
    report = brats.organisers_report(tmp_path, ["et"])
    assert report["n_patients"] == 2 and report["et"]["dice"] == 0.5
    assert report["et"]["n_scored"] == {"dice": 1, "hd95": 1}

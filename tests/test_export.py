"""`export`: a valid ONNX file with both heads and a dynamic batch, parity with torch, and no file on failure."""

import json
import os

import numpy as np
import onnx
import pytest
import torch

from tasks import export, paths
from tasks.data.splits import iter_test_slices
from tasks.errors import SliceWiseError
from tasks.inference.predictor import OnnxPredictor, TorchPredictor
from tasks.io import sha256_file
from tasks.release import onnx_checks, onnx_export

from tests.release_factory import make_release_project, write_metrics


@pytest.fixture
def project(tmp_path, tiny_settings, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return make_release_project(tmp_path, tiny_settings)


def test_parity_checks_at_most_its_share_of_a_large_test_split_evenly_spaced(project, tiny_settings):
    """export.parity_max_slices: a large test split is checked on that many slices, spread from its first slice to
    its last (not the first few patients), and export.json and the model card say how many of how many."""
    from tasks.data.splits import evenly_spaced, read_split, split_rows
    from tasks.release.model_card import _export_section

    rows = split_rows(paths.PROCESSED, read_split("test", paths.SPLITS))
    most = len(rows) // 2
    assert most > 1
    chosen = evenly_spaced(rows, most)
    positions = rows.index.get_indexer(chosen.index)
    assert len(chosen) == most and list(positions) == sorted(set(positions))
    assert positions[0] == 0 and positions[-1] == len(rows) - 1  # from the first slice to the last
    assert np.diff(positions).max() <= -(-(len(rows) - 1) // (most - 1))  # no gap wider than even spacing gives
    assert evenly_spaced(rows, 0) is rows and evenly_spaced(rows, len(rows)) is rows
    assert sum(map(len, iter_test_slices(paths.PROCESSED, paths.SPLITS, most))) == most

    settings = tiny_settings.model_copy(update={"export": tiny_settings.export.model_copy(
        update={"parity_max_slices": most})})
    export.main(settings)
    report = json.loads(paths.EXPORT_REPORT.read_text())
    assert report["parity"]["passed"] and report["parity"]["n_slices"] == most
    assert report["parity"]["test_slices"] == len(rows)
    assert f"on {most} (evenly spaced) of the {len(rows)} test slices" in _export_section(report)[0]


def test_export_writes_checked_model_metadata_and_report(project, tiny_settings):
    threads = torch.get_num_threads()  # 1 in tests (conftest): as a flow process has it, every core
    assert tiny_settings.export.latency_threads == 1 < os.cpu_count()  # so that the timing changes it
    torch.set_num_threads(os.cpu_count())
    try:
        result = export.main(tiny_settings)
        assert torch.get_num_threads() == os.cpu_count()  # the flow's next steps (in this process) keep every core
    finally:
        torch.set_num_threads(threads)

    onnx.checker.check_model(str(paths.ONNX_MODEL), full_check=True)
    report = json.loads(paths.EXPORT_REPORT.read_text())
    metadata = json.loads(paths.EXPORT_METADATA.read_text())
    parity = report["parity"]
    assert parity["passed"] and result["parity"]["passed"]
    assert metadata["checkpoint"]["sha256"] == sha256_file(paths.best_checkpoint("joint"))  # what register checks
    assert metadata["data_source"] == tiny_settings.data.source == "synthetic"  # a served file says so too
    embedded = json.loads(onnx.load(str(paths.ONNX_MODEL)).metadata_props[0].value)
    assert embedded["data_source"] == "synthetic"
    assert parity["max_abs_diff"] <= tiny_settings.export.parity_atol
    assert parity["decision_mismatches"] == 0 and parity["mask_dice"] >= tiny_settings.export.parity_min_dice
    test_slices = sum(len(batch) for batch in iter_test_slices(paths.PROCESSED, paths.SPLITS))
    assert parity["n_slices"] == parity["test_slices"] == test_slices > 0  # fewer than parity_max_slices: all
    for engine in ("onnxruntime", "torch_eager"):
        for batch in ("batch_1", "batch_8"):
            timing = report["latency"][engine][batch]
            assert 0 < timing["p50_ms"] <= timing["p95_ms"]
    assert report["speedup_p50"]["batch_1"] > 0
    size = tiny_settings.active.image_size
    channels = tiny_settings.in_channels
    assert metadata["input"] == {"name": "image", "shape": ["batch", channels, size, size], "dtype": "float32"}
    assert [o["name"] for o in metadata["outputs"]] == ["seg_logits", "cls_logits"]
    assert metadata["outputs"][0]["shape"] == ["batch", 3, size, size]
    evaluated = json.loads(paths.METRICS.read_text())
    assert metadata["threshold"] == evaluated["classification"]["threshold"]
    # metrics without a lone-slice threshold (written before it was recorded): the evaluated threshold serves both
    assert "lone_slice_value" not in evaluated.get("classification_threshold", {})
    assert metadata["lone_slice_threshold"] == metadata["threshold"]
    assert metadata["photos_judged_alone"] is False  # ... and every input was judged at it
    assert metadata["modalities"] == list(tiny_settings.modalities)
    assert metadata["regions"] == ["wt", "tc", "et"]
    assert set(parity["mask_dice_per_region"]) == {"wt", "tc", "et"}
    assert "tasks/data/preprocess.py" in metadata["preprocessing"] and "tasks/preprocess.py" not in metadata["preprocessing"]
    assert metadata["onnx_sha256"] == report["onnx"]["sha256"] == result["sha256"] == sha256_file(paths.ONNX_MODEL)
    embedded = {p.key: p.value for p in onnx.load(str(paths.ONNX_MODEL)).metadata_props}
    assert json.loads(embedded["slicewise"])["threshold"] == metadata["threshold"]
    assert json.loads(embedded["slicewise"])["regions"] == ["wt", "tc", "et"]
    assert [d.dim_value for d in onnx.load(str(paths.ONNX_MODEL)).graph.output[0].type.tensor_type.shape.dim][1] == 3
    assert not list(paths.EXPORTS.glob("*.tmp"))


def test_exported_model_has_dynamic_batch_and_matches_torch_predictor(project, tiny_settings):
    from tasks.inference.checkpoints import load_model

    export.main(tiny_settings)
    model, _ = load_model(paths.best_checkpoint("joint"))
    size = tiny_settings.active.image_size
    images = np.random.default_rng(3).normal(size=(5, tiny_settings.in_channels, size, size)).astype(np.float32)
    expected = TorchPredictor(model).predict(images)
    for batch_size in (1, 2, 5):  # 5 = 2 + 2 + 1: three different batch sizes through one session
        got = OnnxPredictor(paths.ONNX_MODEL, providers=["CPUExecutionProvider"], batch_size=batch_size).predict(images)
        np.testing.assert_allclose(got.tumour_probability, expected.tumour_probability, atol=1e-5)
        np.testing.assert_allclose(got.region_probability, expected.region_probability, atol=1e-5)
        assert got.region_probability.shape == (5, 3, size, size)


def test_parity_failure_fails_the_step_and_leaves_no_model(project, tiny_settings, monkeypatch):
    """A model whose ONNX differs from torch (weights perturbed while exporting) must not be exported."""
    real_export = onnx_export.export_onnx

    def export_perturbed(model, path, *args):
        import copy

        perturbed = copy.deepcopy(model)
        with torch.no_grad():
            for p in perturbed.parameters():
                p.add_(0.05 * torch.randn_like(p))
        real_export(perturbed, path, *args)

    paths.EXPORTS.mkdir()
    paths.ONNX_MODEL.write_bytes(b"an export of an earlier run")
    monkeypatch.setattr(onnx_export, "export_onnx", export_perturbed)
    with pytest.raises(SliceWiseError, match="parity failed"):
        export.main(tiny_settings)
    assert not paths.ONNX_MODEL.exists() and not paths.EXPORT_METADATA.exists()
    assert not list(paths.EXPORTS.glob("*.tmp"))
    assert json.loads(paths.EXPORT_REPORT.read_text())["parity"]["passed"] is False


def test_parity_counts_flipped_decisions(project, tiny_settings):
    """With the threshold exactly at a slice's probability, a tiny difference flips it; parity must notice."""
    from tasks.inference.checkpoints import load_model

    model, _ = load_model(paths.best_checkpoint("joint"))
    batch = next(iter_test_slices(paths.PROCESSED, paths.SPLITS))
    with torch.inference_mode():
        logits = model(torch.from_numpy(batch))["cls"].numpy()

    class ShiftedSession:  # onnxruntime stand-in whose classification logits are 1e-3 lower
        def run(self, names, feeds):
            with torch.inference_mode():
                out = model(torch.from_numpy(feeds["image"]))
            return [out["seg"].numpy(), out["cls"].numpy() - 1e-3]

    threshold = float(1 / (1 + np.exp(-logits[0])))
    parity = onnx_checks.check_parity(model, ShiftedSession(), iter([batch]), threshold, tiny_settings.export)
    assert not parity["passed"]
    assert parity["decision_mismatches"] >= 1 and parity["max_abs_diff_cls"] == pytest.approx(1e-3, rel=1e-2)


def test_parity_counts_a_decision_flipped_at_the_lone_slice_threshold(project, tiny_settings):
    """Serving judges a slice sent alone at lone_slice_threshold: parity compared decisions at `threshold` only, so
    a flip there passed as "0 decision mismatches"."""
    from tasks.inference.checkpoints import load_model

    model, _ = load_model(paths.best_checkpoint("joint"))
    batch = next(iter_test_slices(paths.PROCESSED, paths.SPLITS))
    with torch.inference_mode():
        logits = model(torch.from_numpy(batch))["cls"].numpy()

    class ShiftedSession:
        def run(self, names, feeds):
            with torch.inference_mode():
                out = model(torch.from_numpy(feeds["image"]))
            return [out["seg"].numpy(), out["cls"].numpy() - 1e-4]

    at_a_slice = float(1 / (1 + np.exp(-logits[0])))
    strict = tiny_settings.export.model_copy(update={"parity_atol": 1e-5, "parity_min_dice": 0.0})  # 1e-4 is too far
    alone = onnx_checks.check_parity(model, ShiftedSession(), iter([batch]), 1e-9, strict,
                                     lone_slice_threshold=at_a_slice)
    assert alone["decision_mismatches"] >= 1 and not alone["passed"]
    assert onnx_checks.check_parity(model, ShiftedSession(), iter([batch]), 1e-9, strict)["decision_mismatches"] == 0


def test_parity_reports_a_decision_flipped_within_rounding_of_the_cut_as_a_tie(project, tiny_settings):
    """A slice whose score sits at the cut flips with any rounding: when the logits agree within their tolerance,
    the flip is a tie (reported) and the export passes; the same flip with logits beyond the tolerance fails."""
    from tasks.inference.checkpoints import load_model

    model, _ = load_model(paths.best_checkpoint("joint"))
    batch = next(iter_test_slices(paths.PROCESSED, paths.SPLITS))
    with torch.inference_mode():
        logits = model(torch.from_numpy(batch))["cls"].numpy()

    def session_lower_by(amount: float):
        class Session:  # onnxruntime stand-in whose classification logits are `amount` lower
            def run(self, names, feeds):
                with torch.inference_mode():
                    out = model(torch.from_numpy(feeds["image"]))
                return [out["seg"].numpy(), out["cls"].numpy() - amount]
        return Session()

    at_a_slice = float(1 / (1 + np.exp(-logits[0])))  # slice 0's torch score: exactly at the cut
    cfg = tiny_settings.export
    rounding = cfg.parity_atol / 2  # within the tolerance
    tie = onnx_checks.check_parity(model, session_lower_by(rounding), iter([batch]), at_a_slice, cfg)
    assert tie["decision_ties"] >= 1 and tie["decision_mismatches"] == 0 and tie["passed"]
    beyond = onnx_checks.check_parity(model, session_lower_by(20 * cfg.parity_atol), iter([batch]), at_a_slice, cfg)
    assert beyond["decision_mismatches"] >= 1 and beyond["decision_ties"] == 0 and not beyond["passed"]


def test_parity_fails_when_onnxruntime_answers_nan(project, tiny_settings):
    """NaN logits compare as "no difference" under max() and give empty masks and "no tumour" on both sides."""
    from tasks.inference.checkpoints import load_model

    model, _ = load_model(paths.best_checkpoint("joint"))
    batch = next(iter_test_slices(paths.PROCESSED, paths.SPLITS))

    class NanSession:
        def run(self, names, feeds):
            with torch.inference_mode():
                out = model(torch.from_numpy(feeds["image"]))
            return [np.full_like(out["seg"].numpy(), np.nan), np.full_like(out["cls"].numpy(), np.nan)]

    parity = onnx_checks.check_parity(model, NanSession(), iter([batch]), 0.5, tiny_settings.export)
    assert not parity["passed"] and parity["max_abs_diff"] == float("inf")


def test_parity_allows_a_difference_that_grows_with_the_logit_as_float32_rounding_does(project, tiny_settings):
    """The engines sum in other orders, so their float32 logits differ by a share of the logit's size (2e-5 of it
    failed a quick model's export at 1.2e-4 against atol 1e-4, every decision and mask equal); a difference beyond
    atol + rtol x |logit| still fails."""
    from tasks.inference.checkpoints import load_model

    model, _ = load_model(paths.best_checkpoint("joint"))
    batch = next(iter_test_slices(paths.PROCESSED, paths.SPLITS))

    class LargeLogits(torch.nn.Module):  # the torch side, with logits as large as a trained model's (|logit| ~ 10+)
        def forward(self, x):
            return {name: 10 * (out + torch.sign(out)) for name, out in model(x).items()}

    def session_off_by(share: float):
        class Session:  # onnxruntime stand-in: every logit off by `share` of itself
            def run(self, names, feeds):
                with torch.inference_mode():
                    out = LargeLogits()(torch.from_numpy(feeds["image"]))
                return [out["seg"].numpy() * (1 + share), out["cls"].numpy() * (1 + share)]
        return Session()

    rounding, beyond = 3e-5, 3e-4  # of each logit; rtol is 1e-4
    cfg = tiny_settings.export
    assert cfg.parity_rtol == 1e-4
    parity = onnx_checks.check_parity(LargeLogits(), session_off_by(rounding), iter([batch]), 1e-9, cfg)
    assert parity["max_abs_diff"] > cfg.parity_atol  # what the absolute limit alone failed
    assert parity["passed"] and 0.2 < parity["tolerance_used"] <= 1
    absolute_only = cfg.model_copy(update={"parity_rtol": 0.0})
    assert not onnx_checks.check_parity(LargeLogits(), session_off_by(rounding), iter([batch]), 1e-9,
                                        absolute_only)["passed"]
    too_far = onnx_checks.check_parity(LargeLogits(), session_off_by(beyond), iter([batch]), 1e-9, cfg)
    assert not too_far["passed"] and too_far["tolerance_used"] > 1 and too_far["decision_mismatches"] == 0


def test_parity_checks_every_region_channel_on_its_own(project, tiny_settings):
    """An ONNX model wrong on the enhancing-tumour channel alone fails parity, even though WT, TC and the pooled
    pixels of all three agree almost everywhere."""
    from tasks.inference.checkpoints import load_model

    model, _ = load_model(paths.best_checkpoint("joint"))
    batch = next(iter_test_slices(paths.PROCESSED, paths.SPLITS))

    class WrongEtSession:  # onnxruntime stand-in: ET says "tumour" on a few pixels where torch says none
        def run(self, names, feeds):
            with torch.inference_mode():
                out = model(torch.from_numpy(feeds["image"]))
            seg = out["seg"].numpy().copy()
            seg[:, 2] = -20.0
            seg[0, 2, :2, :2] = 20.0
            seg[:, :2] = np.where(np.abs(seg[:, :2]) < 1e-3, 1.0, seg[:, :2])  # no WT/TC pixel at the threshold
            return [seg, out["cls"].numpy()]

    class TorchEmptyEt(torch.nn.Module):  # the torch side: the same model with an empty ET channel
        def forward(self, x):
            out = model(x)
            return {"seg": torch.cat([out["seg"][:, :2], torch.full_like(out["seg"][:, 2:], -20.0)], 1),
                    "cls": out["cls"]}

    cfg = tiny_settings.export.model_copy(update={"parity_atol": 1e3})  # only the masks decide here
    parity = onnx_checks.check_parity(TorchEmptyEt(), WrongEtSession(), iter([batch]), 0.5, cfg)
    assert parity["mask_dice_per_region"]["et"] == 0.0 and parity["mask_dice_per_region"]["wt"] > 0.99
    assert parity["mask_dice"] == 0.0 and not parity["passed"]


def test_export_needs_metrics(project, tiny_settings):
    paths.METRICS.unlink()
    with pytest.raises(SliceWiseError, match="evaluate"):
        export.main(tiny_settings)
    write_metrics(project, 0.9, 0.9)
    assert export.main(tiny_settings)["parity"]["passed"]


def test_export_refuses_a_metrics_json_about_other_weights(project, tiny_settings):
    """Review 2026-12-07: an evaluate killed after train_joint ran again leaves the previous model's metrics.json (as it
    should), and export shipped the new weights with that evaluation's thresholds, without a word."""
    metrics_path = write_metrics(project, 0.9, 0.9)
    report = json.loads(metrics_path.read_text())
    for other in ({"checkpoint_sha256": "0" * 64}, {}):  # other weights, or none named
        metrics_path.write_text(json.dumps(report | {"model": other}))
        with pytest.raises(SliceWiseError, match="rerun the evaluate step") as refused:
            export.main(tiny_settings)
        assert "metrics.json" in str(refused.value) and not paths.ONNX_MODEL.exists()
    metrics_path.write_text(json.dumps(report))
    export.main(tiny_settings)
    assert json.loads(paths.EXPORT_METADATA.read_text())["checkpoint"]["sha256"] == report["model"]["checkpoint_sha256"]


def test_export_refuses_slices_of_another_size(project, tiny_settings):
    profile = tiny_settings.active.model_copy(update={"image_size": 64})
    bigger = tiny_settings.model_copy(update={"profiles": {tiny_settings.profile: profile}})
    with pytest.raises(SliceWiseError, match="rerun the slice step"):
        export.main(bigger)
    assert not paths.ONNX_MODEL.exists()


def mri_like_batch(n: int, size: int, seed: int = 0) -> np.ndarray:
    """z-scored-slice-like input: a constant background around a textured ellipse, like data/processed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    brain = (yy / 0.4) ** 2 + (xx / 0.33) ** 2 < 1
    images = np.full((n, 1, size, size), -0.8, dtype=np.float32)
    images[:, 0][:, brain] = rng.normal(0.6, 1.0, (n, int(brain.sum())))
    return images



def test_export_norms_keep_onnxruntime_close_to_float64(tmp_path):
    # A first-conv-like feature map of a z-scored 128² slice, offset from zero: onnxruntime's own
    # InstanceNormalization is ~7e-5 off here (the drift that reached 1e-3 on a trained model's logits).
    from models.unet import with_export_norms

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.InstanceNorm2d(8, affine=True)).eval()
    with torch.no_grad():
        model[0].bias.add_(4.0)
    images = torch.from_numpy(mri_like_batch(4, 128)) * 3
    path = tmp_path / "norm.onnx"
    torch.onnx.export(with_export_norms(model), (images,), str(path), opset_version=17, dynamo=False,
                      input_names=["image"])
    (onnx_out,) = onnx_checks.ort_session(path, threads=1).run(None, {"image": images.numpy()})
    with torch.no_grad():
        reference = model.double()(images.double()).numpy()
    assert np.abs(onnx_out - reference).max() <= 1e-5


def test_export_cuts_masks_at_the_threshold_evaluation_chose(project, tiny_settings):
    metrics_path = write_metrics(project, 0.9, 0.9)
    report = json.loads(metrics_path.read_text())
    metrics_path.write_text(json.dumps(report | {"segmentation_threshold": {"value": 1.5, "rule": "validation"}}))
    with pytest.raises(SliceWiseError, match=r"segmentation_threshold.value 1.5 is not in \(0, 1\)") as failure:
        export.main(tiny_settings)
    assert "metrics.json" in str(failure.value) and not paths.ONNX_MODEL.exists()

    metrics_path.write_text(json.dumps(report | {"segmentation_threshold": {"value": 0.7, "rule": "validation"}}))
    export.main(tiny_settings)
    metadata = json.loads(paths.EXPORT_METADATA.read_text())
    assert metadata["mask_threshold"] == 0.7  # what serving cuts its masks at (serve/served_model.py)
    assert json.loads(paths.EXPORT_REPORT.read_text())["parity"]["mask_threshold"] == 0.7


def test_export_hands_the_slice_score_evaluation_used_to_serving(project, tiny_settings):
    metrics_path = write_metrics(project, 0.9, 0.9)
    report = json.loads(metrics_path.read_text())
    metrics_path.write_text(json.dumps(report | {"classification_threshold": {"value": 0.5, "rule": "youden",
                                                                              "slice_score": "max"}}))
    with pytest.raises(SliceWiseError, match="classification_threshold.slice_score 'max' is not one of") as failure:
        export.main(tiny_settings)
    assert "metrics.json" in str(failure.value) and not paths.ONNX_MODEL.exists()

    metrics_path.write_text(json.dumps(report | {"classification_threshold": {"value": 0.5, "rule": "youden",
                                                                              "slice_score": "fused"}}))
    export.main(tiny_settings)
    assert json.loads(paths.EXPORT_METADATA.read_text())["slice_score"] == "fused"
    embedded = {p.key: p.value for p in onnx.load(str(paths.ONNX_MODEL)).metadata_props}
    assert json.loads(embedded["slicewise"])["slice_score"] == "fused"
    assert json.loads(paths.EXPORT_REPORT.read_text())["parity"]["slice_score"] == "fused"
    # model.json says in words what the threshold applies to, and the words are what the code computes: someone
    # scoring the file alone took sigmoid(cls_logits) for it (38 of 445 test slices decided otherwise)
    metadata = json.loads(paths.EXPORT_METADATA.read_text())
    assert "(sigmoid(cls_logits) + the largest sigmoid(seg_logits[:, 0]) over the slice's pixels) / 2" \
        in metadata["decision_rule"] and "lone_slice_threshold" in metadata["decision_rule"]
    import onnxruntime as ort

    from tasks.inference.predictor import OnnxPredictor

    images = np.random.default_rng(0).standard_normal((5, *metadata["input"]["shape"][1:])).astype(np.float32)
    seg, cls = ort.InferenceSession(str(paths.ONNX_MODEL)).run(["seg_logits", "cls_logits"], {"image": images})
    by_the_words = (1 / (1 + np.exp(-cls)) + (1 / (1 + np.exp(-seg[:, 0]))).max(axis=(1, 2))) / 2
    by_the_code = OnnxPredictor(paths.ONNX_MODEL, slice_score="fused").predict(images).tumour_probability
    np.testing.assert_allclose(by_the_words, by_the_code, rtol=1e-5)

    metrics_path.write_text(json.dumps(report))  # written before the slice score was recorded: the classifier's
    export.main(tiny_settings)
    assert json.loads(paths.EXPORT_METADATA.read_text())["slice_score"] == "classifier"
    assert json.loads(paths.EXPORT_METADATA.read_text())["decision_rule"].startswith(
        "tumour_probability = sigmoid(cls_logits);")


def test_parity_compares_fused_decisions(project, tiny_settings):
    """Under the fused score a segmentation logit that differs moves the decision too; parity must count it."""
    from tasks.inference.checkpoints import load_model
    from tasks.inference.predictor import sigmoid, slice_probability

    model, _ = load_model(paths.best_checkpoint("joint"))
    batch = next(iter_test_slices(paths.PROCESSED, paths.SPLITS))
    with torch.inference_mode():
        out = model(torch.from_numpy(batch))
    seg, cls = out["seg"].numpy(), out["cls"].numpy()

    class SegShiftedSession:  # onnxruntime stand-in whose segmentation logits are 0.05 lower, classifier exact
        def run(self, names, feeds):
            with torch.inference_mode():
                out = model(torch.from_numpy(feeds["image"]))
            return [out["seg"].numpy() - 0.05, out["cls"].numpy()]

    largest = sigmoid(seg)[:, 0].reshape(len(seg), -1).max(axis=1)
    at = int(np.argmin(np.abs(largest - 0.5)))  # a slice whose largest pixel is not saturated: the shift moves it
    assert 0.01 < largest[at] < 0.99
    threshold = float(slice_probability(sigmoid(cls).reshape(-1), sigmoid(seg), "fused")[at])
    fused = onnx_checks.check_parity(model, SegShiftedSession(), iter([batch]), threshold, tiny_settings.export,
                                     slice_score="fused")
    plain = onnx_checks.check_parity(model, SegShiftedSession(), iter([batch]), threshold, tiny_settings.export)
    assert fused["decision_mismatches"] >= 1 and plain["decision_mismatches"] == 0


def test_export_says_whether_evaluation_judged_the_photos_at_the_lone_slice_threshold(project, tiny_settings):
    """A champion is re-scored the way it was judged (tasks/release/champion.py): model.json carries it."""
    metrics_path = write_metrics(project, 0.9, 0.9)
    report = json.loads(metrics_path.read_text())
    rule = {"value": 0.5, "rule": "youden", "slice_score": "fused", "lone_slice_value": 0.7}
    metrics_path.write_text(json.dumps(report | {"classification_threshold": rule | {"photos_at": "lone_slice_value"}}))
    assert onnx_export.read_decisions(metrics_path).photos_alone is True
    export.main(tiny_settings)
    metadata = json.loads(paths.EXPORT_METADATA.read_text())
    assert metadata["photos_judged_alone"] is True and metadata["lone_slice_threshold"] == 0.7
    metrics_path.write_text(json.dumps(report | {"classification_threshold": rule}))  # before photos_at was recorded
    assert onnx_export.read_decisions(metrics_path).photos_alone is False

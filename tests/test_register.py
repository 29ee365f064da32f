"""`register` and the promotion gate against a real MLflow store (sqlite in tmp_path; one test on a real server)."""

import json
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks import export, paths, register
from tasks.data.splits import read_split
from tasks.config import PromotionSettings, load_settings
from tasks.errors import SliceWiseError
from tasks.inference.checkpoints import load_model
from tasks.io import sha256_file
from tasks.release.gate import ChampionScore, PromotionGate
from tasks.release.lineage import print_lineage
from tasks.release.registry import ModelRegistry
from tasks.tracking.store import fluent_store, tracking_uri

from tests.conftest import make_tiny_processed
from tests.release_factory import fresh_mlflow_store, make_release_project, tracked, write_checkpoint, write_metrics

CONTRACT_TAGS = ("promotion", "promotion_reason", "git_commit", "data_hash", "params_hash", "onnx_sha256",
                 "mlflow_run_id")


@pytest.fixture
def project(tmp_path, tiny_settings, monkeypatch):
    """A project root with data, a joint checkpoint, metrics.json, an export and an empty default MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    make_release_project(tmp_path, tiny_settings)
    fresh_mlflow_store(tmp_path)
    export.main(tracked(tiny_settings))
    return tmp_path


def client() -> MlflowClient:
    return MlflowClient(tracking_uri(), tracking_uri())


def alias_version(name: str, alias: str) -> str | None:
    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def onnx_outputs(path: Path, images: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": images})


def gate_metrics(accuracy=0.9, sensitivity=0.9, dice=0.8, volume_dice=0.85, lower=None, specificity=0.9) -> dict:
    """A metrics.json with these point estimates; `lower` sets every interval's lower bound."""
    metrics = {"classification": {"accuracy": accuracy, "sensitivity": sensitivity, "specificity": specificity},
               "segmentation": {"dice": dice}, "segmentation_volume": {"dice": volume_dice}}
    if lower is not None:
        metrics["ci95"] = {key: [lower, 1.0] for key in ("classification.accuracy", "classification.sensitivity",
                                                         "classification.specificity", "segmentation.dice",
                                                         "segmentation_volume.dice")}
    return metrics


def make_gate(**changes) -> PromotionGate:
    base = dict(min_accuracy=0.85, min_sensitivity=0.80, min_specificity=0.80, min_dice=0.70, min_volume_dice=0.70,
                max_accuracy_drop=0.02)
    return PromotionGate(PromotionSettings(**(base | changes)))


def test_gate_criteria_and_boundaries():
    gate = make_gate()
    assert gate.decide(gate_metrics(0.85, 0.80, 0.70, 0.70), True).promoted  # thresholds are inclusive
    low = gate.decide(gate_metrics(accuracy=0.84), True)
    assert not low.promoted and "accuracy 0.840 < 0.850 [FAIL]" in low.reason
    assert not gate.decide(gate_metrics(), False, "max diff 1e-2").promoted
    assert not gate.decide(gate_metrics(accuracy=None), True).promoted
    champion = ChampionScore("3", 0.92, "same test data")
    assert gate.decide(gate_metrics(accuracy=0.90), True, champion=champion).promoted  # within 0.02
    worse = gate.decide(gate_metrics(accuracy=0.89), True, champion=champion)
    assert not worse.promoted and "vs champion v3" in worse.reason
    assert not gate.decide(gate_metrics(0.99, 0.99), True, champion=ChampionScore("3", None, "recorded")).promoted


def test_a_rejection_never_reads_as_a_tie():
    """A seed-sweep model scored accuracy 0.84989 on the AMX Xeon: at three decimals its reason read "0.850 < 0.850".
    A failing comparison gets as many decimals as it takes to show the difference; a passing one keeps three."""
    gate = make_gate()
    assert "accuracy 0.8499 < 0.8500 [FAIL]" in gate.decide(gate_metrics(accuracy=0.8498896), True).reason
    assert "accuracy 0.850 >= 0.850 [pass]" in gate.decide(gate_metrics(accuracy=0.85), True).reason
    worse = make_gate(max_accuracy_drop=0.0).decide(gate_metrics(accuracy=0.91994), True,
                                                    champion=ChampionScore("3", 0.92, "same test data"))
    assert "accuracy vs champion v3 0.9199 < 0.9200 - 0.0000 (same test data) [FAIL]" in worse.reason


def test_gate_rejects_a_model_that_cannot_segment_even_when_classification_passes():
    """The model of the bug report: accuracy 0.919 and sensitivity 0.846 pass, Dice 0.027 must not."""
    decision = make_gate().decide(gate_metrics(0.919, 0.846, dice=0.027, volume_dice=0.041), True)
    assert not decision.promoted
    assert "slice Dice 0.027 < 0.700 [FAIL]" in decision.reason
    assert "volume Dice 0.041 < 0.700 [FAIL]" in decision.reason
    assert "accuracy 0.919 >= 0.850 [pass]" in decision.reason  # every criterion is reported, passed or not
    assert not make_gate().decide(gate_metrics(dice=float("nan")), True).promoted  # NaN is no evidence
    only_volume = make_gate().decide(gate_metrics(volume_dice=0.5), True)
    assert not only_volume.promoted and "volume Dice 0.500 < 0.700 [FAIL]" in only_volume.reason


def test_a_model_that_calls_every_slice_tumour_is_never_champion():
    """On a test split that is 90 % tumour slices, "tumour" for every slice scores accuracy 0.90 and sensitivity 1.0:
    both pass. Its specificity, 0.0, does not; and a missing specificity fails like any missing figure."""
    always = make_gate().decide(gate_metrics(accuracy=0.90, sensitivity=1.0, specificity=0.0), True)
    assert not always.promoted and "specificity 0.000 < 0.800 [FAIL]" in always.reason
    assert "accuracy 0.900 >= 0.850 [pass]" in always.reason and "sensitivity 1.000 >= 0.800 [pass]" in always.reason
    assert not make_gate().decide(gate_metrics(specificity=None), True).promoted
    assert make_gate().decide(gate_metrics(specificity=0.80), True).promoted  # inclusive, as every threshold


def test_gate_on_interval_lower_bounds():
    """use_lower_bound compares the 95 % interval's lower end: a good point estimate with a wide interval fails."""
    wide = gate_metrics(0.92, 0.86, 0.80, 0.86, lower=0.60)
    assert make_gate().decide(wide, True).promoted
    strict = make_gate(use_lower_bound=True).decide(wide, True)
    assert not strict.promoted and "accuracy (95 % CI lower bound) 0.600 < 0.850 [FAIL]" in strict.reason
    assert make_gate(use_lower_bound=True).decide(gate_metrics(lower=0.9), True).promoted
    assert not make_gate(use_lower_bound=True).decide(gate_metrics(), True).promoted  # no interval: missing


@pytest.mark.parametrize(("broken", "use_lower_bound"), [
    ({"classification": None}, False), ({"classification": {"accuracy": "0.9", "sensitivity": 0.9}}, False),
    ({"classification": {"accuracy": True, "sensitivity": 0.9}}, False),
    ({"segmentation": {"dice": float("inf")}}, False),
    ({"ci95": None}, True), ({"ci95": {"classification.accuracy": [None, 1.0]}}, True),
    ({"ci95": {"segmentation.dice": []}}, True),
])
def test_a_malformed_metrics_json_fails_its_criteria_and_never_crashes(broken, use_lower_bound):
    """A null section, a string, a bool or infinity is no evidence: rejected with a reason, not a crash."""
    decision = make_gate(use_lower_bound=use_lower_bound).decide(gate_metrics(lower=0.9) | broken, True)
    assert not decision.promoted and "missing" in decision.reason, (broken, decision.reason)


def test_good_model_becomes_champion_with_tags_card_and_artifacts(project, tiny_settings):
    settings = tracked(tiny_settings)
    result = register.main(settings)

    assert result["promoted"] and result["alias"] == "champion" and result["version"] == "1"
    assert json.loads(paths.REGISTER_REPORT.read_text()) == result
    assert result["metrics_sha256"] == sha256_file(paths.METRICS)  # which figures the decision is about
    version = client().get_model_version("slicewise", "1")
    assert set(CONTRACT_TAGS) <= set(version.tags)
    assert version.tags["promotion"] == "promoted"
    assert version.tags["onnx_sha256"] == json.loads(paths.EXPORT_REPORT.read_text())["onnx"]["sha256"]
    assert version.tags["mlflow_run_id"] == version.run_id == result["mlflow_run_id"]
    assert "accuracy 0.900 >= 0.850 [pass]" in version.tags["promotion_reason"]
    # what the threshold tag applies to; the factory's metrics.json records no rule: the classifier's, as exported
    exported = json.loads(paths.EXPORT_REPORT.read_text())["parity"]
    assert version.tags["slice_score"] == "classifier" == exported["slice_score"]
    # the whole card in the run's model_card.md; the description, MLflow's 5,000 characters of it, begins alike
    whole = Path(client().download_artifacts(result["mlflow_run_id"], "model_card.md")).read_text()
    for section in ("## Data", "## Test metrics", "95 % CI", "## Promotion gate", "## Limitations", "synthetic"):
        assert section in whole
    assert len(version.description) <= 5000 and "## Test metrics" in version.description
    test_patients = len(read_split("test", paths.SPLITS))
    assert f"| test | {test_patients} |" in version.description

    parent = client().get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and not paths.MLFLOW_PARENT_RUN.exists()
    steps = client().search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert [run.data.tags["step"] for run in steps] == ["export"]
    logged = {a.path for a in client().list_artifacts(parent.info.run_id)}
    assert {"model_card.md", "reports"} <= logged


def test_champion_loads_back_and_matches_the_exported_file(project, tiny_settings, tmp_path):
    settings = tracked(tiny_settings)
    register.main(settings)
    size = tiny_settings.active.image_size
    channels = tiny_settings.in_channels
    images = np.random.default_rng(0).normal(size=(3, channels, size, size)).astype(np.float32)
    expected_seg, expected_cls = onnx_outputs(paths.ONNX_MODEL, images)

    loaded = tmp_path / "loaded"  # without a dst_path MLflow downloads into a temporary folder it never removes
    loaded.mkdir()
    with fluent_store():  # models:/ URIs resolve against the project's store
        served = mlflow.pyfunc.load_model("models:/slicewise@champion", dst_path=str(loaded)).predict(images)
        info = mlflow.models.get_model_info("models:/slicewise@champion")
    np.testing.assert_array_equal(served["seg_logits"], expected_seg)
    np.testing.assert_array_equal(served["cls_logits"], expected_cls)
    assert info.metadata["threshold"] == 0.5 and info.signature.inputs.inputs[0].shape == (-1, channels, size, size)
    outputs = {spec.name: spec.shape for spec in info.signature.outputs.inputs}  # what the ONNX graph really gives
    assert outputs["seg_logits"] == (-1, expected_seg.shape[1], size, size) and outputs["cls_logits"] == (-1,)

    registry = ModelRegistry.existing(settings.tracking, settings.registry.model_name)  # the client serving uses
    fetched = registry.fetch("champion", tmp_path / "download")
    assert fetched.version == "1" and fetched.aliases == ["champion"] and fetched.tags["promotion"] == "promoted"
    assert fetched.metadata == json.loads(paths.EXPORT_METADATA.read_text())
    np.testing.assert_array_equal(onnx_outputs(fetched.onnx_path, images)[1], expected_cls)
    # The torch weights travel with the model (Grad-CAM at serving time) and rebuild the same network.
    model, _ = load_model(fetched.checkpoint_path)
    import torch

    with torch.inference_mode():
        np.testing.assert_allclose(model(torch.from_numpy(images))["cls"].numpy(), expected_cls, atol=1e-5)


def test_register_refuses_numbers_and_files_of_different_models(project, tiny_settings):
    """Steps run by hand out of order: the gate must not judge one model and ship another. Each mismatch names
    the step to rerun, and nothing is registered."""
    settings = tracked(tiny_settings)
    evaluated = json.loads(paths.METRICS.read_text())
    cases = {
        "retrained after evaluate and export": (lambda: write_checkpoint(project, settings, seed=5),
                                                "evaluated other weights than checkpoints/joint/best.pt; rerun the "
                                                "evaluate step"),
        "retrained and evaluated after export": (lambda: (write_checkpoint(project, settings, seed=5),
                                                          write_metrics(project, 0.9, 0.9)),
                                                 "exported from other weights than checkpoints/joint/best.pt; rerun "
                                                 "the export step"),
        "evaluated other weights": (lambda: paths.METRICS.write_text(json.dumps(
            evaluated | {"model": {"checkpoint_sha256": "0" * 64}})), "rerun the evaluate step"),
        "metrics.json that names no weights": (lambda: paths.METRICS.write_text(json.dumps(
            {k: v for k, v in evaluated.items() if k != "model"})), "names no evaluated weights"),
        "model.json that names no weights": (lambda: paths.EXPORT_METADATA.write_text(json.dumps(
            {k: v for k, v in json.loads(paths.EXPORT_METADATA.read_text()).items() if k != "checkpoint"})),
            "model.onnx names no source weights"),
        "evaluated again, other threshold": (lambda: write_metrics(project, 0.9, 0.9, threshold=0.7),
                                             "decision threshold in metrics.json (0.7)"),
        "evaluated again, other slice score": (lambda: paths.METRICS.write_text(json.dumps(evaluated | {
            "classification_threshold": {"value": 0.5, "rule": "youden", "slice_score": "fused"}})),
            "metrics.json scored slices by 'fused' (in volume: False; photos at the lone slice threshold: False), "
            "the exported model by 'classifier'"),
        "evaluated again, slices in their volume": (lambda: paths.METRICS.write_text(json.dumps(evaluated | {
            "classification_threshold": {"value": 0.5, "rule": "youden", "slice_score": "classifier",
                                         "slices_in_volume": True}})),
            "by 'classifier' (in volume: True; photos at the lone slice threshold: False), the exported model by "
            "'classifier' (in volume: False;"),
        "evaluated again, other lone slice threshold": (lambda: paths.METRICS.write_text(json.dumps(
            evaluated | {"classification_threshold": {"value": 0.5, "rule": "youden", "slice_score": "classifier",
                                                      "lone_slice_value": 0.9}})),
            "lone slice threshold in metrics.json (0.9)"),
        "evaluated again, photos at the lone slice threshold": (lambda: paths.METRICS.write_text(json.dumps(
            evaluated | {"classification_threshold": {"value": 0.5, "rule": "youden", "slice_score": "classifier",
                                                      "photos_at": "lone_slice_value"}})),
            "photos at the lone slice threshold: True), the exported model by 'classifier' (in volume: False; photos "
            "at the lone slice threshold: False)"),
    }
    for case, (change, words) in cases.items():
        make_release_project(project, tiny_settings)
        export.main(settings)
        change()
        with pytest.raises(SliceWiseError, match=re.escape(words)):
            register.main(settings)
    with pytest.raises(MlflowException):  # nothing was registered
        client().get_registered_model("slicewise")


def test_model_below_thresholds_becomes_challenger_and_champion_stays(project, tiny_settings):
    settings = tracked(tiny_settings)
    assert register.main(settings)["alias"] == "champion"
    write_metrics(project, accuracy=0.9, sensitivity=0.5)

    result = register.main(settings)
    assert not result["promoted"] and result["alias"] == "challenger" and result["version"] == "2"
    assert "sensitivity 0.500 < 0.800 [FAIL]" in result["reason"]
    assert alias_version("slicewise", "champion") == "1" and alias_version("slicewise", "challenger") == "2"
    assert client().get_model_version("slicewise", "2").tags["promotion"] == "rejected"


def test_a_metric_missing_from_metrics_json_is_a_challenger_not_a_crash(project, tiny_settings):
    settings = tracked(tiny_settings)
    path = write_metrics(project, accuracy=0.9, sensitivity=0.9)
    metrics = json.loads(path.read_text())
    del metrics["classification"]["accuracy"]
    path.write_text(json.dumps(metrics))
    result = register.main(settings)
    assert not result["promoted"] and result["alias"] == "challenger"
    assert "accuracy missing, needs >= 0.850 [FAIL]" in result["reason"]
    assert client().get_model_version("slicewise", result["version"]).tags["test_accuracy"] == "None"


def test_model_that_cannot_segment_is_never_champion_and_the_registry_says_why(project, tiny_settings):
    settings = tracked(tiny_settings)
    write_metrics(project, accuracy=0.919, sensitivity=0.846, dice=0.027, volume_dice=0.041)
    result = register.main(settings)
    assert not result["promoted"] and result["alias"] == "challenger"
    tags = client().get_model_version("slicewise", result["version"]).tags
    assert tags["promotion"] == "rejected" and "slice Dice 0.027 < 0.700 [FAIL]" in tags["promotion_reason"]
    assert "volume Dice 0.041 < 0.700 [FAIL]" in tags["promotion_reason"]
    assert tags["test_dice"] == "0.027"
    with pytest.raises(MlflowException):
        client().get_model_version_by_alias("slicewise", "champion")
    gate = {c["name"]: c for c in result["gate"]}
    assert not gate["slice Dice"]["passed"] and gate["accuracy"]["passed"]


@pytest.mark.parametrize("parity", [{"passed": False}, {"passed": "true"}, None], ids=["failed", "a-string", "missing"])
def test_a_model_whose_onnx_parity_did_not_pass_is_never_champion(project, tiny_settings, parity):
    """register reads export's verdict from reports/export.json: only a JSON `true` passes (a string is not a
    verdict, and a report without one proves nothing)."""
    settings = tracked(tiny_settings)
    report = json.loads(paths.EXPORT_REPORT.read_text())
    assert report["parity"]["passed"] is True  # as export wrote it: the only change is the one made here
    if parity is None:
        del report["parity"]
    else:
        report["parity"] |= parity
    paths.EXPORT_REPORT.write_text(json.dumps(report))
    result = register.main(settings)
    assert not result["promoted"] and result["alias"] == "challenger"
    assert re.search(r"onnx parity .*\[FAIL\]", result["reason"]), result["reason"]
    assert {c["name"]: c["passed"] for c in result["gate"]}["onnx parity"] is False
    if parity is None:
        assert "no parity result in the export report" in result["reason"]


def test_registering_the_same_model_again_creates_no_copy(project, tiny_settings):
    """A rerun of register on an unchanged model (its code changed, or a setting that leaves the verdict) finds the
    champion is this very release and creates no second version; other figures or another verdict still register
    one."""
    settings = tracked(tiny_settings)
    first = register.main(settings)
    again = register.main(settings)
    assert again["reused"] and again["version"] == first["version"] == alias_version("slicewise", "champion")
    assert [str(v.version) for v in client().search_model_versions("name = 'slicewise'")] == ["1"]
    assert json.loads(paths.REGISTER_REPORT.read_text()) == again
    assert again["mlflow_run_id"] == first["mlflow_run_id"]  # the run that holds the model, its card and reports
    # the project's own store, as every clone names it: reports/register.json is committed
    assert first["tracking_uri"] == again["tracking_uri"] == "sqlite:///mlflow.db" != tracking_uri()
    run = client().get_run(again["reused_by_run_id"])
    assert run.data.tags["reused_version"] == "true" and run.data.tags["registered_version"] == "1"
    assert run.info.status == "FINISHED"
    # a kept version's card in this code's words: a card with a false sentence was kept until another model came
    card = client().get_model_version("slicewise", "1").description
    assert "## Promotion gate" in card
    client().update_model_version("slicewise", "1", description="an earlier card, whose words are now false")
    client().log_text(first["mlflow_run_id"], "an earlier card", "model_card.md")
    rewritten = register.main(settings)
    assert rewritten["reused"] and rewritten["version"] == "1"
    assert client().get_model_version("slicewise", "1").description == card
    whole = client().download_artifacts(first["mlflow_run_id"], "model_card.md")  # where serving reads it whole
    assert Path(whole).read_text().startswith("# slicewise\n") and "## Promotion gate" in Path(whole).read_text()

    write_metrics(project, accuracy=0.92, sensitivity=0.9)  # the same ONNX file, other figures: the tags would lie
    refigured = register.main(settings)
    assert not refigured.get("reused") and refigured["version"] == "2" == alias_version("slicewise", "champion")
    assert "vs champion v1" in refigured["reason"]
    # rerun, it keeps the verdict as version 2 was judged, against version 1, not against itself
    kept = register.main(settings)
    assert kept["reused"] and kept["version"] == "2" and kept["reason"] == refigured["reason"]
    assert kept["gate"] == refigured["gate"] and "vs champion v2" not in kept["reason"]
    write_metrics(project, accuracy=0.5, sensitivity=0.9)  # now below the gate: a challenger
    rejected = register.main(settings)
    assert not rejected.get("reused") and rejected["version"] == "3" and rejected["alias"] == "challenger"
    assert alias_version("slicewise", "champion") == "2"
    again = register.main(settings)  # the same rejected release: the challenger already is it
    assert again["reused"] and again["version"] == "3" == alias_version("slicewise", "challenger")

    write_metrics(project, accuracy=0.92, sensitivity=0.9)  # version 2's figures again, but on another split
    test_list = paths.SPLITS / "test.txt"
    test_list.write_text(test_list.read_text() + "\n")
    resplit = register.main(settings)
    assert not resplit.get("reused") and resplit["version"] == "4" == alias_version("slicewise", "champion")

    # the same release and verdict under another gate (a stricter limit; a criterion added in code alike): its
    # reason and card must show the limits it was judged by, so it is a new version, and a rerun reuses that one
    stricter = settings.model_copy(update={"promotion": settings.promotion.model_copy(update={"min_dice": 0.75})})
    regated = register.main(stricter)
    assert not regated.get("reused") and regated["version"] == "5" == alias_version("slicewise", "champion")
    assert "slice Dice 0.810 >= 0.750 [pass]" in client().get_model_version("slicewise", "5").tags["promotion_reason"]
    assert register.main(stricter)["reused"]


def test_a_card_longer_than_mlflow_keeps_registers_and_is_served_whole(project, tiny_settings, monkeypatch):
    """A version's description is VARCHAR(5000) on PostgreSQL: a longer card failed the registration there (the
    quick model's was 6,100 characters). The description is cut to fit; the run's model_card.md, which serving shows,
    keeps the card whole."""
    from serve.model_source import RegistrySource
    from tasks.release import registration
    from tasks.release.versions import DESCRIPTION_LIMIT

    real = registration.render_model_card
    notes = "\n## Notes\n\n" + "words " * 1500
    monkeypatch.setattr(registration, "render_model_card", lambda **kwargs: real(**kwargs) + notes)
    settings = tracked(tiny_settings)
    result = register.main(settings)
    description = client().get_model_version("slicewise", result["version"]).description
    assert len(description) <= DESCRIPTION_LIMIT and "is `model_card.md` in this version's MLflow run" in description
    whole = Path(client().download_artifacts(result["mlflow_run_id"], "model_card.md")).read_text()
    assert whole.endswith(notes) and whole.startswith("# slicewise\n")
    source = RegistrySource(settings.registry, settings.tracking, project / "cache")
    shown = source.load(source.current_key()).card["model_card"]  # what the Model tab shows, titled as the description
    assert shown == whole.replace("# slicewise\n", f"# slicewise version {result['version']}\n", 1)


@pytest.mark.parametrize("loss", ["overwritten", "folder removed"])
def test_a_version_that_lost_its_files_is_not_kept_as_this_release(project, tiny_settings, loss):
    settings = tracked(tiny_settings)
    register.main(settings)
    stored = [p for p in project.rglob("model.onnx") if p.resolve() != paths.ONNX_MODEL.resolve()]
    assert stored
    for path in stored:  # the registered copy is damaged or gone (a pruned artifact store)
        if loss == "overwritten":
            path.write_bytes(b"not a model")
        else:
            shutil.rmtree(path.parent)
    result = register.main(settings)
    assert not result.get("reused") and result["version"] == "2" == alias_version("slicewise", "champion")


def test_worse_challenger_never_displaces_a_better_champion(project, tiny_settings):
    settings = tracked(tiny_settings)
    write_metrics(project, accuracy=0.95, sensitivity=0.9)
    assert register.main(settings)["promoted"]
    write_metrics(project, accuracy=0.90, sensitivity=0.9)  # above every threshold, but worse than the champion

    result = register.main(settings)
    assert not result["promoted"]
    assert "accuracy vs champion v1 0.900 < 0.950 - 0.000 (same test data) [FAIL]" in result["reason"]
    assert alias_version("slicewise", "champion") == "1"


def test_a_register_cut_off_after_moving_the_alias_keeps_its_verdict_when_run_again(project, tiny_settings,
                                                                                      monkeypatch):
    """Cut off after @champion moved to its new version, register ran again in the same pipeline run: it found that
    version as the champion, judged it against itself ("vs champion v2" on v2's card) while its tags named v1."""
    from tasks.tracking.mlflow_runs import MlflowTracker

    settings = tracked(tiny_settings)
    write_metrics(project, accuracy=0.90, sensitivity=0.9)
    assert register.main(settings)["version"] == "1"
    write_metrics(project, accuracy=0.95, sensitivity=0.9)
    real_set_tags = MlflowTracker.set_tags

    def cut_off_after_the_alias_moved(self, tags):
        if "registered_version" in tags:
            raise KeyboardInterrupt
        return real_set_tags(self, tags)

    with monkeypatch.context() as patch:
        patch.setattr(MlflowTracker, "set_tags", cut_off_after_the_alias_moved)
        with pytest.raises(KeyboardInterrupt):
            register.main(settings)
    assert alias_version("slicewise", "champion") == "2"
    again = register.main(settings)
    assert again["version"] == "2" and again["promoted"] and not again.get("reused")  # this run's new version
    assert "accuracy vs champion v1 0.950 >= 0.900" in again["reason"] and "champion v2" not in again["reason"]
    version = client().get_model_version("slicewise", "2")
    assert "champion v1" in version.description and "champion v2" not in version.description
    assert version.tags["promotion_reason"] == again["reason"]  # its tags and the answer agree
    assert [str(v.version) for v in client().search_model_versions("name='slicewise'")] == ["2", "1"]


def test_a_split_redone_by_hand_after_dvc_is_not_taken_for_the_champions_test_data(project, tiny_settings):
    """dvc.lock says what DVC last recorded: `python -m tasks split` run by hand afterwards leaves its hashes as they
    were. The files on disk decide too (the data_fingerprint tag), so the champion is re-scored, not compared by
    figures from another test split."""
    import yaml

    lock = {"schema": "2.0", "stages": {stage: {"cmd": "x", "outs": [{"path": out, "hash": "md5", "md5": md5}]}
                                        for stage, out, md5 in (("slice", "data/processed", "bbb222.dir"),
                                                                ("split", "data/splits", "ccc333.dir"))}}
    (project / "dvc.lock").write_text(yaml.safe_dump(lock))
    settings = tracked(tiny_settings)
    write_metrics(project, accuracy=0.95, sensitivity=0.9)
    assert register.main(settings)["promoted"]
    champion = client().get_model_version("slicewise", alias_version("slicewise", "champion"))
    assert champion.tags["splits_hash"] == "ccc333" and len(champion.tags["data_fingerprint"]) == 16

    test, train = read_split("test", paths.SPLITS), read_split("train", paths.SPLITS)
    (paths.SPLITS / "test.txt").write_text("\n".join([*test, train[0]]) + "\n")  # by hand: dvc.lock unchanged
    (paths.SPLITS / "train.txt").write_text("\n".join(train[1:]) + "\n")
    write_metrics(project, accuracy=0.90, sensitivity=0.9)
    result = register.main(settings)
    assert "(same test data)" not in result["reason"]
    assert "re-scored" in result["reason"] or "test patients new to the champion" in result["reason"], result["reason"]


def test_a_champion_whose_model_cannot_be_loaded_does_not_stop_a_new_registration(project, tiny_settings):
    """Re-scoring needs the champion's ONNX file; one onnxruntime refuses (InvalidProtobuf is no OSError or
    ValueError) once aborted register. Its recorded figures stand in, marked as from other test data."""
    settings = tracked(tiny_settings)
    write_metrics(project, accuracy=0.95, sensitivity=0.9)
    assert register.main(settings)["promoted"]
    for path in project.rglob("model.onnx"):
        if path.resolve() != paths.ONNX_MODEL.resolve():
            path.write_bytes(b"not a model")  # the registered copy, damaged in the store
    (paths.SPLITS / "test.txt").write_text((paths.SPLITS / "test.txt").read_text() + "\n")  # other test data
    write_metrics(project, accuracy=0.90, sensitivity=0.9)
    result = register.main(settings)
    assert result["registered"] and "(recorded on other test data)" in result["reason"], result["reason"]


def test_a_champion_without_a_readable_accuracy_tag_is_rescored_not_trusted(project, tiny_settings):
    """A hand-aliased or foreign champion whose test_accuracy tag is missing or not a number: re-scored on this test
    split, instead of blocking every challenger ("accuracy unknown") or crashing register."""
    settings = tracked(tiny_settings)
    # the tiny test brains lie within the default 6 pHash bits of each other: as copies of the champion's training
    # photos they would be left out of its re-scoring, which is another test's case
    settings = settings.model_copy(update={"split": settings.split.model_copy(update={"phash_max_distance": 4})})
    write_metrics(project, accuracy=0.9, sensitivity=0.9)
    assert register.main(settings)["promoted"]
    for i, value in enumerate(("None", "n/a", None)):
        if value is None:
            client().delete_model_version_tag("slicewise", alias_version("slicewise", "champion"), "test_accuracy")
        else:
            client().set_model_version_tag("slicewise", alias_version("slicewise", "champion"), "test_accuracy", value)
        # another release each time (the champion itself again is reused with its recorded verdict, judged by nobody)
        write_metrics(project, accuracy=0.9, sensitivity=0.89 - 0.01 * i)
        result = register.main(settings)
        assert "re-scored on this test split" in result["reason"] and "unknown" not in result["reason"], value


def test_champion_is_rescored_when_the_test_data_changed(project, tiny_settings):
    """A champion tested on other data is re-scored on this test split, not compared by its old number."""
    settings = tracked(tiny_settings)
    write_checkpoint(project, settings, cls_bias=-30.0)  # says "no tumour" to every slice
    write_metrics(project, accuracy=0.99, sensitivity=0.99)  # what it claims on its (old) test data
    export.main(settings)
    assert register.main(settings)["promoted"]

    data = make_tiny_processed(project, n_patients=3, slices=4, kaggle_per_class=4,
                               size=settings.active.image_size, seed=7)
    write_checkpoint(project, settings, seed=1)
    write_metrics(project, accuracy=0.9, sensitivity=0.9)
    export.main(settings)
    result = register.main(settings)

    test = data.manifest[data.manifest["patient"].isin(read_split("test", paths.SPLITS))]
    all_negative_accuracy = float((test["label"] == 0).mean())
    assert f"0.900 >= {all_negative_accuracy:.3f} - 0.000 (re-scored on this test split)" in result["reason"]
    assert result["promoted"] and alias_version("slicewise", "champion") == "2"


def test_a_champion_is_never_re_scored_on_patients_it_was_trained_or_tuned_on(project, tiny_settings, monkeypatch):
    """Patients added to the data set redraw the split: some of the champion's training patients can land in
    today's test split, where it would look better than it is. The registered model lists the patients it has seen,
    and re-scoring leaves them out (here every test patient was seen: nothing to re-score on)."""
    settings = tracked(tiny_settings)
    write_metrics(project, accuracy=0.95, sensitivity=0.95)
    assert register.main(settings)["promoted"]
    registry = ModelRegistry.existing(settings.tracking, settings.registry.model_name)
    seen = json.loads((registry.fetch("champion", project / "got").checkpoint_path.parent
                       / "seen_patients.json").read_text())
    assert sorted(seen) == sorted(read_split("train", paths.SPLITS) + read_split("val", paths.SPLITS))

    train, test = read_split("train", paths.SPLITS), read_split("test", paths.SPLITS)
    (paths.SPLITS / "test.txt").write_text("\n".join(train) + "\n")  # a redrawn split: its training patients in test
    (paths.SPLITS / "train.txt").write_text("\n".join(test) + "\n")
    from tasks.evaluation import scoring
    from tasks.release.champion import champion_score

    predicted = []  # recorded, not raised: champion_score falls back to the recorded figure on any error
    real_predict = scoring.predict_split
    monkeypatch.setattr(scoring, "predict_split", lambda *a, **k: predicted.append(a) or real_predict(*a, **k))
    score = champion_score(registry, registry.by_alias("champion"), {"data_hash": "other", "splits_hash": "other"},
                           paths.PROCESSED, paths.SPLITS)
    assert predicted == []  # nothing is left to re-score on: predicting anything would be the bug
    assert score.basis == "recorded on other test data" and score.accuracy == pytest.approx(0.95)


def test_a_champion_reading_other_sequences_is_not_re_scored_on_this_data(project, tiny_settings):
    """Re-scoring checked the champion's channel count and image size only: one trained on FLAIR would have been
    scored on a challenger's T2 slices (one channel each), lost, and let any challenger pass."""
    from types import SimpleNamespace

    from tasks.release.champion import champion_score

    settings = tracked(tiny_settings)
    write_metrics(project, accuracy=0.95, sensitivity=0.95)
    assert register.main(settings)["promoted"]
    registry = ModelRegistry.existing(settings.tracking, settings.registry.model_name)
    champion, other_data = registry.by_alias("champion"), {"data_hash": "other", "splits_hash": "other"}
    assert tuple(settings.active.modalities) == ("flair",)
    same = SimpleNamespace(metadata={"modalities": ["flair"]}, onnx_path=None)
    other = SimpleNamespace(metadata={"modalities": ["t2"]}, onnx_path=None)
    assert champion_score(registry, champion, other_data, paths.PROCESSED, paths.SPLITS, same).basis == \
        "re-scored on this test split"
    score = champion_score(registry, champion, other_data, paths.PROCESSED, paths.SPLITS, other)
    assert score.basis == "recorded on other test data" and score.accuracy == pytest.approx(0.95)


def test_a_champion_re_scored_on_part_of_the_test_split_meets_the_challenger_on_the_same_slices(project,
                                                                                                   tiny_settings):
    """Re-scored without the patients it has seen, the champion was compared with the challenger's metrics.json
    accuracy over the whole test split: two populations. The challenger is now scored on the champion's slices."""
    from tasks.data.splits import split_rows
    from tasks.release.champion import champion_score, onnx_accuracy
    from tasks.release.release_files import read_release

    settings = tracked(tiny_settings)
    write_metrics(project, accuracy=0.95, sensitivity=0.95)
    assert register.main(settings)["promoted"]
    train, test = read_split("train", paths.SPLITS), read_split("test", paths.SPLITS)
    (paths.SPLITS / "test.txt").write_text("\n".join(test + train[:1]) + "\n")  # a seen patient joins the test split
    write_checkpoint(project, settings, seed=1)
    write_metrics(project, accuracy=0.99, sensitivity=0.99)  # metrics.json: the whole split (a made-up 0.99 here)
    export.main(settings)
    release = read_release(paths.ONNX_MODEL, paths.EXPORT_METADATA, paths.best_checkpoint("joint"), paths.METRICS,
                           paths.EXPORT_REPORT)
    registry = ModelRegistry.existing(settings.tracking, settings.registry.model_name)
    score = champion_score(registry, registry.by_alias("champion"), {"data_hash": "other", "splits_hash": "other"},
                           paths.PROCESSED, paths.SPLITS, release)
    same_slices = split_rows(paths.PROCESSED, test)
    mine = onnx_accuracy(paths.ONNX_MODEL, release.metadata, paths.PROCESSED, same_slices, "check")
    assert score.basis == f"both scored on the {len(test)} test patients new to the champion"
    assert score.challenger_accuracy == pytest.approx(mine) and mine != pytest.approx(0.99)
    gate = PromotionGate.from_settings(settings.promotion)
    assert gate.decide(release.metrics, True, champion=score).criteria[-1].detail.startswith(f"{mine:.3f} ")


def test_a_model_judged_in_volume_is_re_scored_in_volume(project, tiny_settings, monkeypatch):
    """Re-scoring a champion applies the rule its threshold was chosen for: BraTS slices in their volume when its
    model.json says `slices_in_volume`, at its own mask threshold; as predicted otherwise."""
    from tasks.data.splits import split_rows
    from tasks.evaluation import scoring
    from tasks.release.champion import onnx_accuracy

    write_metrics(project, accuracy=0.95, sensitivity=0.95)
    export.main(tracked(tiny_settings))
    metadata = json.loads(paths.EXPORT_METADATA.read_text())
    assert metadata["slices_in_volume"] is False
    rows = split_rows(paths.PROCESSED, read_split("test", paths.SPLITS))
    calls, real = [], scoring.predict_split

    def recorded(*args, **kwargs):
        calls.append((kwargs["in_volume"], kwargs["mask_threshold"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "predict_split", recorded)
    onnx_accuracy(paths.ONNX_MODEL, metadata, paths.PROCESSED, rows, "as predicted")
    onnx_accuracy(paths.ONNX_MODEL, metadata | {"slices_in_volume": True, "mask_threshold": 0.6}, paths.PROCESSED,
                  rows, "in volume")
    assert calls == [(False, metadata["mask_threshold"]), (True, 0.6)]


def test_a_model_whose_photos_were_judged_alone_is_re_scored_so(project, tiny_settings, monkeypatch):
    """A champion whose photos were judged at its lone slice threshold (model.json `photos_judged_alone`) is
    re-scored the same way: its photos at that threshold, its BraTS slices at `threshold`."""
    from types import SimpleNamespace

    from tasks.evaluation import scoring
    from tasks.release.champion import onnx_accuracy

    write_metrics(project, accuracy=0.95, sensitivity=0.95)
    export.main(tracked(tiny_settings))
    metadata = json.loads(paths.EXPORT_METADATA.read_text()) | {"threshold": 0.5, "lone_slice_threshold": 0.8}
    slices = pd.DataFrame({"source": ["kaggle", "kaggle", "brats", "brats"], "label": [0, 1, 0, 1],
                           "probability": [0.7, 0.9, 0.3, 0.6]})
    monkeypatch.setattr(scoring, "predict_split", lambda *args, **kwargs: SimpleNamespace(slices=slices))
    # at 0.5 for all, the tumour-free photo at 0.7 is a false positive; at its lone 0.8 it is right
    assert onnx_accuracy(paths.ONNX_MODEL, metadata, paths.PROCESSED, None, "as before") == 0.75
    assert onnx_accuracy(paths.ONNX_MODEL, metadata | {"photos_judged_alone": True}, paths.PROCESSED, None,
                         "photos alone") == 1.0


def test_unverifiable_version_is_removed_and_gets_no_alias(project, tiny_settings, monkeypatch):
    settings = tracked(tiny_settings)
    register.main(settings)
    write_metrics(project, accuracy=0.95, sensitivity=0.9)  # another release (the same one would reuse version 1)
    real_log_model = mlflow.onnx.log_model

    def log_then_corrupt(*args, **kwargs):  # an upload that went wrong: the stored model.onnx is not the export
        info = real_log_model(*args, **kwargs)
        location = Path(unquote(urlparse(mlflow.get_logged_model(info.model_id).artifact_location).path))
        (location / "model.onnx").write_bytes(b"half an upload")
        return info

    monkeypatch.setattr(mlflow.onnx, "log_model", log_then_corrupt)
    with pytest.raises(SliceWiseError, match="does not hold the exported model.onnx"):
        register.main(settings)
    versions = [str(v.version) for v in client().search_model_versions("name='slicewise'")]
    assert versions == ["1"]
    assert alias_version("slicewise", "champion") == "1" and alias_version("slicewise", "challenger") is None
    assert not paths.REGISTER_REPORT.exists()
    failed = client().search_runs([client().get_experiment_by_name("slicewise").experiment_id],
                                  "attributes.status = 'FAILED'")
    assert len(failed) == 1


def test_unreachable_tracking_server_fails_fast_and_clearly(project, tiny_settings, monkeypatch):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(SliceWiseError, match=r"failed after 3 attempt\(s\).*tracking store reachable") as error:
        register.main(tracked(tiny_settings))
    assert time.monotonic() - started < 60  # not MLflow's default of minutes of HTTP retries
    assert f"127.0.0.1:{port}" in str(error.value)
    assert not paths.REGISTER_REPORT.exists()


def test_tracking_disabled_runs_the_gate_and_registers_nothing(project, tiny_settings):
    (project / "mlflow.db").unlink()
    result = register.main(tiny_settings)
    assert result["registered"] is False and result["version"] is None and not result["promoted"]
    assert "tracking.enabled is false" in result["reason"] and "accuracy 0.900 >= 0.850" in result["reason"]
    assert not (project / "mlflow.db").exists()


def test_lineage_prints_the_chain(project, tiny_settings):
    import subprocess

    from rich.console import Console

    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["commit", "-q", "--allow-empty", "-m", "x"], check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    settings = tracked(tiny_settings)
    result = register.main(settings)

    console = Console(record=True, width=400)
    info = print_lineage(settings, "champion", console)
    text = console.export_text()
    assert info["version"] == "1" and info["run"]["run_id"] == result["mlflow_run_id"]
    from tasks.tracking import provenance

    # the chain's hashes are this project's, not whatever the version happens to carry
    assert info["tags"]["params_hash"] == provenance.params_hash(settings)
    assert info["tags"]["data_hash"] == provenance.data_hashes()["data_hash"] != ""
    for expected in ("version 1", "@champion", result["mlflow_run_id"], commit, result["onnx_sha256"],
                     info["tags"]["data_hash"], info["tags"]["params_hash"], "0.850 [pass]"):
        assert expected in text
    assert "Kaggle data sets" not in text  # synthetic data: no version to name
    from mlflow import MlflowClient  # what a version built from Kaggle data carries (tasks/tracking/provenance.py)

    MlflowClient().set_model_version_tag(settings.registry.model_name, "1", "kaggle_versions", "a/brats: v3")
    print_lineage(settings, "champion", console)
    assert "Kaggle data sets a/brats: v3" in console.export_text()
    with pytest.raises(SliceWiseError, match="no version or alias '7'"):
        print_lineage(settings, "7", console)


def test_lineage_names_the_run_that_trained_the_weights_when_another_run_registered_them(project, tiny_settings,
                                                                                        monkeypatch):
    """DVC reruns `register` alone after a promotion setting changes: that pipeline run holds no training, and
    lineage showed its run and commit as the model's origin. The version names its checkpoint's sha256, and so does
    the training run that handed it on: lineage follows it there."""
    from rich.console import Console

    from tasks.tracking.provenance import CHECKPOINT_TAG

    settings = tracked(tiny_settings)
    checkpoint = sha256_file(paths.best_checkpoint("joint"))
    experiment = client().get_experiment_by_name("slicewise") or \
        client().get_experiment(client().create_experiment("slicewise"))
    earlier = client().create_run(experiment.experiment_id, run_name="pipeline-quick-earlier",
                                  tags={"slicewise.role": "pipeline"})
    trained = client().create_run(experiment.experiment_id, run_name="train_joint", tags={
        "step": "train_joint", "mlflow.parentRunId": earlier.info.run_id, "git_commit": "1234abcd" * 5,
        CHECKPOINT_TAG: checkpoint})
    result = register.main(settings)  # a later pipeline run that only registers
    assert client().get_model_version("slicewise", result["version"]).tags[CHECKPOINT_TAG] == checkpoint

    console = Console(record=True, width=400)
    info = print_lineage(settings, "champion", console)
    assert info["trained"] == {"run_id": trained.info.run_id, "pipeline_run_id": earlier.info.run_id,
                               "git_commit": "1234abcd" * 5, "git_dirty": None}
    text = console.export_text()
    assert f"weights trained by train_joint run {trained.info.run_id} of pipeline run {earlier.info.run_id}" in text
    assert "git commit " + "1234abcd" * 5 in text
    # the registering run deleted for good (`mlflow gc`): the training run is still found, in any experiment
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    real_get_run = MlflowClient.get_run

    def get_run(self, run_id):
        if run_id == result["mlflow_run_id"]:
            raise MlflowException(f"Run '{run_id}' not found", error_code=RESOURCE_DOES_NOT_EXIST)
        return real_get_run(self, run_id)

    monkeypatch.setattr(MlflowClient, "get_run", get_run)
    assert print_lineage(settings, "champion", Console(record=True, width=400))["trained"]["run_id"] == \
        trained.info.run_id
    monkeypatch.setattr(MlflowClient, "get_run", real_get_run)
    # a training run of other weights is no origin of this version
    client().set_tag(trained.info.run_id, CHECKPOINT_TAG, "0" * 64)
    assert print_lineage(settings, "champion", Console(record=True, width=400))["trained"] is None


def test_lineage_without_a_reference_follows_the_configured_alias(project, tiny_settings):
    """`python -m tasks lineage` with no argument: the version `registry.alias` names (it was "champion" whatever
    params.yaml said, so a store serving `production` answered "no version or alias 'champion'")."""
    from typer.testing import CliRunner

    from tasks.__main__ import app

    import yaml

    settings = tracked(tiny_settings)
    settings = settings.model_copy(update={"registry": settings.registry.model_copy(update={"alias": "production"})})
    paths.PARAMS.write_text(yaml.safe_dump(settings.model_dump(mode="json")))  # what the command reads
    assert load_settings().registry.alias == "production"
    assert register.main(settings)["alias"] == "production"
    answer = CliRunner().invoke(app, ["lineage"])
    assert answer.exit_code == 0, answer.output
    assert "version 1" in answer.output and "@production" in answer.output


@pytest.mark.slow
def test_register_against_a_real_mlflow_server(tmp_path, tiny_settings, monkeypatch):
    from tests.service_processes import free_port, http_ok, running

    port, server_dir = free_port(), tmp_path / "server"
    server_dir.mkdir()
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
           f"sqlite:///{server_dir / 'mlflow.db'}", "--artifacts-destination", str(server_dir / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with running(cmd, tmp_path / "server.log", lambda: http_ok(f"http://127.0.0.1:{port}/health"), cwd=server_dir,
                 timeout=180):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        root = tmp_path / "project"
        root.mkdir()
        monkeypatch.chdir(root)
        settings = tracked(tiny_settings)
        make_release_project(root, settings)
        export.main(settings)
        assert register.main(settings)["alias"] == "champion"
        write_metrics(root, accuracy=0.7, sensitivity=0.9)
        rejected = register.main(settings)
        assert rejected["alias"] == "challenger" and "accuracy 0.700 < 0.850 [FAIL]" in rejected["reason"]

        assert alias_version("slicewise", "champion") == "1"
        size = settings.active.image_size
        images = np.random.default_rng(1).normal(size=(2, settings.in_channels, size, size)).astype(np.float32)
        loaded = tmp_path / "loaded"  # not MLflow's own temporary folder, which it never removes
        loaded.mkdir()
        with fluent_store():
            served = mlflow.pyfunc.load_model("models:/slicewise@champion", dst_path=str(loaded)).predict(images)
        np.testing.assert_array_equal(served["cls_logits"], onnx_outputs(paths.ONNX_MODEL, images)[1])
        # Artifacts went through the server into its --artifacts-destination, not into the project folder.
        assert list((server_dir / "artifacts").rglob("model.onnx")) and not (root / "mlartifacts").exists()
        runs = pd.DataFrame([r.data.tags for r in client().search_runs(
            [client().get_experiment_by_name("slicewise").experiment_id])])
        assert set(runs["step"].dropna()) == {"export"}


def test_lineage_without_a_store_says_so(tmp_path, tiny_settings, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SliceWiseError, match="no MLflow store yet"):
        print_lineage(tiny_settings, "champion")
    assert not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------- issue 13: retries, interruptions, a lost store


def logged_models_of(run_id: str) -> list:
    experiment = client().get_experiment_by_name("slicewise")
    return client().search_logged_models([experiment.experiment_id], filter_string=f"source_run_id = '{run_id}'")


def model_folders(root: Path) -> list[Path]:
    return [p for p in (root / "mlartifacts").rglob("m-*") if p.is_dir() and p.parent.name == "models"]


def test_a_lost_answer_to_register_model_creates_no_second_version(project, tiny_settings, monkeypatch):
    """The server created the version but its answer never arrived: the retry finds that version."""
    settings = tracked(tiny_settings)
    real_register = mlflow.register_model
    calls = []

    def register_then_lose_the_answer(*args, **kwargs):
        calls.append(1)
        version = real_register(*args, **kwargs)
        if len(calls) == 1:
            raise ConnectionError("connection reset by peer (the answer was lost)")
        return version

    monkeypatch.setattr(mlflow, "register_model", register_then_lose_the_answer)
    result = register.main(settings)
    assert len(calls) == 1  # the retry asked first, and found version 1
    assert result["version"] == "1" and result["alias"] == "champion"
    assert [str(v.version) for v in client().search_model_versions("name='slicewise'")] == ["1"]
    assert len(logged_models_of(result["mlflow_run_id"])) == 1


def test_an_interrupted_register_removes_what_it_logged(project, tiny_settings, monkeypatch):
    settings = tracked(tiny_settings)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ModelRegistry, "verify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        register.main(settings)
    assert client().search_model_versions("name='slicewise'") == []
    runs = client().search_runs([client().get_experiment_by_name("slicewise").experiment_id])
    run = next(r for r in runs if r.data.tags.get("slicewise.role") == "pipeline")  # register logs into the parent
    assert run.info.status == "KILLED"  # interrupted, not failed (Ctrl-C, or SIGTERM through python -m tasks)
    assert logged_models_of(run.info.run_id) == [] and model_folders(project) == []
    assert not paths.REGISTER_REPORT.exists()


def test_a_model_logged_by_a_register_killed_outright_goes_when_it_runs_again(project, tiny_settings, monkeypatch):
    """Review 2026-12-07: a register SIGKILLed after logging its model left that model (and its files, about 31 MB for
    the quick model) in the run for good: no handler of its own could remove it, and the rerun only removed its own."""
    from tasks.release import registration

    settings = tracked(tiny_settings)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # a kill: the model is logged, and nothing of the attempt cleans up
        patch.setattr(registration, "discard_logged_models", lambda *args, **kwargs: None)
        patch.setattr(registration, "create_verified_version", killed)
        with pytest.raises(KeyboardInterrupt):
            register.main(settings)
    runs = client().search_runs([client().get_experiment_by_name("slicewise").experiment_id])
    run = next(r for r in runs if r.data.tags.get("slicewise.role") == "pipeline")
    assert len(logged_models_of(run.info.run_id)) == 1 and len(model_folders(project)) == 1  # the kill's leftover
    result = register.main(settings)
    assert result["mlflow_run_id"] == run.info.run_id and result["version"] == "1"
    kept = logged_models_of(run.info.run_id)
    assert len(kept) == 1 and client().get_model_version("slicewise", "1").source.endswith(kept[0].model_id)
    assert [p.name for p in model_folders(project)] == [kept[0].model_id]


def test_a_version_left_half_made_by_a_killed_register_goes_when_another_release_registers(project, tiny_settings):
    """Review 2026-12-07: a register SIGKILLed after creating its version (tagged "promoted", never described, verified
    nor given an alias) was completed only by the same release; a new release left it for good. One whose register
    still runs, or any version with a description, stays."""
    settings = tracked(tiny_settings)
    write_metrics(project, accuracy=0.95, sensitivity=0.9)
    assert register.main(settings)["version"] == "1"
    source = client().get_model_version("slicewise", "1").source
    experiment = client().get_experiment_by_name("slicewise").experiment_id
    left = {}
    for status in ("KILLED", "RUNNING"):
        run = client().create_run(experiment)
        version = client().create_model_version("slicewise", source, run_id=run.info.run_id,
                                                tags={"onnx_sha256": "f" * 64, "promotion": "promoted"})
        if status != "RUNNING":
            client().set_terminated(run.info.run_id, status)
        left[status] = str(version.version)
    write_metrics(project, accuracy=0.96, sensitivity=0.9)  # another release
    result = register.main(settings)
    versions = {str(v.version) for v in client().search_model_versions("name='slicewise'")}
    assert left["KILLED"] not in versions and {"1", left["RUNNING"], result["version"]} <= versions
    assert result["promoted"] and alias_version("slicewise", "champion") == result["version"]


def test_a_store_lost_during_register_is_one_clear_error(project, tiny_settings, monkeypatch, capfd, caplog):
    """The tracking store is deleted while register runs: one error naming the store, a few lines of log (not
    MLflow's tracebacks for every retry), and no logged model left behind in mlartifacts/."""
    settings = tracked(tiny_settings)
    real_register = mlflow.register_model

    def lose_the_store(*args, **kwargs):
        (project / "mlflow.db").unlink()
        return real_register(*args, **kwargs)

    monkeypatch.setattr(mlflow, "register_model", lose_the_store)
    caplog.set_level("INFO")
    with pytest.raises(SliceWiseError, match="MLflow store disappeared during register model") as error:
        register.main(settings)
    assert "mlflow.db" in str(error.value) and "\n" not in str(error.value)
    out, err = capfd.readouterr()
    lines = out.splitlines() + err.splitlines() + caplog.text.splitlines()
    assert len(lines) < 40, "\n".join(lines[:80])
    assert "Traceback" not in caplog.text + err
    assert model_folders(project) == []


def test_a_store_that_does_not_answer_fails_the_step_rather_than_the_gate_guessing(project, tiny_settings,
                                                                                    monkeypatch):
    """A store that stops answering for one call, while re-scoring the champion (other test data) or verifying the
    version holding this release: the step fails saying so, instead of the gate comparing with the champion's figure
    from other test data, or a second copy of an intact version being registered."""
    from tasks.release.registry import ModelRegistry
    from tasks.tracking.store import StoreUnreachable

    settings = tracked(tiny_settings)
    write_metrics(project, accuracy=0.95, sensitivity=0.9)
    first = register.main(settings)
    download = ModelRegistry.download

    def once_unreachable(self, *args, **kwargs):
        if not calls:
            calls.append(1)
            raise StoreUnreachable("MLflow download model failed after 3 attempt(s): connection refused")
        return download(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ModelRegistry, "download", once_unreachable)
        calls = []
        with pytest.raises(StoreUnreachable):  # the same release again: the version holding it is not verified
            register.main(settings)
        (paths.SPLITS / "test.txt").write_text((paths.SPLITS / "test.txt").read_text() + "\n")  # other test data
        write_metrics(project, accuracy=0.90, sensitivity=0.9)
        calls = []
        with pytest.raises(StoreUnreachable):  # the champion is not re-scored
            register.main(settings)
    assert [v.version for v in client().search_model_versions("name='slicewise'")] == [int(first["version"])]


def test_a_copy_of_an_image_the_champion_has_seen_is_not_new_to_it(project, tiny_settings, monkeypatch):
    """A redrawn split can put a copy of an image the champion trained on (another file of the same scan) in today's
    test split: it was re-scored as new, and the champion looked better than it is. Copies within the split's pHash
    distance are left out, as the split step keeps them with their original."""
    from tasks.data.shards import read_manifest, read_shard, write_shard
    from tasks.release import champion as champion_module
    from tasks.release.champion import champion_score

    settings = tracked(tiny_settings)
    write_metrics(project, accuracy=0.95, sensitivity=0.95)
    assert register.main(settings)["promoted"]
    kaggle = read_manifest(paths.MANIFEST).query("source == 'kaggle'")
    seen = set(read_split("train", paths.SPLITS) + read_split("val", paths.SPLITS))
    test = read_split("test", paths.SPLITS)
    copy = kaggle[kaggle["patient"].isin(test)].iloc[0]
    original = kaggle[kaggle["patient"].isin(seen)].iloc[0]
    shard = read_shard(paths.PROCESSED / copy["shard"])
    shard.images[copy["row"]] = read_shard(paths.PROCESSED / original["shard"]).images[original["row"]]
    write_shard(paths.PROCESSED / copy["shard"], shard)

    scored = []
    monkeypatch.setattr(champion_module, "onnx_accuracy",
                        lambda path, metadata, processed, rows, description: scored.append(set(rows["patient"])) or 0.9)
    registry = ModelRegistry.existing(settings.tracking, settings.registry.model_name)
    champion_score(registry, registry.by_alias("champion"), {"data_hash": "other", "splits_hash": "other"},
                   paths.PROCESSED, paths.SPLITS, near_duplicate_distance=settings.split.phash_max_distance)
    # every test patient but the copy was scored (the original, seen, never could be: it is not in the test split)
    assert scored[0] == set(test) - {copy["patient"]}
    assert champion_module.copies_of_seen(paths.PROCESSED, test, seen, 4) == {copy["patient"]}

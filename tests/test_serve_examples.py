"""Examples bundled with the registered model (tasks/release/examples.py) and the routes that serve them:
GET /v1/examples, POST /v1/examples/{id}/predict, GET /model/compare."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest

from serve.api import create_app
from serve.model_source import FileSource, RegistrySource
from tasks import paths
from tasks.config import load_settings
from tasks.data.splits import read_split
from tasks.release.examples import INDEX_FILE, bundle_examples, colour_photo
from tests.serve_factory import REPO, decode_png, file_app, local_client, make_served_files
from tests.ui_factory import add_raw_test_patient, inside, registered_project

pytestmark = pytest.mark.slow


@pytest.fixture
def bundle(tmp_path, tiny_settings):
    from tests.release_factory import make_release_project

    root = tmp_path / "project"
    make_release_project(root, tiny_settings)
    patient = add_raw_test_patient(root)
    archive = bundle_examples(root / paths.PROCESSED, root / paths.SPLITS, root / paths.RAW_BRATS, ("flair",),
                              tmp_path / "bundle")
    return {"root": root, "patient": patient, "archive": archive, "folder": archive.parent / "examples"}


def test_bundle_holds_test_split_slices_a_photo_and_a_test_volume(bundle):
    index = json.loads((bundle["folder"] / INDEX_FILE).read_text())["examples"]
    test = set(read_split("test", bundle["root"] / paths.SPLITS))
    slices = [e for e in index if e["kind"] == "slice" and e["patient"]]
    assert {e["expected"] for e in slices} == {"tumour", "clear"}
    # a tumour example's title gives the truth's area, named as such (the answer shows the predicted one beside it)
    assert all(re.match(r"tumour \(truth: \d+ px\) · ", e["title"]) for e in slices if e["expected"] == "tumour")
    assert all(e["patient"] in test for e in slices)  # never a training or validation patient
    assert [e["patient"] for e in index if e["kind"] == "volume"] == [bundle["patient"]]
    assert any(e["expected"] == "out of distribution" for e in index)
    for entry in slices:
        array = np.load(bundle["folder"] / entry["file"])
        assert array.dtype == np.float32 and array.shape == (1, 32, 32)
    with zipfile.ZipFile(bundle["archive"]) as archive:
        assert INDEX_FILE in archive.namelist() and f"{bundle['patient']}_seg.nii.gz" in archive.namelist()
    assert colour_photo().std(axis=2).mean() > 20  # a colour picture, not a grey one


def test_examples_list_and_predict(bundle, tmp_path):
    files = make_served_files(tmp_path / "model")
    cfg = load_settings(REPO / "params.yaml").serve.model_copy(update={"poll_seconds": 0})
    source = FileSource(files.onnx, files.checkpoint, files.metrics, examples=bundle["folder"])
    with local_client(create_app(source, cfg)) as client:
        listing = client.get("/v1/examples").json()
        kinds = {e["id"]: e for e in listing["examples"]}
        assert listing["detail"] is None and {e["kind"] for e in kinds.values()} == {"slice", "volume"}
        assert all(decode_png(e["thumbnail_png"]).shape[0] > 0 for e in kinds.values())

        tumour = next(e for e in listing["examples"] if e["expected"] == "tumour")
        answer = client.post(f"/v1/examples/{tumour['id']}/predict").json()
        truth, mask = decode_png(answer["truth_png"]) > 0, decode_png(answer["mask_png"]) > 0
        assert answer["has_tumor"] is True and (truth & mask).sum() > 0  # the stand-in finds the bright disc
        assert answer["example"]["id"] == tumour["id"] and "gradcam_png" not in answer
        # the page's Grad-CAM box on an example: the example route takes the switch /v1/predict takes
        explained = client.post(f"/v1/examples/{tumour['id']}/predict?gradcam=true").json()
        assert decode_png(explained["gradcam_png"]).shape[-1] == 3 and explained["has_tumor"] is True

        photo = client.post("/v1/examples/ood-photo/predict").json()
        assert photo["has_tumor"] is None and "colour" in photo["warning"]

        volume = client.post(f"/v1/examples/volume-{bundle['patient']}/predict").json()
        assert volume["shape"] == [48, 48, 12] and volume["truth_region_volumes_cm3"]["wt"] > 0
        truths = [s for s in volume["slices"] if s.get("truth_png")]
        assert truths and decode_png(truths[0]["truth_png"]).shape == (32, 32, 4)
        # the truth overlay is turned as the slice pictures are (display orientation): it lies on the predicted mask
        truth = np.stack([decode_png(s["truth_png"])[..., 3] > 0 for s in truths])
        mask = np.stack([decode_png(s["mask_png"]) > 0 for s in truths])
        flipped = truth[:, ::-1]
        assert (truth & mask).sum() > 0.5 * truth.sum() > (flipped & mask).sum()
        assert volume["mask_nifti"] and volume["example"]["kind"] == "volume"

        missing = client.post("/v1/examples/nope/predict")
        assert missing.status_code == 404 and "slice-1" in missing.json()["detail"]


def test_a_model_without_examples_says_so(tmp_path):
    """Why there are none depends on where the model comes from: a file served with --model-file has no registry
    version to carry them (it was told it had been registered too early, and to run make run)."""
    from serve.examples import no_examples

    with local_client(file_app(make_served_files(tmp_path))) as client:
        listing = client.get("/v1/examples").json()
        assert listing["examples"] == [] and "served from a file (--model-file)" in listing["detail"]
        assert "served from a file" in client.post("/v1/examples/slice-1-tumour/predict").json()["detail"]
        assert "registered before" not in listing["detail"]
        compare = client.get("/model/compare").json()
        assert compare["challenger"] is None and "file" in compare["detail"]
    registry_model = type("Served", (), {"card": {"source": "registry"}})()
    assert "registered before examples were bundled" in no_examples(registry_model)


def test_registered_champion_carries_examples_and_compares_with_the_challenger(tmp_path, tiny_settings):
    root = tmp_path / "project"
    root.mkdir()
    with inside(root):
        project = registered_project(root, tiny_settings)
        settings = project["settings"]
        source = RegistrySource(settings.registry, settings.tracking, root / paths.SERVE_CACHE)
        cfg = settings.serve.model_copy(update={"poll_seconds": 0})
        with local_client(create_app(source, cfg)) as client:
            info = client.get("/model/info").json()
            assert info["version"] == "1" and info["gate"]["verdict"] == "promoted"
            ids = [e["id"] for e in client.get("/v1/examples").json()["examples"]]
            assert f"volume-{project['patient']}" in ids and "ood-photo" in ids
            compare = client.get("/model/compare").json()
            slices = [r for r in compare["examples"] if r["id"] != "ood-photo"]
            # the champion's column is what the served champion answers for each example ...
            champion_says = {r["id"]: client.post(f"/v1/examples/{r['id']}/predict").json()["tumor_probability"]
                             for r in slices}
        # ... and the challenger's is what the challenger's own exported model answers for the same example (on the
        # examples bundled with the champion, which the comparison uses)
        examples = next((root / paths.SERVE_CACHE / settings.registry.model_name).glob("v1-*")) / "examples"
        with local_client(create_app(FileSource(project["challenger_onnx"], examples=examples), cfg)) as client:
            challenger_says = {r["id"]: client.post(f"/v1/examples/{r['id']}/predict").json()["tumor_probability"]
                               for r in slices}
    assert len(slices) >= 2
    for row in slices:
        assert row["champion"]["tumor_probability"] == pytest.approx(champion_says[row["id"]], abs=1e-6), row["id"]
        assert row["challenger"]["tumor_probability"] == pytest.approx(challenger_says[row["id"]], abs=1e-6), row["id"]
        # two models that answer apart: a comparison running one model for both columns fails one of the lines above
        assert abs(champion_says[row["id"]] - challenger_says[row["id"]]) > 0.05, row["id"]
    assert compare["champion"]["version"] == "1" and compare["challenger"]["version"] == "2"
    assert compare["challenger"]["aliases"] == ["challenger"] and compare["challenger"]["gate"]["verdict"] == "rejected"
    assert "sensitivity 0.500 < 0.800 [FAIL]" in compare["challenger"]["gate"]["reason"]
    assert compare["champion"]["lineage"]["onnx_sha256"] == project["champion"]["onnx_sha256"]
    # each column's own figures (review 2026-12-07: both had accuracy 0.9, so one set shown twice passed)
    assert compare["champion"]["metrics"]["ci95"]["classification.accuracy"] == pytest.approx([0.85, 0.95])
    assert compare["champion"]["metrics"]["classification"]["sensitivity"] == pytest.approx(0.9)
    assert compare["challenger"]["metrics"]["ci95"]["classification.accuracy"] == pytest.approx([0.70, 0.80])
    assert compare["challenger"]["metrics"]["classification"]["sensitivity"] == pytest.approx(0.5)
    assert compare["challenger"]["lineage"]["onnx_sha256"] == project["challenger"]["onnx_sha256"]
    assert project["challenger"]["onnx_sha256"] != project["champion"]["onnx_sha256"]


def test_the_page_loads_only_its_own_assets(tmp_path):
    """No build step and no network: every script and stylesheet the page names (ES module imports included) is
    served by the app itself, and no static file points at another host."""
    import re

    static = REPO / "serve" / "static"
    with local_client(file_app(make_served_files(tmp_path))) as client:
        page = client.get("/").text
        assets = set(re.findall(r'(?:src|href)="(/static/[^"]+)"', page))
        for script in static.glob("*.js"):
            assets |= {f"/static/{name}" for name in re.findall(r'from "\./([\w.-]+\.js)"', script.read_text())}
        assert {"/static/app.js", "/static/common.js", "/static/patient.js", "/static/style.css"} <= assets
        for asset in assets:
            assert client.get(asset).status_code == 200, asset
    for path in [static / "index.html", *static.glob("*.js"), *static.glob("*.css")]:
        assert not re.search(r"(?:src|href|url|import)\W+(?:https?:)?//", path.read_text()), path.name


def test_a_volume_example_sends_every_modality_the_model_takes(tmp_path):
    from serve.examples import volume_uploads

    entry = {"files": {m: f"p_{m}.nii.gz" for m in ("t2", "flair", "t1ce", "t1")}}
    four = volume_uploads(entry, tmp_path, ("flair", "t1", "t1ce", "t2"))
    assert [field for field, _, _ in four] == ["flair", "t1", "t1ce", "t2"]
    assert four[2][1:] == ("p_t1ce.nii.gz", tmp_path / "p_t1ce.nii.gz")
    assert [field for field, _, _ in volume_uploads(entry, tmp_path, ("flair",))] == ["flair"]
    flair_only_bundle = {"files": {"flair": "p_flair.nii.gz"}}  # a bundle made for a FLAIR model, served by a 4-channel one
    assert [f for f, _, _ in volume_uploads(flair_only_bundle, tmp_path, ("flair", "t1", "t1ce", "t2"))] == ["flair"]


def test_the_comparison_asks_the_registry_before_it_holds_any_memory_budget(tmp_path):
    """/model/compare needs no login: with a store that hangs, every request held its share of the budget (and a
    thread) while it waited, so cheap GETs kept uploads waiting. The registry is asked first, with nothing reserved."""
    from serve.model_source import FileSource

    files = make_served_files(tmp_path)
    seen = {}

    class SlowRegistry(FileSource):
        def challenger(self, served=None):
            seen["budget_in_use"] = app.state.budget.in_use  # what this request holds while the store is asked
            return None

    cfg = load_settings(REPO / "params.yaml").serve.model_copy(update={"poll_seconds": 0})
    app = create_app(SlowRegistry(files.onnx, files.checkpoint, files.metrics), cfg)
    with local_client(app) as client:
        compare = client.get("/model/compare").json()
    assert seen == {"budget_in_use": 0} and compare["challenger"] is None
    assert "no version besides the champion" in compare["detail"]


def test_one_request_at_a_time_asks_the_registry_for_the_challenger(tmp_path, tiny_settings, monkeypatch):
    """Requests behind a lookup wait for it (a healthy store answers at once); behind one that hangs, they stop
    waiting after CHALLENGER_WAIT_SECONDS, with the challenger the last lookup found, or saying a lookup is under
    way, instead of each holding a server thread for as long as the store hangs."""
    import threading

    from serve import model_source
    from tasks.errors import SliceWiseError

    monkeypatch.setattr(model_source, "CHALLENGER_WAIT_SECONDS", 0.5)
    source = RegistrySource(tiny_settings.registry, tiny_settings.tracking, tmp_path / "cache")
    asking, answer = threading.Event(), threading.Event()
    found = ("v7", "a loaded model")

    def store(seconds: float):
        def lookup(served=None):
            asking.set()
            answer.wait(seconds)
            return None
        return lookup

    def ask_in_background():
        thread = threading.Thread(target=source.challenger)
        thread.start()
        assert asking.wait(10)
        return thread

    source.challenger_version = store(0.2)  # a healthy store: the request behind it waits and gets the answer
    first = ask_in_background()
    assert source.challenger() is None
    first.join(10)
    asking.clear()
    source.challenger_version = store(10)  # a store that hangs, and no lookup has found anything yet
    first = ask_in_background()
    try:
        with pytest.raises(SliceWiseError, match="another request is asking the registry"):
            source.challenger()
        source._last_challenger = found  # as a lookup before the store hung would have left it
        assert source.challenger() == found  # the last answer, after a bounded wait
    finally:
        answer.set()
        first.join(10)


def test_a_challenger_found_by_search_shows_its_aliases(tmp_path, tiny_settings, monkeypatch):
    """Without a challenger alias the comparison takes the newest version other than the champion, found by a search,
    which answers without aliases in MLflow 3: the page showed none where the version had one (a hand-set alias)."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    name = tiny_settings.registry.model_name
    client.create_registered_model(name)
    for _ in range(3):
        client.create_model_version(name, source=(tmp_path / "model").as_uri())
    client.set_registered_model_alias(name, tiny_settings.registry.alias, "3")
    client.set_registered_model_alias(name, "staging", "2")
    source = RegistrySource(tiny_settings.registry, tiny_settings.tracking, tmp_path / "cache")
    found = source.challenger_version()
    assert str(found.version) == "2" and list(found.aliases) == ["staging"]

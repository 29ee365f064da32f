"""What `make run` prints last (tasks/release/summary.py): the headline figures, per-region ones, the decision."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from tasks import paths
from tasks.release.summary import print_summary


# what `tasks store-check` adds to the reason: run alone it registers nothing (it said "registering there")
STORE_CHECK_ADVICE = ": `make run` registers it there (it runs `dvc repro --force --single-item register`)"


def printed_summary() -> str:
    """What `tasks summary` prints in the current folder, on a wide console."""
    console = Console(file=io.StringIO(), width=200)
    print_summary(console)
    return console.file.getvalue()


def test_summary_prints_region_figures_with_intervals_and_the_gate_reason(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths.REPORTS.mkdir()
    paths.METRICS.write_text(json.dumps({
        "classification": {"accuracy": 0.9125},
        "segmentation": {"dice": 0.75},
        "segmentation_regions": {"wt": {"dice": 0.8125, "hd95": 12.5}, "tc": {"dice": 0.4375, "hd95": 30.0}},
        "ci95": {"segmentation_regions.tc.dice": [0.25, 0.625], "classification_by_source.kaggle.accuracy": [0.6, 0.9]},
        "classification_by_source": {"kaggle": {"n": 35, "positives": 17, "accuracy": 0.771, "sensitivity": 0.588,
                                                "specificity": 0.944, "roc_auc": 0.7125},
                                     "brats": {"n": 409, "positives": 204, "accuracy": 0.98, "sensitivity": 0.961,
                                               "specificity": 1.0}},  # written before it had a ROC-AUC
        "sensitivity_by_tumour_area": {"0_to_100_mm2": {"n": 12, "sensitivity": 0.25},
                                       "over_2000_mm2": {"n": 0, "sensitivity": 0.0}},
    }))
    paths.REGISTER_REPORT.write_text(json.dumps({"model_name": "slicewise", "version": 3, "promoted": False,
                                                 "reason": "rejected: volume Dice 0.600 < 0.700 [FAIL]"}))
    out = printed_summary()
    assert re.search(r"segmentation_regions\.wt\.dice +│ 0\.812", out)
    assert re.search(r"segmentation_regions\.tc\.hd95 \(mm\) +│ 30\.000", out)  # a distance says its unit
    assert "[0.250, 0.625]" in out and "segmentation_regions.et" not in out
    # the photos' own interval, and their own ranking (the pooled ROC-AUC mixes two scores)
    assert "kaggle accuracy 0.771 [0.600, 0.900], sensitivity 0.588, ROC-AUC 0.713 (35 slices)" in out
    assert "brats accuracy 0.980, sensitivity 0.961 (409 slices)" in out
    assert "0–100 mm² 0.25 (12)" in out and "2000" not in out  # an empty size bin is left out
    assert "version 3: not promoted" in out and "volume Dice 0.600 < 0.700 [FAIL]" in out


def test_summary_says_how_many_inputs_the_slice_step_set_aside(tmp_path, monkeypatch):
    """Review 2026-12-07: a truncated NIfTI was set aside by the slice step, and `flows run` ended without a word of it
    (only `dvc repro` printed the step's JSON). Both front doors end with this summary."""
    monkeypatch.chdir(tmp_path)
    paths.REJECTED.parent.mkdir(parents=True)
    paths.REJECTED.write_text('file,reason\nbrats/P1/P1_t2.nii.gz,"EOFError: Compressed file ended\nbefore the end"\n'
                              "kaggle/yes/Y9.jpg,not an image\n")
    out = " ".join(printed_summary().split())
    assert "the slice step set 2 input file(s) aside" in out and "data/processed/rejected.csv names each" in out
    paths.REJECTED.write_text("file,reason\n")
    assert "set aside" not in printed_summary()


def test_summary_says_when_the_served_model_will_decide_no_photo(tmp_path, monkeypatch):
    """A fresh clone's model scores its test photos at 0.629, below serve.min_photo_accuracy: its served answers to
    photos carry no decision, which nothing said until a photo was sent."""
    monkeypatch.chdir(tmp_path)
    paths.REPORTS.mkdir()
    paths.METRICS.write_text(json.dumps({"classification": {"accuracy": 0.944}, "classification_by_source": {
        "kaggle": {"n": 35, "positives": 17, "accuracy": 22 / 35, "sensitivity": 0.765}}}))

    def summary(min_photo_accuracy):
        console = Console(file=io.StringIO(), width=200)
        print_summary(console, min_photo_accuracy=min_photo_accuracy)
        return console.file.getvalue()

    assert ("served, this model gives photos (8-bit PNG/JPEG) no tumour decision: accuracy 0.629 on 35 test photos, "
            "below serve.min_photo_accuracy 0.85") in summary(0.85)
    assert "no tumour decision" not in summary(0.6) and "no tumour decision" not in summary(None)
    assert "tumour-free brains" not in summary(0.85)  # not measured (real data): nothing said
    paths.METRICS.write_text(json.dumps({"classification": {"accuracy": 0.944}, "tumour_free_volumes": {
        "n": 7, "with_predicted_tumour": 2, "called_tumour": 1, "predicted_voxels_max": 4357}}))
    assert ("tumour-free brains (the 7 test patients rendered again without their tumour): 2 left with a predicted "
            "tumour (up to 4,357 voxels), 1 called tumour") in summary(0.85)


def test_an_undefined_headline_figure_reads_n_a_not_left_out(tmp_path, monkeypatch):
    """A test split without tumour has no sensitivity (null): the row vanished, as if never measured."""
    monkeypatch.chdir(tmp_path)
    paths.REPORTS.mkdir()
    paths.METRICS.write_text(json.dumps({"classification": {"accuracy": 0.9, "sensitivity": None},
                                         "segmentation_regions": {"wt": {"dice": 0.8, "hd95": 3.0},
                                                                  "tc": {"dice": None, "hd95": None}}}))
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in printed_summary().splitlines()
             if line.count("│") >= 3]
    shown = {row[0]: row[1] for row in cells}
    assert shown["classification.sensitivity"] == "n/a" and shown["classification.accuracy"] == "0.900"
    assert shown["segmentation_regions.tc.dice"] == "n/a"  # a whole-tumour model: TC is not predicted
    assert "classification.specificity" not in shown  # not in metrics.json at all: no row


def test_summary_without_tracking_says_not_registered_and_offers_no_lineage(tmp_path, monkeypatch):
    """tracking.enabled false: register.json has no version; "version None: not promoted" and a lineage command for
    a champion that may not exist told the user nothing true."""
    monkeypatch.chdir(tmp_path)
    paths.REPORTS.mkdir()
    paths.REGISTER_REPORT.write_text(json.dumps({
        "registered": False, "model_name": "slicewise", "version": None, "promoted": False,
        "reason": "not registered (tracking.enabled is false); the gate alone says promoted: accuracy 0.9 [pass]"}))
    out = printed_summary()
    assert "not registered (tracking.enabled is false)" in out and "[pass]" in out
    assert "version None" not in out and "lineage" not in out


def ran_here() -> None:
    """The checkout has run the pipeline: it has an exported model (a fresh clone has only the committed reports)."""
    paths.ONNX_MODEL.parent.mkdir(parents=True)
    paths.ONNX_MODEL.write_bytes(b"a model")


def test_summary_of_a_reused_version_says_no_new_version_was_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths.REPORTS.mkdir()
    ran_here()
    paths.REGISTER_REPORT.write_text(json.dumps({
        "registered": True, "reused": True, "model_name": "slicewise", "version": "16", "promoted": True,
        "alias": "champion", "reason": "promoted: accuracy 0.939 >= 0.850 [pass]"}))
    out = printed_summary()
    assert "slicewise version 16 already holds this model" in out and "still champion, no new version" in out
    assert "registered slicewise version 16" not in out and "lineage" in out


def test_summary_before_any_run_says_how_to_make_one(tmp_path, monkeypatch):
    """An empty results table and exit 0 told a new user nothing."""
    monkeypatch.chdir(tmp_path)
    out = printed_summary()
    assert "no pipeline output here yet" in out and "make run" in out and "SliceWise results" not in out


def test_summary_points_lineage_at_the_version_this_run_registered(tmp_path, monkeypatch):
    """A rejected version is no champion: `lineage champion` showed another model than the one just registered."""
    monkeypatch.chdir(tmp_path)
    paths.REPORTS.mkdir()
    ran_here()
    paths.REGISTER_REPORT.write_text(json.dumps({"model_name": "slicewise", "version": "7", "promoted": False,
                                                 "alias": "challenger", "reason": "rejected"}))
    assert "lineage: .venv/bin/python -m tasks lineage 7" in printed_summary()


def test_summary_flags_a_decision_made_on_other_files_than_those_on_disk(tmp_path, monkeypatch):
    """evaluate run by hand after register: the summary printed the new figures beside the old verdict and "same ONNX
    file, data, split and figures"."""
    from tasks.io import sha256_file

    monkeypatch.chdir(tmp_path)
    paths.REPORTS.mkdir()
    paths.METRICS.write_text(json.dumps({"classification": {"accuracy": 0.964}}))
    decision = {"registered": True, "reused": True, "model_name": "slicewise", "version": "5", "promoted": True,
                "reason": "promoted: accuracy 0.964 >= 0.850 [pass]", "metrics_sha256": sha256_file(paths.METRICS)}
    paths.REGISTER_REPORT.write_text(json.dumps(decision))

    assert "another" not in printed_summary()  # the decision is about these very figures
    paths.METRICS.write_text(json.dumps({"classification": {"accuracy": 0.960}}))  # evaluate ran again
    assert "the decision below was made on another metrics.json than the one on disk now" in printed_summary()
    paths.ONNX_MODEL.parent.mkdir(parents=True)
    paths.ONNX_MODEL.write_bytes(b"another model")
    paths.REGISTER_REPORT.write_text(json.dumps(decision | {"metrics_sha256": sha256_file(paths.METRICS),
                                                            "onnx_sha256": "0" * 64}))
    assert "made on another ONNX model" in printed_summary()


def test_a_fresh_clone_shows_the_committed_record_as_such_and_no_lineage_it_cannot_follow(tmp_path, monkeypatch):
    """git carries reports/: a fresh clone printed "slicewise version 6 already holds this model ... still champion"
    and a lineage command answered by "no MLflow store yet"."""
    monkeypatch.chdir(tmp_path)
    paths.REPORTS.mkdir()
    paths.METRICS.write_text(json.dumps({"classification": {"accuracy": 0.96}}))
    paths.REGISTER_REPORT.write_text(json.dumps({
        "registered": True, "reused": True, "model_name": "slicewise", "version": "6", "promoted": True,
        "alias": "champion", "reason": "promoted: accuracy 0.960 >= 0.850 [pass]"}))
    out = printed_summary()
    assert "nothing has run in this checkout yet" in out and "`make run` reproduces it here" in out
    assert "0.960" in out and "lineage" not in out
    # the first stages ran here (data/raw), export not yet: the registry decision is still the committed record
    paths.RAW.mkdir(parents=True)
    out = printed_summary()
    assert "nothing has run in this checkout yet" not in out and "lineage" not in out
    assert "no model exported in this checkout yet: the decision below is the record committed" in out


def test_a_hand_edited_figure_that_is_no_number_is_shown_as_such_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths.REPORTS.mkdir()
    paths.METRICS.write_text(json.dumps({"classification": {"accuracy": "0.97", "sensitivity": 0.9},
                                         "ci95": {"classification.sensitivity": [0.8, "x"]}}))
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in printed_summary().splitlines()
             if line.count("│") >= 3]
    shown = {row[0]: row[1:] for row in cells}
    assert shown["classification.accuracy"][0] == "not a number: '0.97'"
    assert shown["classification.sensitivity"] == ["0.900", "[0.800, not a number: 'x']"]


def test_a_registration_in_another_store_is_said_and_make_run_registers_again(tmp_path, monkeypatch):
    """After `export MLFLOW_TRACKING_URI=...` DVC found register up to date: the summary said "mlflow.db" and
    "registered version 12: PROMOTED", and the new store had no model at all."""
    import subprocess
    import sys

    from tasks.release.store_moved import registered_elsewhere
    from tests.conftest import REPO

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    paths.REPORTS.mkdir()
    paths.REGISTER_REPORT.write_text(json.dumps({"registered": True, "model_name": "slicewise", "version": "12",
                                                 "promoted": True, "reason": "promoted",
                                                 "tracking_uri": "sqlite:///mlflow.db"}))
    client = store_holding(tmp_path / "mlflow.db", "slicewise", versions=12)  # the store the record names, holding it
    store_check = [sys.executable, "-m", "tasks", "store-check"]
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    assert registered_elsewhere() is None and "registers it there" not in printed_summary()
    assert subprocess.run(store_check, env=env, capture_output=True, text=True).returncode == 0

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://u:secret@db:5432/mlflow")
    moved = registered_elsewhere()
    assert moved == (f"{paths.REGISTER_REPORT} records version 12 in sqlite:///mlflow.db; the MLflow store is now "
                     "postgresql://u:***@db:5432/mlflow")
    out = printed_summary()
    assert "postgresql://u:***@db:5432/mlflow" in out and "secret" not in out
    assert moved + ": `make run` registers it there too" in " ".join(out.split())
    checked = subprocess.run(store_check, env=env | {"MLFLOW_TRACKING_URI": "postgresql://u:secret@db:5432/mlflow"},
                             capture_output=True, text=True)
    assert checked.returncode == 1 and checked.stdout.strip() == moved + STORE_CHECK_ADVICE
    # make run asks after `dvc repro`, and reruns register alone when the store moved
    run_target = (REPO / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "tasks store-check || $(BIN)/dvc repro --force --single-item register" in run_target
    assert run_target.index("dvc repro\n") < run_target.index("store-check") < run_target.index("tasks summary")
    # and so does the flow: its register task is forced by the same check
    import inspect

    from flows.pipeline import register

    assert inspect.getclosurevars(register.fn).nonlocals["force_check"] is registered_elsewhere
    # the same address, emptied: the model deleted by hand, the database made afresh, or deleted
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    gone = (f"{paths.REGISTER_REPORT} records version 12 of 'slicewise' in sqlite:///mlflow.db, which no longer "
            "holds it")
    client.delete_model_version("slicewise", "12")
    assert registered_elsewhere() == gone
    checked = subprocess.run(store_check, env=env, capture_output=True, text=True)
    assert checked.returncode == 1 and checked.stdout.strip() == gone + STORE_CHECK_ADVICE
    (tmp_path / "mlflow.db").unlink()
    assert registered_elsewhere() == f"{paths.REGISTER_REPORT} records version 12 in sqlite:///mlflow.db, which no " \
                                     "longer exists"
    (tmp_path / "mlflow.db").write_bytes(b"")  # a new, empty database at the old address holds no version either
    assert registered_elsewhere() == gone


def test_the_version_held_must_be_this_release_and_is_looked_for_in_the_registry_store(tmp_path, monkeypatch):
    """A store made afresh may hold another model under the recorded number: the ONNX file's sha256 tells them apart.
    A registry kept apart from the tracking store (MLFLOW_REGISTRY_URI) is where the version is looked for. A row
    without a stage is a version like any other, and a database that does not answer is not judged."""
    import sqlite3

    from tasks.release.store_moved import registered_elsewhere, version_gone

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    client = store_holding(tmp_path / "mlflow.db", "slicewise", versions=2)
    client.set_model_version_tag("slicewise", "2", "onnx_sha256", "abc")
    uri = "sqlite:///mlflow.db"
    assert not version_gone(uri, "slicewise", "2", "abc") and not version_gone(uri, "slicewise", "2")
    assert version_gone(uri, "slicewise", "2", "another model's")
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("update model_versions set current_stage = NULL where version = 2")
    assert not version_gone(uri, "slicewise", "2", "abc")
    assert not version_gone("postgresql://u:secret@127.0.0.1:9/mlflow", "slicewise", "2")  # nobody there
    # the registry in a store of its own: the tracking store holds no version, and that is not "gone"
    paths.REPORTS.mkdir()
    paths.REGISTER_REPORT.write_text(json.dumps({"registered": True, "model_name": "slicewise", "version": "1",
                                                 "tracking_uri": "sqlite:///tracking.db"}))
    (tmp_path / "tracking.db").write_bytes(b"")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///tracking.db")
    assert registered_elsewhere() is not None  # the registry is the tracking store: empty
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    assert registered_elsewhere() is None


def store_holding(database: Path, name: str, versions: int):
    """A real MLflow store (sqlite) in which model `name` has versions 1..`versions`; its client."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{database}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(name)
    for _ in range(versions):
        client.create_model_version(name, source=str(database.parent))
    return client


def test_one_store_written_another_way_is_the_same_store(tmp_path, monkeypatch):
    """A trailing slash, localhost for 127.0.0.1 or a default port written out forced one needless register."""
    from tasks.release.store_moved import registered_elsewhere, same_store

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlflow.db").write_bytes(b"")
    assert same_store("http://127.0.0.1:5000", "http://localhost:5000/")
    assert same_store("postgresql://u:***@DB/mlflow", "postgresql+psycopg2://u:***@db:5432/mlflow/")
    assert same_store("sqlite:///mlflow.db", f"sqlite:///{tmp_path}/./mlflow.db")
    assert not same_store("http://127.0.0.1:5000", "http://127.0.0.1:5001")
    assert not same_store("http://mlflow-a:5000", "http://mlflow-b:5000")
    assert not same_store("postgresql://u:***@db/mlflow", "postgresql://u:***@db/mlflow_staging")
    assert not same_store("sqlite:///mlflow.db", "sqlite:///other.db")
    assert not same_store("http://host:bad", "http://host:5000")
    paths.REPORTS.mkdir()
    paths.REGISTER_REPORT.write_text(json.dumps({"registered": True, "version": "3",
                                                 "tracking_uri": "http://127.0.0.1:5000"}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000/")
    assert registered_elsewhere() is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    assert "records version 3 in http://127.0.0.1:5000; the MLflow store is now" in registered_elsewhere()


def test_a_project_copied_with_its_store_is_told_where_its_artifacts_live(tmp_path, monkeypatch):
    """MLflow records each experiment's artifact folder as an absolute path: a copied project kept writing into the
    original's mlartifacts/, and once that was gone its registered models could not be loaded. `tasks check` says so."""
    import shutil
    import subprocess
    import sys

    from mlflow import MlflowClient

    from tasks.release.store_moved import artifacts_elsewhere
    from tests.conftest import REPO
    from tests.release_factory import fresh_mlflow_store

    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    fresh_mlflow_store(original)
    monkeypatch.chdir(original)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = MlflowClient(f"sqlite:///{original / 'mlflow.db'}")
    folder = original / "mlartifacts" / "slicewise"
    experiment = client.create_experiment("slicewise", artifact_location=folder.as_uri())
    assert artifacts_elsewhere() is None  # no run yet: nothing lives anywhere
    client.create_run(experiment)
    folder.mkdir(parents=True)
    assert artifacts_elsewhere() is None  # its own folder
    shutil.copytree(original, copy)
    monkeypatch.chdir(copy)
    assert "outside this project" in artifacts_elsewhere() and str(original / "mlartifacts") in artifacts_elsewhere()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{original / 'mlflow.db'}")  # a store kept elsewhere on purpose
    assert artifacts_elsewhere() is None
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    shutil.rmtree(original)
    assert "which no longer exists: the project was copied or moved" in artifacts_elsewhere()
    shutil.copy(REPO / "params.yaml", copy / "params.yaml")
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    checked = subprocess.run([sys.executable, "-m", "tasks", "check"], cwd=copy, env=env, capture_output=True,
                             text=True)
    assert checked.returncode == 0 and "warning: mlflow.db keeps its artifacts in" in " ".join(checked.stderr.split())
    (copy / "mlflow.db").unlink()  # `rm mlflow.db`, as it says: nothing more to say
    assert artifacts_elsewhere() is None


def test_the_summary_off_a_terminal_keeps_each_sentence_on_one_line(tmp_path):
    """`make run > log` and CI: Rich wrapped the summary at 80 columns off a terminal, so the gate's reason (one
    sentence listing every criterion) came out in pieces; `tasks summary` now prints it on one line."""
    (tmp_path / "reports").mkdir()
    reason = "; ".join(f"criterion {n} {0.9 + n / 100:.3f} >= 0.850 [pass]" for n in range(8))
    (tmp_path / "reports" / "register.json").write_text(json.dumps(
        {"model_name": "slicewise", "version": 3, "promoted": False, "reason": reason}))
    (tmp_path / "reports" / "metrics.json").write_text(json.dumps({"classification": {"accuracy": 0.9125}}))
    # Rich takes FORCE_COLOR or TTY_COMPATIBLE=1 as a terminal, whatever stdout is: a CI may set them
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-m", "tasks", "summary"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=True).stdout
    assert len(reason) > 200 and any(line.endswith(reason) for line in out.splitlines())
    assert all(line == line.rstrip() for line in out.splitlines())  # no padding to a width


def test_a_report_that_is_not_a_json_object_is_said_not_a_traceback(tmp_path, monkeypatch):
    """Review 2026-12-07: a metrics.json or register.json holding `[1]` (damaged, or edited by hand) crashed the
    summary with an AttributeError."""
    monkeypatch.chdir(tmp_path)
    paths.REPORTS.mkdir()
    paths.METRICS.write_text("[1]")
    paths.REGISTER_REPORT.write_text('"promoted"')
    out = " ".join(printed_summary().split())
    assert "reports/metrics.json holds no report (a JSON list, not an object)" in out
    assert "reports/register.json holds no report (a JSON str, not an object)" in out


def test_a_sqlite_store_with_options_is_the_same_file():
    """Review 2026-12-07: `sqlite:///mlflow.db?timeout=10` named the file `mlflow.db?timeout=10`, another store than
    `sqlite:///mlflow.db`, so every `make run` ran register again."""
    from tasks.release.store_moved import same_store
    from tasks.tracking.store import sqlite_file

    assert sqlite_file("sqlite:///mlflow.db?timeout=10") == Path("mlflow.db")
    assert same_store("sqlite:///mlflow.db", "sqlite:///mlflow.db?timeout=10")
    assert not same_store("sqlite:///mlflow.db", "sqlite:///other.db?timeout=10")

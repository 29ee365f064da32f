"""The MLflow tracker: one parent run per pipeline run across processes, child runs per step, tags, retries."""

import json
import math
import os
import subprocess
import sys
import time

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from tasks import paths
from tasks.errors import SliceWiseError
from tasks.tracking import provenance, store as store_module
from tasks.tracking.mlflow_runs import PARENT_RUN_ENV, MlflowTracker, close_parent_run, open_parent_run
from tasks.tracking.store import retrying, tracking_uri
from tasks.tracking.tracker import NullTracker, make_tracker

from tests.conftest import REPO
from tests.release_factory import fresh_mlflow_store, tracked

DVC_LOCK = {"schema": "2.0", "stages": {
    "fetch": {"cmd": "x", "outs": [{"path": "data/raw", "hash": "md5", "md5": "aaa111.dir"}]},
    "slice": {"cmd": "x", "outs": [{"path": "data/processed", "hash": "md5", "md5": "bbb222.dir"}]},
    "split": {"cmd": "x", "outs": [{"path": "data/splits", "hash": "md5", "md5": "ccc333.dir"}]},
}}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty default store (sqlite:///mlflow.db) in a project root with a dvc.lock."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    fresh_mlflow_store(tmp_path)
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(DVC_LOCK))
    return tmp_path


def client() -> MlflowClient:
    return MlflowClient(tracking_uri())


def test_a_report_names_the_projects_store_as_every_clone_does(tmp_path, monkeypatch):
    """store.portable_uri: a SQLite store inside the project is recorded relative to it; any other as it is."""
    monkeypatch.chdir(tmp_path)
    assert store_module.portable_uri(f"sqlite:///{tmp_path / 'mlflow.db'}") == "sqlite:///mlflow.db"
    assert store_module.portable_uri(f"sqlite:///{tmp_path / 'stores' / 'a.db'}") == "sqlite:///stores/a.db"
    elsewhere = f"sqlite:///{tmp_path.parent / 'shared.db'}"
    assert store_module.portable_uri(elsewhere) == elsewhere
    assert store_module.portable_uri("http://mlflow:5000") == "http://mlflow:5000"


def test_steps_share_one_parent_with_tagged_child_runs(store, tiny_settings):
    settings = tracked(tiny_settings)
    train = make_tracker(settings, "train_seg")
    train.log_params({"lr": 0.001, "augment.flip": True})
    for epoch in (1, 2):
        train.log_metrics({"val_dice": 0.1 * epoch, "skipped": math.nan}, step=epoch)
    (store / "history.csv").write_text("epoch,val_dice\n1,0.1\n")
    train.log_artifact(store / "history.csv", "training")
    train.log_artifact(store / "missing.png")  # a missing file is skipped, never fatal
    train.close()
    evaluate = MlflowTracker.for_step(settings, "evaluate")
    evaluate.close("FAILED")

    assert isinstance(train, MlflowTracker) and train.parent_run_id == evaluate.parent_run_id
    run = client().get_run(train.run_id)
    assert run.data.tags["mlflow.parentRunId"] == train.parent_run_id and run.data.tags["step"] == "train_seg"
    assert run.data.params == {"lr": "0.001", "augment.flip": "True"}
    assert [m.value for m in client().get_metric_history(train.run_id, "val_dice")] == [0.1, 0.2]
    assert "skipped" not in run.data.metrics
    assert [a.path for a in client().list_artifacts(train.run_id, "training")] == ["training/history.csv"]
    assert run.info.status == "FINISHED" and client().get_run(evaluate.run_id).info.status == "FAILED"
    parent = client().get_run(train.parent_run_id)
    assert parent.info.status == "FAILED" and parent.data.tags["failed_step"] == "evaluate"  # none left RUNNING
    again = MlflowTracker.for_step(settings, "evaluate")  # the failed step's next attempt continues the same parent
    assert again.parent_run_id == train.parent_run_id
    assert client().get_run(train.parent_run_id).info.status == "RUNNING"
    again.close()
    for tags in (run.data.tags, parent.data.tags):
        assert tags["data_hash"] == "bbb222" and tags["data_raw_hash"] == "aaa111" and tags["splits_hash"] == "ccc333"
        assert tags["profile"] == settings.profile and tags["params_hash"] == provenance.params_hash(settings)
        assert {"git_commit", "git_dirty"} <= set(tags)
    experiment = client().get_experiment(run.info.experiment_id)
    assert experiment.name == "slicewise" and experiment.artifact_location.startswith((store / "mlartifacts").as_uri())


def test_separate_processes_find_the_same_parent_and_register_ends_it(store):
    """DVC starts one process per stage: the pointer file carries the parent run from one to the next."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tracking"] |= {"enabled": True}
    (store / "params.yaml").write_text(yaml.safe_dump(params))
    code = ("import sys; from tasks.config import load_settings; from tasks.tracking.mlflow_runs import MlflowTracker\n"
            "t = MlflowTracker.for_step(load_settings('params.yaml'), sys.argv[1]); t.close()\n"
            "print(t.run_id, t.parent_run_id)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def step(name: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, env=env, timeout=180)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    child, parent = step("train_seg")
    assert child != parent
    assert json.loads(paths.MLFLOW_PARENT_RUN.read_text())["run_id"] == parent
    registered, none = step("register")  # register logs into the parent itself and ends it
    assert registered == parent and none == "None"
    assert client().get_run(parent).info.status == "FINISHED" and not paths.MLFLOW_PARENT_RUN.exists()


def test_new_parent_after_register_or_changed_params(store, tiny_settings):
    settings = tracked(tiny_settings)
    first = MlflowTracker.for_step(settings, "train_seg").parent_run_id
    changed = settings.model_copy(update={"seed": settings.seed + 1})
    second = MlflowTracker.for_step(changed, "train_seg").parent_run_id
    assert second != first
    assert client().get_run(first).info.status == "KILLED"  # its pipeline run can never finish now
    MlflowTracker.for_step(changed, "register").close()
    third = MlflowTracker.for_step(changed, "train_seg").parent_run_id
    assert third not in (first, second) and client().get_run(second).info.status == "FINISHED"


def test_a_complete_pipeline_run_that_registered_nothing_ends_finished_not_killed(store, tiny_settings):
    """Training reran and reproduced best.pt, so register (which ends the parent under `dvc repro`) did not run:
    every step of that pipeline run finished, and the next run's new parent ends it FINISHED, not KILLED."""
    settings = tracked(tiny_settings)
    for step in ("train_seg", "evaluate"):
        tracker = MlflowTracker.for_step(settings, step)
        tracker.close()
    changed = settings.model_copy(update={"seed": settings.seed + 1})
    assert MlflowTracker.for_step(changed, "train_seg").parent_run_id != tracker.parent_run_id
    assert client().get_run(tracker.parent_run_id).info.status == "FINISHED"


def test_a_pipeline_run_that_ends_before_register_leaves_no_run_running(store, tiny_settings, monkeypatch):
    """`dvc repro` reran evaluate, which came out the same, so export and register (which ends the parent) did not
    run: the parent stayed RUNNING with nothing left to end it. Each finished step now leaves it FINISHED, the next
    step reopens it, and a flow's parent (from the environment) is left to the flow."""
    settings = tracked(tiny_settings)
    seg = MlflowTracker.for_step(settings, "train_seg")
    assert client().get_run(seg.parent_run_id).info.status == "RUNNING"
    seg.close()
    assert client().get_run(seg.parent_run_id).info.status == "FINISHED"
    evaluate = MlflowTracker.for_step(settings, "evaluate")
    assert evaluate.parent_run_id == seg.parent_run_id  # the same pipeline run, reopened
    assert client().get_run(seg.parent_run_id).info.status == "RUNNING"
    evaluate.close()
    assert client().get_run(seg.parent_run_id).info.status == "FINISHED"

    flow_parent = open_parent_run(settings)
    monkeypatch.setenv(PARENT_RUN_ENV, flow_parent)
    MlflowTracker.for_step(settings, "train_cls").close()
    assert client().get_run(flow_parent).info.status == "RUNNING"


def test_a_step_that_already_finished_in_the_parent_begins_a_new_pipeline_run(store, tiny_settings):
    """Only register forgets the pointer: a `dvc repro` after one that ended before register (same code and params,
    new data or a forced step) put its steps into the earlier, finished pipeline run, which then held two runs of a
    step (and lineage, listing step names once, hid it). A step that FINISHED there already means a new run began;
    a failed attempt's rerun still goes on in the same one."""
    settings = tracked(tiny_settings)
    first = MlflowTracker.for_step(settings, "export")
    first.close()
    failed = MlflowTracker.for_step(settings, "evaluate")
    failed.close("FAILED")
    retried = MlflowTracker.for_step(settings, "evaluate")  # a failed step's rerun: the same pipeline run
    assert retried.parent_run_id == first.parent_run_id
    retried.close()
    again = MlflowTracker.for_step(settings, "export")  # export finished there already: a new pipeline run
    assert again.parent_run_id != first.parent_run_id
    assert json.loads(paths.MLFLOW_PARENT_RUN.read_text())["run_id"] == again.parent_run_id
    steps = client().search_runs([client().get_experiment_by_name(settings.tracking.experiment).experiment_id],
                                 f"tags.mlflow.parentRunId = '{first.parent_run_id}' and tags.step = 'export'")
    assert len(steps) == 1 and client().get_run(first.parent_run_id).info.status == "FINISHED"


def test_a_failed_register_is_rerun_in_the_same_pipeline_run(store, tiny_settings):
    """`dvc repro` after a failed register: the rerun goes on in the parent run that holds the step runs."""
    settings = tracked(tiny_settings)
    step = MlflowTracker.for_step(settings, "train_seg")
    step.close()
    MlflowTracker.for_step(settings, "register").close("FAILED")
    assert client().get_run(step.parent_run_id).info.status == "FAILED"
    again = MlflowTracker.for_step(settings, "register")
    assert again.run_id == step.parent_run_id  # the register tracker is on the parent run itself
    assert client().get_run(step.parent_run_id).info.status == "RUNNING"


def test_a_register_cut_off_after_its_parent_ended_reruns_in_that_parent(store, tiny_settings):
    """register logs the model through mlflow.start_run, which ended the parent FINISHED mid-register; killed after
    that (or its last write failing), the rerun opened a new parent, did not find the version the first attempt
    made (versions are looked up by run), and registered the same model twice. The pointer file still naming the
    run is what says register did not complete: the rerun reopens that run."""
    settings = tracked(tiny_settings)
    step = MlflowTracker.for_step(settings, "train_seg")
    step.close()
    cut_off = MlflowTracker.for_step(settings, "register")
    client().set_terminated(cut_off.run_id, "FINISHED")  # what leaving mlflow.start_run's block does; then killed
    assert paths.MLFLOW_PARENT_RUN.exists()
    again = MlflowTracker.for_step(settings, "register")
    assert again.run_id == step.parent_run_id == cut_off.run_id
    assert client().get_run(again.run_id).info.status == "RUNNING"
    again.close()  # a register that completes forgets the pointer: the next pipeline run gets a new parent
    assert MlflowTracker.for_step(settings, "train_seg").parent_run_id != step.parent_run_id


def test_parent_from_the_environment(store, tiny_settings, monkeypatch):
    settings = tracked(tiny_settings)
    parent = open_parent_run(settings)
    monkeypatch.setenv(PARENT_RUN_ENV, parent)
    monkeypatch.setenv("SLICEWISE_PREFECT_FLOW_RUN_ID", "flow-run-123")  # what flows/lineage.py exports
    tracker = MlflowTracker.for_step(settings, "train_cls")
    assert tracker.parent_run_id == parent and not paths.MLFLOW_PARENT_RUN.exists()
    assert client().get_run(tracker.run_id).data.tags["prefect_flow_run_id"] == "flow-run-123"
    close_parent_run(settings, parent, "FAILED")
    assert client().get_run(parent).info.status == "FAILED"
    monkeypatch.setenv(PARENT_RUN_ENV, "0123456789abcdef0123456789abcdef")
    with pytest.raises(SliceWiseError, match="names no run"):
        MlflowTracker.for_step(settings, "train_cls")


def test_disabled_tracking_gives_null_tracker(store, tiny_settings):
    (store / "mlflow.db").unlink()
    assert isinstance(make_tracker(tiny_settings, "train_seg"), NullTracker)
    assert not (store / "mlflow.db").exists()


def test_retrying_backs_off_on_transient_errors_only(tiny_settings, monkeypatch):
    cfg = tiny_settings.tracking.model_copy(update={"max_attempts": 4, "backoff_seconds": 0.01})
    calls, delays = [], []
    # the delays the retry asks for, not wall-clock gaps (which a scheduling hiccup can stretch or squeeze)
    monkeypatch.setattr(store_module.time, "sleep", delays.append)

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise MlflowException("database is locked")  # INTERNAL_ERROR: worth another try
        return "ok"

    assert retrying(cfg, "flaky call", flaky) == "ok" and len(calls) == 4
    assert delays == [0.01, 0.02, 0.04]  # exponential backoff: backoff_seconds * 2**k
    calls.clear()
    delays.clear()

    def missing():
        calls.append(1)
        raise MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST)

    with pytest.raises(MlflowException):
        retrying(cfg, "missing", missing)
    assert len(calls) == 1
    assert delays == []  # a permanent error is not retried, so never waited on
    with pytest.raises(SliceWiseError, match="failed after 4 attempt"):
        retrying(cfg, "broken", lambda: (_ for _ in ()).throw(ConnectionError("refused")))
    assert delays == [0.01, 0.02, 0.04]  # no sleep after the last attempt


def test_unreachable_server_fails_a_training_step_quickly(store, tiny_settings, monkeypatch):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(SliceWiseError, match="tracking store reachable"):
        make_tracker(tracked(tiny_settings), "train_seg")
    assert time.monotonic() - started < 60


def test_data_hash_falls_back_to_the_manifest_without_dvc_lock(tmp_path):
    manifest, splits = tmp_path / "manifest.csv", tmp_path / "splits"
    manifest.write_text("patient,label\na,1\n")
    hashes = provenance.data_hashes(tmp_path / "no.lock", manifest, splits)
    assert hashes["data_hash"].startswith("manifest:") and hashes["data_raw_hash"] == "unknown"
    assert hashes["splits_hash"] == "unknown"
    manifest.write_text("patient,label\na,0\n")
    assert provenance.data_hashes(tmp_path / "no.lock", manifest, splits)["data_hash"] != hashes["data_hash"]


def test_git_commit_outside_a_repository_is_the_one_the_image_was_built_from(monkeypatch):
    """The training image has no .git: registry versions made there carried git_commit 'unknown' although its build
    passes the commit in (SLICEWISE_GIT_COMMIT)."""
    monkeypatch.setattr(provenance, "_git", lambda *args: None)
    monkeypatch.setenv("SLICEWISE_GIT_COMMIT", "0123abc")
    assert provenance.git_commit() == "0123abc"
    monkeypatch.setenv("SLICEWISE_GIT_COMMIT", "unknown")  # the build's default when no commit was given
    assert provenance.git_commit() == provenance.UNKNOWN


def test_a_step_stopped_by_sigterm_ends_its_runs_killed_and_its_next_attempt_goes_on(store, tiny_settings,
                                                                                        stop_signals):
    """SIGTERM (timeout, docker stop, a cancelled flow) had no handler: the process vanished and its runs stayed
    RUNNING. `python -m tasks` now turns it into SystemExit, which the step's tracked block ends KILLED."""
    import os
    import signal

    from tasks.tracking.tracker import tracked_step

    settings = tracked(tiny_settings)
    with pytest.raises(SystemExit) as stopped, tracked_step(settings, "train_seg") as tracker:
        os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert client().get_run(tracker.run_id).info.status == "KILLED"
    parent = client().get_run(tracker.parent_run_id)
    assert parent.info.status == "KILLED" and parent.data.tags["failed_step"] == "train_seg"
    again = MlflowTracker.for_step(settings, "train_seg")
    assert again.parent_run_id == tracker.parent_run_id  # the pipeline run goes on
    assert client().get_run(tracker.parent_run_id).info.status == "RUNNING"


def test_a_run_left_running_by_a_killed_process_is_ended_when_its_step_runs_again(store, tiny_settings):
    """SIGKILL cannot be caught: the step's next attempt ends the run it left RUNNING (the pipeline lock lets one
    run work in a project at a time), and leaves the other steps' runs alone."""
    settings = tracked(tiny_settings)
    killed = MlflowTracker.for_step(settings, "train_seg")  # never closed: its process was SIGKILLed
    other = MlflowTracker.for_step(settings, "train_cls")  # another step, still running
    again = MlflowTracker.for_step(settings, "train_seg")
    assert again.parent_run_id == killed.parent_run_id and again.run_id != killed.run_id
    assert client().get_run(killed.run_id).info.status == "KILLED"
    assert client().get_run(other.run_id).info.status == client().get_run(again.run_id).info.status == "RUNNING"


def test_a_database_store_that_is_down_is_one_error_without_its_password(monkeypatch):
    """A PostgreSQL store that did not answer gave a 200-line OperationalError traceback: MlflowClient connects to a
    database when it is created, outside the retry loop that turns failures into one line."""
    from mlflow.store.db import utils as db_utils

    from tasks.config import TrackingSettings
    from tasks.tracking.store import StoreUnreachable, make_client

    monkeypatch.setattr(db_utils, "MAX_RETRY_COUNT", 1)  # MLflow's own engine retries (about 2 min): not tested here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql+psycopg2://u:secretpw@127.0.0.1:9/db")
    with pytest.raises(StoreUnreachable, match="MLflow connection failed after 1 attempt.*Is the tracking store "
                                               "reachable") as error:
        make_client(TrackingSettings(max_attempts=3, backoff_seconds=0))
    assert "secretpw" not in str(error.value) and "u:***@127.0.0.1:9" in str(error.value)


def test_a_kaggle_run_is_tagged_with_the_data_set_versions_it_was_built_from(tmp_path, monkeypatch, tiny_settings):
    """The data hash said that Kaggle data changed, not to which version: the tags now name them (tasks lineage
    prints them), read from what fetch recorded in data/raw."""
    import json

    from tasks import paths
    from tasks.tracking import provenance

    monkeypatch.chdir(tmp_path)
    paths.KAGGLE_VERSIONS.parent.mkdir(parents=True)
    paths.KAGGLE_VERSIONS.write_text(json.dumps({"brats": {"dataset": "a/brats", "version": 3},
                                                 "images": {"dataset": "b/photos", "version": 1}}))
    kaggle = tiny_settings.model_copy(update={"data": tiny_settings.data.model_copy(update={"source": "kaggle"})})
    assert provenance.run_tags(kaggle)["kaggle_versions"] == "a/brats: v3, b/photos: v1"
    assert "kaggle_versions" not in provenance.run_tags(tiny_settings)  # synthetic: no Kaggle version to name
    paths.KAGGLE_VERSIONS.write_text("{not json")
    assert "kaggle_versions" not in provenance.run_tags(kaggle)  # a damaged record names nothing, and fails nothing

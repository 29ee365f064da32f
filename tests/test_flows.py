"""The Prefect flow against real DVC on a tiny copy of the project: DVC decides, both front doors agree.

One Prefect test server for the whole session (it takes ~15 s to start). The pipeline tests keep only the DVC
stages that produce data (fetch, slice, split), so they stay fast and never train; the other tasks are Skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from prefect import flow, get_client
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort
from prefect.settings import PREFECT_API_URL
from prefect.states import Failed
from prefect.testing.utilities import prefect_test_harness

from flows import artifacts, dvc_stage, lineage
from flows.dask_slicing import dask_task_runner
from flows.deploy import DEPLOYMENT_NAME, build_deployment
from flows.pipeline import STAGE_TASKS, slicewise_pipeline, step_runs_for
from flows.source_inventory import local_source_drift
from flows.stage_task import worth_retrying
from tasks import STEPS
from tasks.config import load_settings
from tasks.data.local_import import import_brats, import_kaggle
from tasks.errors import CredentialsError, SliceWiseError
from tasks.params_edit import set_params
from tests.nifti_factory import write_kaggle, write_patient
from tests.project_copy import ROOT, copy_project, dvc

DATA_STAGES = ["fetch", "slice", "split"]
SMALL = {"profiles.quick.synthetic_patients": 3, "profiles.quick.synthetic_kaggle_images": 4}


@pytest.fixture(scope="session")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A git + DVC copy of the project with the data stages only and tiny params; the working directory."""
    root = copy_project(tmp_path / "project", stages=DATA_STAGES, **SMALL)
    monkeypatch.chdir(root)
    return root


def run_flow(**params):
    """Run the flow in-process; returns (final state, stage → outcome or None when it failed)."""
    state = slicewise_pipeline(**params, return_state=True)
    return state, state.result() if state.is_completed() else None


def states_of(outcomes: dict) -> dict[str, str]:
    return {stage: outcome["state"] for stage, outcome in outcomes.items() if outcome["state"] != "Skipped"}


def task_runs(state) -> dict:
    # limit and sort spelled out: Prefect 3.8.8's client sends nulls for them, which its server rejects (422).
    with get_client(sync_client=True) as client:
        this_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        runs = client.read_task_runs(flow_run_filter=this_run, sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=50)
    return {run.name: run for run in runs}


def subflow_runs(state) -> list:
    """(flow name, flow run) of the flow runs started inside this one's tasks (e.g. slice-on-dask)."""
    from prefect.client.schemas.filters import FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        parent = FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=parent), limit=10, offset=0,
                                     sort="EXPECTED_START_TIME_ASC")
        return [(client.read_flow(run.flow_id).name, run) for run in runs]


def flow_run_logs(state) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs go to the server in batches; send what is queued
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])),
                                limit=200, offset=0, sort=LogSort.TIMESTAMP_ASC)
    return [log.message for log in logs]


def lock_stages(root) -> dict:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


def clean(root) -> bool:
    status = dvc(root, "status")
    return status.returncode == 0 and "up to date" in status.stdout


# ---- configuration (no server needed) -------------------------------------------------------------------------


def test_one_task_per_step_with_retries_only_where_the_network_is():
    assert [t.name for t in STAGE_TASKS] == list(STEPS)
    for task in STAGE_TASKS:
        assert task.cache_policy is NO_CACHE and task.persist_result is False
        assert task.timeout_seconds and task.timeout_seconds > 0
        if task.name in ("fetch", "register"):
            assert task.retries == 3
            assert task.retry_delay_seconds == [10, 20, 40]  # exponential backoff
            assert task.retry_condition_fn is worth_retrying
        else:
            assert task.retries == 0, f"{task.name} is deterministic and must not retry"


def test_user_errors_are_not_retried_but_transient_ones_are():
    def wrapped_connection_error():
        try:
            raise ConnectionError("reset by peer")
        except ConnectionError as exc:
            raise SliceWiseError("MLflow log failed after 3 attempt(s)") from exc

    try:
        wrapped_connection_error()
    except SliceWiseError as exc:
        wrapped = exc
    decide = lambda exc: worth_retrying(None, None, Failed(data=exc))  # noqa: E731
    assert decide(ConnectionError("reset")) and decide(TimeoutError()) and decide(wrapped)
    from prefect.task_engine import TaskRunTimeoutError  # the task's own timeout: it stops a hung step, for good

    assert not decide(TaskRunTimeoutError("Task run exceeded timeout of 14400 second(s)"))
    assert not decide(SliceWiseError("data.brats_dir is not a folder", "/nowhere"))
    assert not decide(CredentialsError("no kaggle.json"))

    def wrapped(cause: BaseException, error: type = SliceWiseError) -> SliceWiseError:
        try:
            raise error("step failed") from cause
        except SliceWiseError as exc:
            return exc

    class HttpError(Exception):
        def __init__(self, status: int):
            super().__init__(f"HTTP {status}")
            self.response = type("Response", (), {"status_code": status})()

    # what only the user can fix: a bad parameter, a missing metrics.json, a bug, refused credentials
    assert not decide(KeyError("accuracy")) and not decide(wrapped(FileNotFoundError("reports/metrics.json")))
    assert not decide(wrapped(ValueError("profile 'quik' is not defined")))
    assert not decide(wrapped(HttpError(403), CredentialsError)) and not decide(wrapped(HttpError(404)))
    # what a minute may fix: a server error, rate limiting, a socket error deep inside a library's own exception
    assert decide(wrapped(HttpError(503))) and decide(wrapped(HttpError(429)))
    assert decide(wrapped(RuntimeError(ConnectionResetError("reset by peer"))))


def test_deployment_uses_the_cron_in_params(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    set_params({"schedule.cron": "15 4 * * 2", "schedule.timezone": "Europe/Paris"}, params)
    deployment = build_deployment(load_settings(params))
    assert deployment.name == DEPLOYMENT_NAME and deployment.flow_name == "slicewise-pipeline"
    (schedule,) = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("15 4 * * 2", "Europe/Paris")
    assert deployment.entrypoint == "flows.pipeline.slicewise_pipeline"


def test_a_cron_prefect_refuses_is_one_error_naming_the_key(tmp_path, monkeypatch):
    """Prefect refused "0 3 * *" with a pydantic traceback from inside `flows serve`. Now params.yaml refuses it when
    it is read (`tasks set` too, leaving the file as it was), and the deployment, should such settings reach it
    another way, says which key and why before serving."""
    from flows.deploy import retraining_schedule
    from tasks.config import ScheduleSettings

    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    with pytest.raises(SliceWiseError, match=r"schedule.cron '0 3 \* \*' is not a cron expression"):
        set_params({"schedule.cron": "0 3 * *"}, params)
    for zone in ("Mars/Olympus", "Europe"):  # no such zone; a folder of zones
        with pytest.raises(SliceWiseError, match=f"schedule.timezone '{zone}' is not an IANA time zone"):
            set_params({"schedule.timezone": zone}, params)
    assert params.read_text() == (ROOT / "params.yaml").read_text()

    def with_schedule(**schedule):  # past the validation, as a hand-built Settings would be
        settings = load_settings(params)
        return settings.model_copy(update={"schedule": ScheduleSettings.model_construct(**{
            "cron": "0 3 * * 1", "timezone": "UTC", **schedule})})

    with pytest.raises(SliceWiseError, match=r"schedule.cron '0 3 \* \*'.*not a schedule Prefect accepts"):
        build_deployment(with_schedule(cron="0 3 * *"))
    for zone in ("Mars/Olympus", "Europe"):  # no such zone; a folder of zones (IsADirectoryError, an OSError)
        with pytest.raises(SliceWiseError, match=zone):
            retraining_schedule(with_schedule(timezone=zone))


def test_flows_cli_errors_are_one_line_with_their_brackets_and_a_down_server_is_named(tmp_path, monkeypatch):
    """An error's text is printed as text: Rich markup swallowed "[flair, t1, t1ce, t2]" from the example in a
    message. And `flows run` against a PREFECT_API_URL where nothing answers says so, instead of Prefect's
    traceback."""
    import typer
    from typer.testing import CliRunner

    import flows.__main__ as cli

    import io

    from rich.console import Console

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=200))
    with pytest.raises(typer.Exit):
        cli._fail("profiles.quick.modalities must be a list, e.g. [flair, t1]; got 'flair'")
    assert "e.g. [flair, t1]; got 'flair'" in cli.console.file.getvalue()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        result = CliRunner().invoke(cli.app, ["run"])
    printed = " ".join(cli.console.file.getvalue().split())
    assert result.exit_code == 1 and "no Prefect server answers at PREFECT_API_URL=http://127.0.0.1:9/api" in printed


def test_a_throw_away_server_that_starts_slowly_gets_longer_and_one_that_never_starts_is_one_line(monkeypatch):
    """Review 2026-12-07: a first `flows run` (fresh PREFECT_HOME) beside other work timed out after Prefect's 20 s
    for its throw-away server, with a page of traceback. It now waits EPHEMERAL_STARTUP_SECONDS unless told otherwise,
    and a server that never answers is one line saying what to do."""
    import io

    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings
    from rich.console import Console
    from typer.testing import CliRunner

    import flows.__main__ as cli
    import flows.pipeline

    waited = []

    def slow_server(**_):
        waited.append(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server. stdout: ...")

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=300))
    monkeypatch.setattr(cli, "_server_up", lambda url: False)
    monkeypatch.setattr(flows.pipeline, "slicewise_pipeline", slow_server)
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(cli.app, ["run"])
        monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "30")
        CliRunner().invoke(cli.app, ["run"])
    printed = " ".join(cli.console.file.getvalue().split())
    assert result.exit_code == 1 and "Traceback" not in printed
    assert f"throw-away server did not start within {cli.EPHEMERAL_STARTUP_SECONDS} s" in printed
    assert waited == [cli.EPHEMERAL_STARTUP_SECONDS, 30]  # a value the user set stands


def test_the_console_drops_prefects_lines_about_a_failure_the_cli_says_itself(monkeypatch):
    """`flows run` ends with the failed step in one red line; Prefect's task and flow run lines repeating it (and the
    flow's own record of it) stay off the console, and so do a stage task's Cached and Completed lines; everything
    else passes."""
    import logging

    from flows.__main__ import ConsoleSaysFailuresOnce
    from flows.pipeline import StepFailed

    # records as Prefect makes them, whatever factories earlier tests left (the redaction turns exceptions into text)
    monkeypatch.setattr(logging, "_logRecordFactory", logging.LogRecord)

    def record(logger: str, message: str, **extra) -> logging.LogRecord:
        made = logging.getLogger(logger).makeRecord(logger, logging.ERROR, __file__, 1, message, (), None)
        made.__dict__.update(extra)
        return made

    console = ConsoleSaysFailuresOnce()
    dropped = [record("prefect.task_runs", "Finished in state Failed('Task run encountered an exception "
                                           "SliceWiseError: /data: no BraTS NIfTI files')"),
               record("prefect.task_runs", "Finished in state Failed('Task run encountered an exception "
                                           "CredentialsError: Kaggle refused the credentials')"),  # a subclass
               record("prefect.flow_runs", "Finished in state Failed('Flow run encountered an exception: "
                                           "StepFailed: step 'fetch' failed: ...')"),
               record("prefect.flow_runs", "step 'fetch' failed: ...", said_in_one_line=True),
               # a stage task's own line said it, and the table of stages says it again
               record("prefect.task_runs", "Finished in state Cached('up to date with dvc.lock entry sha256:ab')"),
               record("prefect.task_runs", "Finished in state Completed('ran (no dvc.lock entry yet); ...')")]
    kept = [record("prefect.task_runs", "Finished in state Failed('Task run encountered an exception KeyError: "
                                        "'dice'')"),  # a bug: its traceback and lines stay
            record("prefect.flow_runs", "Finished in state Completed()"),  # the flow run's end
            record("prefect.flow_runs", "fetch: running (changed deps: params.yaml)"),
            record("tasks.fetch", "Finished in state Failed(' SliceWiseError: ')")]  # not a run logger's
    try:
        raise StepFailed("step 'fetch' failed: ...")
    except StepFailed:  # Prefect's "Encountered exception during execution", made before the CLI's record factory
        dropped.append(logging.getLogger("prefect.flow_runs").makeRecord(
            "prefect.flow_runs", logging.ERROR, __file__, 1, "Encountered exception during execution", (),
            sys.exc_info()))
    assert [console.filter(r) for r in dropped] == [False] * len(dropped)
    assert [console.filter(r) for r in kept] == [True] * len(kept)


def test_failures_said_in_one_line_lose_their_traceback_in_the_log_others_keep_it(monkeypatch):
    """Prefect logs a failed task or flow run with its traceback, to a console handler of its own: a step's
    SliceWiseError came out as two tracebacks above the one red line. The CLI's record factory drops them for
    failures already said in words (a SliceWiseError, StepFailed, or one caused by them), and keeps any other."""
    import logging

    import flows.__main__ as cli
    from flows.pipeline import StepFailed

    from tasks.redaction import install_log_redaction

    monkeypatch.setattr(logging, "_logRecordFactory", logging.LogRecord)  # restored after the test
    install_log_redaction()  # as a step's MLflow client may have done before: ours goes beneath it all the same
    cli.install_log_factories()
    cli.install_log_factories()  # idempotent

    def record_of(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            return logging.getLogger("prefect.task_runs").makeRecord(
                "prefect.task_runs", logging.ERROR, __file__, 1, "Task run failed", (), sys.exc_info())

    def caused(exc: BaseException, cause: BaseException) -> BaseException:
        exc.__cause__ = cause
        return exc

    for said in (SliceWiseError("data.brats_dir is not a folder", "/nope"), StepFailed("fetch failed"),
                 caused(RuntimeError("task failed"), SliceWiseError("no such file"))):
        record = record_of(said)
        assert record.exc_info is None and not record.exc_text
    bug = record_of(KeyError("unexpected"))
    assert "Traceback" in (bug.exc_text or "") and "KeyError" in bug.exc_text


def test_flows_run_refuses_a_missing_source_folder_or_a_bad_api_url_before_anything_runs(tmp_path, monkeypatch):
    """A local source whose folder is missing was found by fetch, after the flow had removed data/raw; a
    PREFECT_API_URL without a scheme was urlopen's ValueError, as a traceback."""
    import io

    from rich.console import Console
    from typer.testing import CliRunner

    import flows.__main__ as cli

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=300))
    before = (ROOT / "params.yaml").read_text()
    result = CliRunner().invoke(cli.app, ["run", "--data-source", "local", "--brats-dir", str(tmp_path / "nope")])
    said = cli.console.file.getvalue()
    assert result.exit_code == 1 and f"{tmp_path / 'nope'}: data.brats_dir is not a folder" in said
    assert (ROOT / "params.yaml").read_text() == before
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: "localhost:4200/api"}):
        result = CliRunner().invoke(cli.app, ["run"])
    assert result.exit_code == 1 and "must start with http:// or https://" in cli.console.file.getvalue()


def test_metrics_rows_and_model_card_carry_intervals_and_decision():
    metrics = {"classification": {"accuracy": 0.91, "sensitivity": 0.8, "confusion_matrix": [[5, 1], [2, 7]], "n": 15},
               "segmentation": {"dice": 0.72}, "segmentation_volume": {"dice": 0.75, "n_patients": 2},
               "ci95": {"classification.accuracy": [0.85, 0.96], "segmentation.dice": [0.6, 0.8]}}
    rows = {row["metric"]: row for row in artifacts.metrics_rows(metrics)}
    assert rows["classification.accuracy"] == {"metric": "classification.accuracy", "value": 0.91,
                                               "ci95_low": 0.85, "ci95_high": 0.96}
    assert rows["segmentation_volume.dice"]["ci95_low"] is None
    assert "classification.confusion_matrix" not in rows
    card = artifacts.model_card_markdown({"version": "7", "promoted": False, "reason": "accuracy 0.70 < 0.85"},
                                         {"image_size": 128}, metrics)
    assert "version 7**: not promoted" in card and "accuracy 0.70 < 0.85" in card
    assert "| classification.accuracy | 0.91 | [0.85, 0.96] |" in card and "TN 5, FP 1, FN 2, TP 7" in card
    unregistered = {"version": None, "promoted": False, "reason": "not registered (tracking.enabled is false)"}
    assert "**slicewise**: not registered" in artifacts.model_card_markdown(unregistered, None, None)


def test_the_decision_line_of_a_reused_version_says_nothing_moved():
    decision = {"model_name": "slicewise", "version": "16", "promoted": True}
    assert artifacts.decision_line(decision) == "**slicewise version 16**: promoted to champion"
    assert artifacts.decision_line(decision | {"reused": True}) == \
        "**slicewise version 16**: already held this model, still champion"


def test_metrics_rows_survive_a_null_interval():
    metrics = {"classification": {"accuracy": 0.91}, "segmentation": {"hd95": 30.0},
               "ci95": {"classification.accuracy": None, "segmentation.hd95": [None, 40.0]}}
    rows = {row["metric"]: row for row in artifacts.metrics_rows(metrics)}
    assert rows["classification.accuracy"]["ci95_low"] is None and rows["segmentation.hd95"]["ci95_high"] == 40.0
    assert artifacts.metrics_rows({"classification": {"accuracy": 0.9}, "ci95": None})[0]["ci95_low"] is None


def test_local_source_drift_compares_the_source_with_data_raw(tmp_path):
    rng = np.random.default_rng(0)
    source, kaggle, raw = tmp_path / "brats", tmp_path / "kaggle", tmp_path / "raw"
    for i in range(3):
        write_patient(source / "nested", f"BraTS20_Training_00{i + 1}", rng)
    write_kaggle(kaggle, rng, n_per_class=2)
    import_brats(source, raw / "brats")
    import_kaggle(kaggle, raw / "kaggle")
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    set_params({"data.source": "local", "data.brats_dir": str(source), "data.kaggle_dir": str(kaggle)}, params)
    settings = load_settings(params)

    assert local_source_drift(settings, raw) is None
    write_patient(source / "nested", "BraTS20_Training_004", rng)
    drift = local_source_drift(settings, raw)
    assert drift and "5 new" in drift and "BraTS20_Training_004" in drift  # the patient's five NIfTI files
    (kaggle / "no" / "0 no.PNG").unlink()
    assert "1 removed" in local_source_drift(settings, raw)
    os.link(raw / "kaggle" / "no" / "0 no.PNG", kaggle / "no" / "0 no.PNG")  # back as it was fetched
    shutil.rmtree(source / "nested" / "BraTS20_Training_004")
    assert local_source_drift(settings, raw) is None
    # a corrected segmentation saved over the old one (through a temporary file, as many editors save): same size
    seg = next((source / "nested" / "BraTS20_Training_002").glob("*_seg.nii*"))
    corrected = seg.with_suffix(".tmp")
    corrected.write_bytes(seg.read_bytes()[::-1])  # other bytes, the same size
    fetched = next((raw / "brats" / "BraTS20_Training_002").glob("*_seg.nii*")).stat().st_mtime_ns
    os.utime(corrected, ns=(fetched + 10**9, fetched + 10**9))  # 1 s newer: within a FAT copy's 2 s rounding
    corrected.replace(seg)
    assert local_source_drift(settings, raw) is None
    os.utime(seg, ns=(fetched + 3 * 10**9, fetched + 3 * 10**9))  # saved after the fetch, beyond the slack
    drift = local_source_drift(settings, raw)
    assert drift and "1 changed" in drift and "BraTS20_Training_002" in drift
    set_params({"data.source": "synthetic"}, params)
    assert local_source_drift(load_settings(params), raw) is None  # DVC's params cover the synthetic source


def test_dvc_changes_are_described_in_one_line():
    changes = [{"changed deps": {"params.yaml": {"split": "modified"}, "tasks/split.py": "modified"}},
               {"changed outs": {"data/splits": "deleted"}}, "always changed"]
    line = dvc_stage.describe_changes(changes)
    assert line == ("changed deps: params.yaml (split: modified), tasks/split.py (modified); "
                    "changed outs: data/splits (deleted); always changed")


def test_slice_runner_is_a_flow_parameter_not_a_dvc_param(monkeypatch):
    assert step_runs_for("processes", None) == {}  # run_step("slice"): what dvc repro runs
    assert set(step_runs_for("dask", "tcp://10.0.0.5:8786")) == {"slice"}
    with pytest.raises(ValueError, match="needs slice_runner='dask'"):
        step_runs_for("processes", "tcp://10.0.0.5:8786")
    assert dask_task_runner("tcp://10.0.0.5:8786", workers=2).address == "tcp://10.0.0.5:8786"
    local = dask_task_runner(None, workers=3)
    assert local.address is None and local.cluster_kwargs["n_workers"] == 3
    assert local.cluster_kwargs["processes"] and local.cluster_kwargs["threads_per_worker"] == 1
    assert "slice_runner" not in (ROOT / "params.yaml").read_text()  # DVC must not see it

    from typer.testing import CliRunner

    from flows.__main__ import app

    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, ["run", "--dask-address", "tcp://10.0.0.5:8786"])
    assert result.exit_code == 1 and "--dask-address needs --slice-runner dask" in result.output


# ---- the flow against real DVC ---------------------------------------------------------------------------------


def test_the_flow_keeps_register_like_stages_out_of_dvcs_run_cache(tmp_path, monkeypatch):
    """`dvc repro` does not record a stage with an uncached output that is no metric or plot in its run cache, so
    it is never "restored" instead of run (register must register, whatever its files say). The flow's commit
    follows the same rule; a stage with cached outputs is recorded, as repro records it."""
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    assert dvc(tmp_path, "init", "-q").returncode == 0
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "make": {"cmd": "echo made > made.txt", "deps": ["source.txt"], "outs": ["made.txt"]},
        "announce": {"cmd": "echo done > announce.json", "deps": ["made.txt"],
                     "outs": [{"announce.json": {"cache": False}}]}}}))
    runs = tmp_path / ".dvc" / "cache" / "runs"
    entries = lambda: sorted(p for p in runs.rglob("*") if p.is_file()) if runs.exists() else []  # noqa: E731

    (tmp_path / "source.txt").write_text("source\n")
    (tmp_path / "made.txt").write_text("made\n")
    dvc_stage.commit_stage("make")
    assert len(entries()) == 1
    (tmp_path / "announce.json").write_text("done\n")
    dvc_stage.commit_stage("announce")
    assert len(entries()) == 1  # no entry for announce
    assert set(yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]) == {"make", "announce"}
    assert dvc(tmp_path, "status").stdout.strip() == "Data and pipelines are up to date."


def one_stage_project(root: Path, monkeypatch) -> None:
    """A git + DVC project in `root` (the working directory) with one stage, `make`, whose output is there to record."""
    monkeypatch.chdir(root)
    subprocess.run(["git", "init", "-q"], check=True)
    assert dvc(root, "init", "-q").returncode == 0
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "make": {"cmd": "echo made > made.txt", "deps": ["source.txt"], "outs": ["made.txt"]}}}))
    (root / "source.txt").write_text("source\n")
    (root / "made.txt").write_text("made\n")


@pytest.mark.slow
def test_a_dvc_repro_during_a_flow_run_is_refused_before_it_clears_an_output(project, prefect_server, monkeypatch):
    """Noticed 2026-12-07: `dvc repro` clears a stale stage's outputs before the stage's command meets the pipeline
    lock, so one started while the flow had written split's lists, not yet recorded, deleted them, and the flow's
    commit failed. The flow now holds DVC's own lock on every output: the `dvc repro` is refused at its first stage,
    naming the flow's process, and touches nothing."""
    import flows.stage_task as stage_task

    real_step, seen = stage_task.run_step, {}

    def step_then_dvc_repro(stage: str) -> dict:
        result = real_step(stage)
        if stage == "split":  # written, not yet recorded in dvc.lock: what a `dvc repro` would find stale and clear
            seen["lists"] = sorted(p.name for p in (project / "data" / "splits").iterdir())
            seen["repro"] = dvc(project, "repro", timeout=300)
            seen["after"] = sorted(p.name for p in (project / "data" / "splits").iterdir())
        return result

    monkeypatch.setattr(stage_task, "run_step", step_then_dvc_repro)
    state, outcomes = run_flow()
    said = seen["repro"].stdout + seen["repro"].stderr
    assert seen["repro"].returncode != 0, said
    assert "is busy, it is being blocked by" in said and f"(PID {os.getpid()})" in said, said
    assert "another pipeline run" not in said  # refused by DVC's lock, before the step's command could start
    assert seen["lists"] and seen["after"] == seen["lists"]
    assert state.is_completed(), state.message
    assert states_of(outcomes) == dict.fromkeys(DATA_STAGES, "Completed") and clean(project)
    rwlock = json.loads((project / ".dvc" / "tmp" / "rwlock").read_text())
    assert not rwlock.get("write") and not rwlock.get("read")  # given back at the flow's end
    assert dvc(project, "repro").returncode == 0  # and a `dvc repro` after the flow runs


def test_a_flow_waits_for_no_dvc_command_that_holds_an_output(project):
    """A flow started while `dvc repro` is in the middle of a stage (DVC's lock on that stage's outputs) is refused
    in one line naming the lock and the DVC command, before it changes params.yaml or any output."""
    from dvc.repo import Repo
    from dvc.rwlock import rwlock

    with Repo(str(project)) as repo:
        (out,) = [out.fs_path for stage in repo.index.stages if stage.name == "split" for out in stage.outs]
        tmp_dir, fs = repo.tmp_dir, repo.fs
    os.makedirs(tmp_dir, exist_ok=True)
    with rwlock(tmp_dir, fs, "dvc repro", [], [out], False):  # as `dvc repro` holds it while split's command runs
        refused = r"working on the pipeline's outputs \(.*data/splits' is busy, it is being blocked by: \(PID \d+\)"
        with pytest.raises(SliceWiseError, match=refused):
            with dvc_stage.outputs_held():
                pytest.fail("the flow held outputs DVC was writing")
    with dvc_stage.outputs_held():  # free again once DVC gave it up
        pass


def test_a_dvc_status_under_way_when_a_flow_starts_is_waited_for(project):
    """`dvc status` holds read entries on each stage's files while it checks it (review 2026-12-08: one typed as a
    flow started refused the flow). It holds them under DVC's repository lock, which the flow waits for."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import time
        from dvc.repo import Repo
        from dvc.rwlock import rwlock
        with Repo(".") as repo:
            (out,) = [o.fs_path for stage in repo.index.stages if stage.name == "split" for o in stage.outs]
            repo.lock.lock()
            with rwlock(repo.tmp_dir, repo.fs, "dvc status", [out], [], False):
                print("held", flush=True)
                time.sleep(4)
            open("released", "w").close()
            repo.lock.unlock()
    """)], cwd=project, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with dvc_stage.outputs_held():  # waited for, not refused
            assert (project / "released").exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_flows_lock_on_the_outputs_is_given_back_whatever_the_file_held(project, caplog):
    """Review 2026-12-08: entries a run killed outright left under this process's pid and command line (a container's
    flow gets the same pid at each start) were taken by DVC for this run's own and never given back; and a lock file
    removed during the run made the flow's end a bare AssertionError."""
    rwlock_file = project / ".dvc" / "tmp" / "rwlock"
    rwlock_file.parent.mkdir(parents=True, exist_ok=True)
    twin = {"pid": os.getpid(), "cmd": " ".join(sys.argv)}
    out = str((project / "data" / "splits").resolve())
    rwlock_file.write_text(json.dumps({"write": {out: twin}, "read": {out: [twin]}}))
    with dvc_stage.outputs_held():
        pass
    left = json.loads(rwlock_file.read_text())
    assert not left.get("write") and not left.get("read"), left
    with dvc_stage.outputs_held():
        rwlock_file.unlink()
    assert "lost this flow's entries" in caplog.text


def test_a_signal_while_the_flow_records_a_stage_waits_until_dvc_lock_is_whole(tmp_path, monkeypatch):
    """Review 2026-12-07: a SIGTERM (or Ctrl-C) that reached the flow while DVC rewrote dvc.lock in place left the file
    empty or cut mid-line, and neither `dvc` nor the flow could start again. The signal now takes effect after."""
    import signal

    from dvc.utils.serialize import _yaml

    one_stage_project(tmp_path, monkeypatch)
    real_dump = _yaml._dump

    def terminated_while_writing(data, stream):  # the file is open and empty: the worst moment
        os.kill(os.getpid(), signal.SIGTERM)
        return real_dump(data, stream)

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    monkeypatch.setattr(_yaml, "_dump", terminated_while_writing)
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        with pytest.raises(SystemExit):
            dvc_stage.commit_stage("make")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "make" in yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]  # whole, then the signal
    assert dvc(tmp_path, "status").stdout.strip() == "Data and pipelines are up to date."


def test_a_stage_names_its_code_edited_since_the_flow_read_the_pipeline(tmp_path, monkeypatch):
    """What `code_edited` compares: the stage's code deps in dvc.yaml (files and folders), file by file."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    for folder in ("tasks", "models"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    status = dvc_stage.PipelineStatus(["split", "train_seg"], {}, {})
    assert status.code_edited("train_seg") == [] and status.code_edited("split") == []

    stage_module = tmp_path / "tasks" / "training" / "stage.py"
    stage_module.write_text(stage_module.read_text() + "\n# edited\n")  # under train_seg's folder dep tasks/training
    (tmp_path / "models" / "extra.py").write_text("WIDTH = 2\n")  # a new file in the models folder dep
    assert status.code_edited("train_seg") == ["models/extra.py", "tasks/training/stage.py"]
    assert status.code_edited("split") == []  # neither is split's code


def test_the_flow_waits_for_dvcs_lock_to_record_a_step_and_says_so_when_it_gives_up(tmp_path, monkeypatch):
    """Any DVC command holds the repository's lock while it runs; DVC's own wait gives up after 3 s, so a step that
    had just finished failed to record itself in dvc.lock (and ran again on the next flow run)."""
    one_stage_project(tmp_path, monkeypatch)

    def hold_lock(seconds: float) -> subprocess.Popen:
        holder = subprocess.Popen([sys.executable, "-c", "import sys, time, zc.lockfile; "
                                   "lock = zc.lockfile.LockFile('.dvc/tmp/lock'); print('held', flush=True); "
                                   "time.sleep(float(sys.argv[1]))", str(seconds)], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        return holder

    holder = hold_lock(5)  # longer than DVC's own 3 s
    dvc_stage.commit_stage("make")
    holder.wait()
    assert "make" in yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]
    # asking whether a stage is fresh waits alike (a `dvc status` typed meanwhile failed the flow at its next stage)
    (tmp_path / "source.txt").write_text("changed\n")
    holder = hold_lock(5)
    assert dvc_stage.stage_changes("make") and dvc_stage.PipelineStatus.read().stale
    holder.wait()
    monkeypatch.setattr(dvc_stage, "LOCK_WAIT_SECONDS", 1)
    holder = hold_lock(8)
    try:
        with pytest.raises(SliceWiseError, match="another DVC command has held the repository's lock for over 1 s"):
            dvc_stage.commit_stage("make")
        with pytest.raises(SliceWiseError, match="another DVC command has held the repository's lock for over 1 s"):
            dvc_stage.stage_changes("make")
    finally:
        holder.kill()


@pytest.mark.slow
def test_flow_agrees_with_dvc_repro_in_both_directions(project, prefect_server, monkeypatch):
    repro = dvc(project, "repro")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    lock_after_repro = (project / "dvc.lock").read_text()

    # 1. After `dvc repro` the flow recomputes nothing: every stage is Cached with its dvc.lock fingerprint.
    state, outcomes = run_flow()
    assert state.is_completed(), state.message
    assert states_of(outcomes) == dict.fromkeys(DATA_STAGES, "Cached")
    assert {name: run.state.name for name, run in task_runs(state).items() if name in DATA_STAGES} == \
        dict.fromkeys(DATA_STAGES, "Cached")  # as the server (and the UI) records them
    for stage in DATA_STAGES:
        assert outcomes[stage]["lock_sha256"] == dvc_stage.lock_fingerprint(stage) != ""
    assert (project / "dvc.lock").read_text() == lock_after_repro

    # 2. A failing step fails the flow with its name; it commits nothing, and the lineage env var was set.
    original_splits = {p.name: p.read_bytes() for p in (project / "data" / "splits").iterdir()}
    set_params({"split.val": 0.2, "split.train": 0.65})
    seen = {}

    def broken_split(settings):
        seen["flow_run_id"] = os.environ.get(lineage.FLOW_RUN_ENV)
        raise RuntimeError("disk on fire")

    with monkeypatch.context() as patch:
        patch.setattr("tasks.split.main", broken_split)
        failed, _ = run_flow()
    assert failed.is_failed()
    assert "step 'split' failed" in failed.message and "disk on fire" in failed.message
    assert seen["flow_run_id"] == str(failed.state_details.flow_run_id)
    assert lineage.FLOW_RUN_ENV not in os.environ
    assert lock_stages(project)["split"]["params"]["params.yaml"]["split"]["val"] == 0.15  # the old entry stays
    with get_client(sync_client=True) as client:
        tags = client.read_flow_run(failed.state_details.flow_run_id).tags
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout
    assert {"profile:quick", "source:synthetic", f"git:{commit[:12]}"} <= set(tags)

    # 2b. Its code edited while the step runs (in the flow's process, with the modules it had loaded): the flow fails
    # naming the file, and dvc.lock keeps the old entry instead of recording the edit as what the step ran.
    splitting = project / "tasks" / "data" / "splitting.py"
    code = splitting.read_text()
    import tasks.split

    real_split = tasks.split.main

    def split_while_edited(settings):
        splitting.write_text(code + "\n# edited while the step ran\n")
        return real_split(settings)

    with monkeypatch.context() as patch:
        patch.setattr("tasks.split.main", split_while_edited)
        edited, _ = run_flow()
    splitting.write_text(code)
    assert edited.is_failed() and "tasks/data/splitting.py changed while this flow ran" in edited.message
    assert lock_stages(project)["split"]["params"]["params.yaml"]["split"]["val"] == 0.15

    # 3. A changed split parameter reruns split only; afterwards DVC finds everything up to date ...
    state, outcomes = run_flow()
    assert states_of(outcomes) == {"fetch": "Cached", "slice": "Cached", "split": "Completed"}
    assert "params.yaml (split: modified)" in outcomes["split"]["reason"]
    assert clean(project)
    # ... and the lock entry the flow committed is byte for byte the one `dvc repro` writes for that run.
    entry_by_flow = lock_stages(project)["split"]
    forced = dvc(project, "repro", "--force", "--single-item", "split")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert lock_stages(project)["split"] == entry_by_flow

    # 4. Setting the parameter back restores the earlier splits from DVC's run cache, as `dvc repro` would.
    set_params({"split.val": 0.15, "split.train": 0.7})
    state, outcomes = run_flow()
    assert states_of(outcomes) == dict.fromkeys(DATA_STAGES, "Cached")
    assert "run cache" in outcomes["split"]["reason"]
    assert {p.name: p.read_bytes() for p in (project / "data" / "splits").iterdir()} == original_splits
    assert clean(project)


@pytest.mark.slow
def test_new_local_patient_triggers_fetch_and_reslices_only_it(project, tmp_path, prefect_server):
    rng = np.random.default_rng(1)
    source = tmp_path / "source"
    for i in range(4):
        write_patient(source / "brats", f"BraTS20_Training_00{i + 1}", rng)
    write_kaggle(source / "kaggle", rng, n_per_class=2)

    # Flow parameters land in params.yaml (like `dvc exp run -S`), so dvc.lock records the local source.
    state, outcomes = run_flow(data_source="local", brats_dir=str(source / "brats"), kaggle_dir=str(source / "kaggle"))
    assert state.is_completed(), state.message
    assert states_of(outcomes) == dict.fromkeys(DATA_STAGES, "Completed")
    assert outcomes["slice"]["result"]["patients"] == 4
    assert lock_stages(project)["fetch"]["params"]["params.yaml"]["data"]["source"] == "local"
    assert clean(project)  # a flow run from scratch leaves DVC with nothing to do
    assert any(line.startswith("imported 4 of 4 BraTS patients") for line in flow_run_logs(state))  # the step's own log

    write_patient(source / "brats", "BraTS20_Training_005", rng)
    assert clean(project)  # DVC alone cannot see the new folder ...
    state, outcomes = run_flow()  # ... the fetch task's source check can
    assert states_of(outcomes)["fetch"] == "Completed"
    assert "local source folders changed" in outcomes["fetch"]["reason"] and "5 new" in outcomes["fetch"]["reason"]
    assert outcomes["slice"]["state"] == "Completed"
    assert outcomes["slice"]["result"]["resliced"] == 1, (
        "slice re-sliced unchanged patients: tasks/data/slicing.py's patient fingerprint must not use mtimes, which "
        "change when DVC moves a new file into its cache and links it back (dvc repro does the same)")
    assert outcomes["slice"]["result"]["patients"] == 5
    assert clean(project)

    state, outcomes = run_flow()  # nothing changed: a scheduled run finds everything Cached
    assert states_of(outcomes) == dict.fromkeys(DATA_STAGES, "Cached")


@pytest.mark.slow
def test_a_step_stopped_by_sigterm_inside_an_import_fails_the_flow_with_the_signal_behind_it(prefect_server, tmp_path):
    """While a flow runs, Prefect answers SIGTERM with its own handler (TerminationSignal), so the entry point's
    handler notes nothing (review 2026-12-08); inside the import of a compiled module the signal's exception becomes
    "ImportError: initialization failed", and `flows run` exited with 1. A real flow, in a process of its own: the
    signal is found behind the flow's failure, from which `flows run` takes its exit status."""
    script = tmp_path / "stopped.py"
    script.write_text(textwrap.dedent("""
        import os, signal, time
        from prefect import flow, task
        from flows.pipeline import run_stage
        from tasks.termination import exit_on_sigterm, stop_signal

        @task(name="fetch")
        def fetch(run=None, status=None):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
            except BaseException as exc:  # what CPython makes of it inside a compiled module's import
                raise ImportError("initialization failed") from exc

        @flow
        def pipeline():
            return run_stage(fetch)

        exit_on_sigterm()  # as `python -m flows` starts
        state = pipeline(return_state=True)
        found = stop_signal(state.result(raise_on_failure=False))
        print("state", state.type.value, "signal", found.name if found else None)
    """))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT.resolve()),
           "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert "state FAILED signal SIGTERM" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]


def _processes_with(marker: str) -> list[int]:
    """The pids whose environment holds `marker` (a PREFECT_HOME of a test's own)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


@pytest.mark.slow
def test_ctrl_c_stops_a_flow_run_at_once_and_its_throw_away_server_with_it(project, tmp_path):
    """Review 2026-12-07: Ctrl-C (SIGINT to the terminal's process group, as `timeout` sends its signal) also stopped
    Prefect's throw-away server, a child in the same group; the flow then retried the dead API for about four minutes
    and printed some 400 lines before it exited with 1. SIGTERM to the flow alone left the server running."""
    import signal

    home = f"PREFECT_HOME={tmp_path / 'prefect-home'}"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PREFECT_API_URL", None)
    # SIGKILL: nothing of the flow runs on its way out, and the server lived on, 230 MB (noticed 2026-12-07)
    for signum, to_group, code in ((signal.SIGINT, True, 130), (signal.SIGTERM, False, 143),
                                   (signal.SIGKILL, False, 137)):
        (project / "data").exists() and shutil.rmtree(project / "data")  # fetch has work to do
        log = tmp_path / f"flow-{signum}.log"
        with open(log, "w") as out:
            flow_run = subprocess.Popen([sys.executable, "-m", "flows", "run"], cwd=project, env=env, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)  # a terminal's group
            deadline = time.monotonic() + 240
            while "fetch: running" not in log.read_text() and flow_run.poll() is None:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
            assert _processes_with(home), "no throw-away server was started"
            (os.killpg if to_group else os.kill)(flow_run.pid, signum)
            try:
                returned = flow_run.wait(timeout=90)  # it took about four minutes
            finally:
                flow_run.kill()
        said = log.read_text()
        # an exit with 128 + N, or death by the signal itself (Python re-raises an uncaught KeyboardInterrupt as
        # SIGINT: Popen says -2, a shell 130), depending on where the interrupt lands; both are the signal's answer
        assert returned in (code, -signum), said[-3000:]
        assert len(said.splitlines()) < 100, said[-3000:]  # not 400 lines of retries against a dead API
        deadline = time.monotonic() + 30
        while _processes_with(home) and time.monotonic() < deadline:  # the server stops on the flow's way out
            time.sleep(0.5)
        assert not _processes_with(home), f"a server was left running after {signum!r}"


@pytest.mark.slow
def test_slicing_on_a_dask_cluster_gives_the_serial_result(project, prefect_server):
    state, outcomes = run_flow()  # slice on the local process pool, as dvc repro does
    assert state.is_completed(), state.message
    processed = project / "data" / "processed"
    serial = {p.relative_to(processed): p.read_bytes() for p in processed.rglob("*") if p.is_file()}
    lock_serial = (project / "dvc.lock").read_text()

    # Slice again, on Dask: without its output and DVC's run cache, DVC finds slice stale and cannot restore it.
    shutil.rmtree(processed)
    shutil.rmtree(project / ".dvc" / "cache" / "runs")
    state, outcomes = run_flow(slice_runner="dask")
    assert state.is_completed(), state.message
    assert states_of(outcomes) == {"fetch": "Cached", "slice": "Completed", "split": "Cached"}  # same data/processed
    assert outcomes["slice"]["result"]["resliced"] == 3
    assert {p.relative_to(processed): p.read_bytes() for p in processed.rglob("*") if p.is_file()} == serial
    assert (project / "dvc.lock").read_text() == lock_serial and clean(project)

    # The per-patient jobs were tasks of the subflow, run on the workers of a local Dask cluster.
    ((flow_name, subflow),) = subflow_runs(state)
    assert flow_name == "slice-on-dask" and subflow.state.is_completed()
    sliced = {name: run.state.name for name, run in task_runs(subflow.state).items()}
    assert sliced == {f"slice BraTS20_Training_00{i}": "Completed" for i in (1, 2, 3)}
    on_workers = [line for line in flow_run_logs(subflow.state) if " on Dask worker tcp://" in line]
    assert len(on_workers) == 3 and not any(f"(pid {os.getpid()}," in line for line in on_workers)
    # each worker was prepared as the local pool's workers are: one numerical-library thread, freed memory kept
    assert all("BLAS/OpenMP threads 1, freed memory kept)" in line for line in on_workers), on_workers


def test_a_bad_flow_parameter_is_refused_before_any_flow_starts(tmp_path, monkeypatch):
    """`flows run --profile huge` started a throw-away Prefect server and ran the flow, whose first task failed:
    the one line came after about a hundred log lines and three tracebacks. params.yaml is left as it was."""
    import io
    import shutil

    from rich.console import Console
    from typer.testing import CliRunner

    import flows.__main__ as cli

    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=300))
    monkeypatch.setattr(cli, "_server_up", lambda url: pytest.fail("the flow was started"))
    before = (tmp_path / "params.yaml").read_text()
    result = CliRunner().invoke(cli.app, ["run", "--profile", "huge"])
    printed = cli.console.file.getvalue()
    assert result.exit_code == 1 and "Traceback" not in result.output + printed
    assert "params.yaml: invalid parameters: profile 'huge' is not one of profiles" in printed
    assert (tmp_path / "params.yaml").read_text() == before


@pytest.mark.slow
def test_a_missing_source_folder_fails_the_flow_before_any_stage_and_commits_nothing(project, tmp_path,
                                                                                     prefect_server):
    """Checked as `flows run` checks it, however the flow was started (here: called, as a deployment calls it)."""
    params = (project / "params.yaml").read_text()
    state, _ = run_flow(data_source="local", brats_dir=str(tmp_path / "missing"))
    assert state.is_failed()
    assert "data.brats_dir is not a folder" in state.message
    assert task_runs(state) == {}  # refused before fetch would have removed data/raw
    assert not (project / "dvc.lock").exists() and (project / "params.yaml").read_text() == params


@pytest.mark.slow
def test_cli_reports_the_failed_step_in_one_line(project, tmp_path, prefect_server, monkeypatch):
    import io
    import logging

    from typer.testing import CliRunner

    from flows.__main__ import ConsoleSaysFailuresOnce, app
    from tasks.redaction import install_log_redaction

    # as a full test session leaves it: the redaction, which turns a record's exception into text, already installed;
    # `run` puts its own factory beneath it. Both go again after the test.
    monkeypatch.setattr(logging, "_logRecordFactory", logging.getLogRecordFactory())
    install_log_redaction()

    # a folder that passes the check before the flow (a missing or empty one is refused there), with a file fetch
    # refuses: a link out of the folder to something that is no NIfTI
    patient = write_patient(tmp_path / "source", "BraTS20_Training_001", np.random.default_rng(3))
    flair = patient / "BraTS20_Training_001_flair.nii.gz"
    flair.unlink()
    (tmp_path / "notes.txt").write_text("not an image")
    flair.symlink_to(tmp_path / "notes.txt")
    console = logging.StreamHandler(io.StringIO())  # a console beside Prefect's: `run` filters every one but the UI's
    logging.getLogger().addHandler(console)
    factory = logging.getLogRecordFactory()
    try:
        result = CliRunner().invoke(app, ["run", "--data-source", "local", "--brats-dir", str(tmp_path / "source")])
    finally:
        logging.getLogger().removeHandler(console)
    # the filter and the record factory were for that command alone
    assert not any(isinstance(f, ConsoleSaysFailuresOnce) for h in logging.getLogger().handlers for f in h.filters)
    assert not console.filters and logging.getLogRecordFactory() is factory
    assert result.exit_code == 1
    assert "step 'fetch' failed" in result.output and "Traceback" not in result.output
    # said once, in the last line: not again by Prefect's task and flow run lines or the flow's own record (it was
    # five times). The console still shows the run's other lines.
    logged = console.stream.getvalue()
    assert "fetch: running" in logged
    printed = " ".join((result.output + logged).split())
    assert printed.count("and that file is not a .nii.gz file; refused") == 1, printed
    assert "error: step 'fetch' failed: SliceWiseError:" in printed
    assert load_settings(project / "params.yaml").data.source == "local"  # the option went into params.yaml


@pytest.mark.slow
def test_flow_run_shows_metrics_model_card_and_mlflow_link(tmp_path, monkeypatch, prefect_server):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    metrics = {"classification": {"accuracy": 0.9, "sensitivity": 0.85}, "segmentation": {"dice": 0.7},
               "segmentation_volume": {"dice": 0.72}, "ci95": {"classification.accuracy": [0.8, 0.95]}}
    (tmp_path / "reports" / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "reports" / "register.json").write_text(
        json.dumps({"version": 3, "promoted": True, "reason": "gate passed", "mlflow_run_id": "abc123"}))

    @flow
    def publishing():
        return artifacts.publish(load_settings(ROOT / "params.yaml"))

    state = publishing(return_state=True)
    assert set(state.result()) == set(artifacts.KEYS.values())
    # Straight to the REST API: Prefect 3.8.8's client sends nulls for filters its own server rejects (422).
    body = {"artifacts": {"flow_run_id": {"any_": [str(state.state_details.flow_run_id)]}}, "limit": 10, "offset": 0,
            "sort": "ID_DESC"}
    found = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body).raise_for_status().json()
    by_key = {a["key"]: a["data"] for a in found}
    table = json.loads(by_key[artifacts.KEYS["metrics"]])
    assert {"metric": "classification.accuracy", "value": 0.9, "ci95_low": 0.8, "ci95_high": 0.95} in table
    assert "version 3**: promoted to champion" in by_key[artifacts.KEYS["card"]]
    assert "127.0.0.1:5000/#/runs/abc123" in by_key[artifacts.KEYS["mlflow"]]


@pytest.mark.slow
def test_deployment_is_registered_with_its_schedule(prefect_server):
    deployment = build_deployment(load_settings(ROOT / "params.yaml"))
    deployment_id = deployment.apply()
    with get_client(sync_client=True) as client:
        stored = client.read_deployment(deployment_id)
    assert stored.name == DEPLOYMENT_NAME
    assert [s.schedule.cron for s in stored.schedules] == [load_settings(ROOT / "params.yaml").schedule.cron]


@pytest.mark.slow
def test_mlflow_parent_run_is_opened_up_front_and_always_ended(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    settings = load_settings(ROOT / "params.yaml")
    settings = settings.model_copy(update={"tracking": settings.tracking.model_copy(update={"enabled": True})})

    with lineage.pipeline_run(settings, "flow-run-1", work_pending=True) as opened:
        parent = opened.run_id
        assert os.environ[lineage.PARENT_RUN_ENV] == parent and os.environ[lineage.FLOW_RUN_ENV] == "flow-run-1"
        run = MlflowClient(uri).get_run(parent)
        MlflowClient(uri).create_run(run.info.experiment_id, tags={"mlflow.parentRunId": parent})  # a step ran
    assert MlflowClient(uri).get_run(parent).info.status == "FINISHED"  # register was not there to end it
    with pytest.raises(RuntimeError), lineage.pipeline_run(settings, "flow-run-2", work_pending=True) as failed:
        raise RuntimeError("train_seg failed")
    assert MlflowClient(uri).get_run(failed.run_id).info.status == "FAILED"
    assert lineage.PARENT_RUN_ENV not in os.environ and lineage.FLOW_RUN_ENV not in os.environ
    with lineage.pipeline_run(settings, "flow-run-3", work_pending=False) as none:
        assert none.run_id is None  # everything Cached: no empty parent run
    # stale stages that all came back from DVC's run cache: the parent opened up front held nothing, and goes
    with lineage.pipeline_run(settings, "flow-run-4", work_pending=True) as restored:
        empty = restored.run_id
    assert restored.run_id is None and MlflowClient(uri).get_run(empty).info.lifecycle_stage == "deleted"

    # The flow run's model card is the registry version's own description when MLflow has it.
    client = MlflowClient(uri)
    client.create_registered_model("slicewise")
    version = client.create_model_version("slicewise", str(tmp_path), run_id=parent, description="# slicewise\ncard")
    decision = {"registered": True, "model_name": "slicewise", "version": version.version, "promoted": True,
                "reason": "gate passed"}
    assert artifacts.registry_model_card(settings, decision) == "# slicewise\ncard"
    assert artifacts.registry_model_card(settings, {**decision, "version": "99"}) is None  # a warning, not a failure
    # the whole card, when the registering run logged it: the description holds at most 5,000 characters of it
    client.log_text(parent, "# slicewise\nthe whole card", "model_card.md")
    assert artifacts.registry_model_card(settings, decision) == "# slicewise\nthe whole card"


@flow(persist_result=False)
def _read_twice_with_loader_workers(processed: str, patients: list[str]) -> list[int]:
    import torch

    from tasks.data.datasets import stream_slices
    from tasks.data.loaders import training_loader
    from tasks.data.shards import ShardRowReader

    data = stream_slices(Path(processed), patients, ("brats",), ShardRowReader(0))
    loader = training_loader(data, 6, torch.Generator().manual_seed(7), num_workers=2)
    batches = sum(1 for _ in range(2) for _ in loader)
    workers = list(loader._iterator._workers)
    loader._iterator._shutdown_workers()  # what the iterator's __del__ does at the end of a stage
    return [batches, *(worker.exitcode for worker in workers)]


def test_loader_workers_forked_inside_the_flow_exit_cleanly(prefect_server, tmp_path):
    """The flow calls each step inside its own process, beside Prefect's log and event services: a training loader's
    forked workers inherited the exit hook of those services' threads and exited with code 1 (a failed epoch for a
    loader made per epoch, a warning after each stage for the persistent one)."""
    from tests.test_datasets import _processed

    processed, patients = _processed(tmp_path, shards=2, rows=6, compress=False)
    batches, *exit_codes = _read_twice_with_loader_workers(str(processed), patients)
    assert batches == 2 * (12 // 6) and exit_codes == [0, 0]


def test_a_source_folder_given_without_the_local_source_is_refused_before_anything_changes(tmp_path, monkeypatch):
    """`flows run --brats-dir /x` with `source: synthetic` wrote the folder into params.yaml, never read it, and
    reran fetch on synthetic data (52 s), ending "Completed"."""
    import io
    import shutil

    from rich.console import Console
    from typer.testing import CliRunner

    import flows.__main__ as cli
    from flows.pipeline import apply_parameters

    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "brats").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=300))
    monkeypatch.setattr(cli, "_server_up", lambda url: pytest.fail("the flow was started"))
    before = (tmp_path / "params.yaml").read_text()
    result = CliRunner().invoke(cli.app, ["run", "--brats-dir", str(tmp_path / "brats")])
    assert result.exit_code == 1
    assert ("data.brats_dir given with data source 'synthetic': source folders are read only by the local source"
            in cli.console.file.getvalue())
    with pytest.raises(SliceWiseError, match="data.kaggle_dir given with data source 'kaggle'") as error:
        apply_parameters(data_source="kaggle", kaggle_dir=str(tmp_path))  # a deployment's run
    assert error.value.path == "params.yaml"
    assert (tmp_path / "params.yaml").read_text() == before


def test_a_deployment_run_is_checked_as_flows_run_is_before_params_yaml_changes(tmp_path, monkeypatch):
    """A run from the Prefect UI or a schedule calls the flow without `flows run`'s checks: with a local source
    whose folder is missing (or one inside data/raw), params.yaml was rewritten, the flow removed data/raw as
    fetch's stale output, and only then did fetch say the folder was missing."""
    import logging

    import flows.pipeline
    from flows.pipeline import apply_parameters

    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(flows.pipeline, "get_run_logger", lambda: logging.getLogger("flow"))  # no flow run here
    before = (tmp_path / "params.yaml").read_text()
    with pytest.raises(SliceWiseError, match="brats_dir") as error:
        apply_parameters(data_source="local", brats_dir=str(tmp_path / "not-there"))
    assert "not-there" in str(error.value)
    (tmp_path / "data" / "raw" / "brats").mkdir(parents=True)  # a source folder inside fetch's own output
    write_patient(tmp_path / "data" / "raw" / "brats", "BraTS20_Training_001", np.random.default_rng(4))
    with pytest.raises(SliceWiseError, match="data/raw"):
        apply_parameters(data_source="local", brats_dir=str(tmp_path / "data" / "raw" / "brats"))
    assert (tmp_path / "params.yaml").read_text() == before
    write_patient(tmp_path / "source", "BraTS20_Training_001", np.random.default_rng(4))
    settings = apply_parameters(data_source="local", brats_dir=str(tmp_path / "source"))  # a good one is written
    assert settings.data.source == "local" and "source: local" in (tmp_path / "params.yaml").read_text()


def test_the_folder_that_makes_params_valid_is_accepted(tmp_path, monkeypatch):
    """params.yaml with `source: local` and no brats_dir: `flows run --brats-dir DIR`, which fixes it, was refused
    with the very error it fixes ("data.brats_dir is not set"): the source was read before the updates."""
    import shutil

    import flows.__main__ as cli

    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    text = (tmp_path / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text.replace("  source: synthetic", "  source: local", 1))
    with pytest.raises(SliceWiseError, match="data.brats_dir is not set"):
        load_settings(tmp_path / "params.yaml")
    write_patient(tmp_path / "source", "BraTS20_Training_001", np.random.default_rng(4))
    cli._check_parameters({"data.brats_dir": str(tmp_path / "source")})  # no SystemExit: accepted


def test_a_finished_flow_run_prints_its_table_and_the_summary_unwrapped_off_a_terminal(tmp_path, monkeypatch):
    """After a run, `flows run` prints each stage's state and why it ran, then make run's summary. Off a terminal
    (a log file, CI) Rich cut the table's "why it ran" cells and the summary's sentences at 80 columns."""
    from prefect.settings import temporary_settings
    from prefect.states import Completed
    from typer.testing import CliRunner

    import flows.__main__ as cli
    import flows.pipeline

    why = "deps changed: tasks/train_seg.py, tasks/training/stage.py, params.yaml (train_seg.epochs 3 → 4)"
    outcomes = {"fetch": {"state": "Cached", "lock_sha256": "ab" * 32, "reason": "dvc.lock up to date"},
                "train_seg": {"state": "Completed", "lock_sha256": "cd" * 32, "reason": why}}
    monkeypatch.chdir(tmp_path)  # nothing has run here: the summary says how to make a run
    for forcing in ("FORCE_COLOR", "TTY_COMPATIBLE"):  # Rich takes either as a terminal: a CI may set them
        monkeypatch.delenv(forcing, raising=False)
    monkeypatch.setattr(cli, "_require_project_root", lambda: None)
    monkeypatch.setattr(cli, "_check_parameters", lambda updates: load_settings(ROOT / "params.yaml"))
    monkeypatch.setattr(cli, "_server_up", lambda url: False)
    monkeypatch.setattr(flows.pipeline, "slicewise_pipeline", lambda **kwargs: Completed(data=outcomes))
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # no server configured: nothing to reach
        result = CliRunner().invoke(cli.app, ["run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("train_seg" in line and "Completed" in line and line.rstrip(" │").endswith(why) for line in lines)
    assert any("no pipeline output here yet" in line and line.endswith("in the project root") for line in lines)


def test_the_flows_summary_says_what_make_runs_says_of_the_photos(tmp_path, monkeypatch):
    """Review 2026-12-07: `flows run` printed make run's summary without its line on the photos the served model
    will not decide (print_summary says it only when given serve.min_photo_accuracy, which the flow did not give)."""
    from prefect.settings import temporary_settings
    from prefect.states import Completed
    from typer.testing import CliRunner

    import flows.__main__ as cli
    import flows.pipeline
    from tasks.release import summary

    settings = load_settings(ROOT / "params.yaml")
    asked = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_require_project_root", lambda: None)
    monkeypatch.setattr(cli, "_check_parameters", lambda updates: settings)
    monkeypatch.setattr(cli, "_server_up", lambda url: False)
    monkeypatch.setattr(flows.pipeline, "slicewise_pipeline", lambda **kwargs: Completed(data={}))
    monkeypatch.setattr(summary, "print_summary", lambda console, **kwargs: asked.append(kwargs))
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(cli.app, ["run"])
    assert result.exit_code == 0, result.output
    assert asked == [{"min_photo_accuracy": settings.serve.min_photo_accuracy}]

"""MLflow behind the tracker hook: one parent run per pipeline run, one child run per step.

The store and how it is reached (retries, a client) are tasks/tracking/store.py's.

Steps run as separate processes (DVC starts `python -m tasks <step>` once per stage), so the parent run is found
again in each process:
1. `SLICEWISE_PARENT_RUN_ID` when set: the Prefect flow opens the parent with `open_parent_run` and sets it.
2. otherwise `reports/.mlflow_parent_run`, written by the first step of a pipeline run. It is reused while its
   key (tracking URI, experiment, git commit, uncommitted source diff, params hash) equals the current one AND
   the run is still RUNNING, or FAILED by a step that failed, or FINISHED with the file still there (`register`
   ended it but was cut off before removing the file: its rerun must find the version it made). `register`, the
   last step, logs into the parent itself and ends it (FINISHED, or FAILED when it fails), which removes the file:
   the next `dvc repro` opens a new parent even with unchanged code. A failed step ends its own run and the parent
   FAILED (tag `failed_step`), an interrupted one (Ctrl-C, SIGTERM) KILLED, so no run is left RUNNING; a step that
   finishes leaves the parent FINISHED as far as the pipeline run went (the next step reopens it; so a pipeline
   run whose later stages were up to date, or never ran, shows FINISHED with the steps it holds); rerunning a failed
   step reopens the same parent, and ends KILLED a run of the step that a SIGKILLed process left RUNNING. A parent
   left RUNNING (its step's process killed) by a pipeline run whose code or params have since changed is ended
   FINISHED when every step it holds finished, else KILLED.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

from tasks import paths
from tasks.config import Settings, TrackingSettings
from tasks.errors import SliceWiseError
from tasks.io import read_json, write_text_atomic
from tasks.redaction import redact
from tasks.tracking import provenance
from tasks.tracking.store import is_local_store, make_client, retrying, tracking_uri

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "SLICEWISE_PARENT_RUN_ID"
PARENT_STEPS = ("register",)  # steps that log into the parent run itself; register also ends it
MAX_PARAM_LENGTH = 6000  # MLflow's limit for a parameter value


def ensure_experiment(client, cfg: TrackingSettings, name: str) -> str:
    """The experiment's id, created on first use; a local store keeps its artifacts under mlartifacts/."""
    from mlflow.exceptions import MlflowException

    experiment = retrying(cfg, "get experiment", client.get_experiment_by_name, name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if is_local_store(tracking_uri()):  # a server stores artifacts where its --artifacts-destination says
        location = (paths.MLARTIFACTS.resolve() / name).as_uri()
    try:
        return retrying(cfg, "create experiment", client.create_experiment, name, artifact_location=location)
    except MlflowException:  # another process created it in between
        return retrying(cfg, "get experiment", client.get_experiment_by_name, name).experiment_id


def pipeline_key(settings: Settings) -> str:
    """What makes two step processes part of the same pipeline run (see the module docstring)."""
    diff = provenance.source_diff() or ""
    parts = [redact(tracking_uri()), settings.tracking.experiment, provenance.git_commit(),
             hashlib.sha256(diff.encode()).hexdigest(), provenance.params_hash(settings)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _read_pointer() -> dict:
    return read_json(paths.MLFLOW_PARENT_RUN, default={})


def _write_pointer(run_id: str, key: str) -> None:
    write_text_atomic(json.dumps({"run_id": run_id, "key": key, "tracking_uri": redact(tracking_uri())}) + "\n",
                      paths.MLFLOW_PARENT_RUN)


def _forget_pointer(run_id: str) -> None:
    if _read_pointer().get("run_id") == run_id:
        paths.MLFLOW_PARENT_RUN.unlink(missing_ok=True)


def _run_status(client, cfg: TrackingSettings, run_id: str) -> str | None:
    """The run's status, or None when it does not exist in this store."""
    from mlflow.exceptions import MlflowException

    try:
        return retrying(cfg, "get run", client.get_run, run_id).info.status
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return None
        raise


def _create_parent(client, settings: Settings, experiment_id: str, tags: Mapping[str, str]) -> str:
    name = f"pipeline-{settings.profile}-{tags.get('git_commit', 'unknown')[:8]}"
    run = retrying(settings.tracking, "create parent run", client.create_run, experiment_id, run_name=name,
                   tags={**tags, "slicewise.role": "pipeline"})
    MlflowTracker(client, run.info.run_id, settings.tracking).log_params(provenance.flat_params(settings))
    log.info("MLflow: parent run %s (%s)", run.info.run_id, name)
    return run.info.run_id


def end_stale_parent(client, cfg: TrackingSettings, experiment_id: str, run_id: str) -> None:
    """End a parent run that no step will come back to. FINISHED when every step it holds finished: under
    `dvc repro`, register ends the parent, but it does not run when its inputs came out the same (a retraining
    that reproduced best.pt), and such a complete run showed as KILLED. KILLED when a step was cut off or failed."""
    children = retrying(cfg, "list step runs", client.search_runs, [experiment_id],
                        f"tags.mlflow.parentRunId = '{run_id}'")
    finished = bool(children) and all(child.info.status == "FINISHED" for child in children)
    retrying(cfg, "end stale parent run", client.set_terminated, run_id, "FINISHED" if finished else "KILLED")


def resolve_parent_run(client, settings: Settings, experiment_id: str, tags: Mapping[str, str],
                       step: str | None = None) -> str:
    """The parent run of the current pipeline run: from the environment, the pointer file, or a new one.

    A pipeline run holds each step once (a failed or killed attempt and its rerun aside): when `step` already has a
    FINISHED run under the pointer's parent, a new pipeline run has begun (a `dvc repro` after one that ended before
    register, with the same code and params: new data, a step forced), and it gets a parent of its own."""
    cfg = settings.tracking
    if run_id := os.environ.get(PARENT_RUN_ENV):
        if _run_status(client, cfg, run_id) is None:
            raise SliceWiseError(f"{PARENT_RUN_ENV}={run_id} names no run in this MLflow store", tracking_uri())
        return run_id
    key = pipeline_key(settings)
    pointer = _read_pointer()
    if pointer.get("run_id") and pointer.get("tracking_uri") == redact(tracking_uri()):
        status = _run_status(client, cfg, pointer["run_id"])
        # FINISHED with its pointer still here: `register` ended it but was cut off before forgetting the pointer
        # (killed, or its last write failed). Its rerun must come back to this run, where it finds the version it
        # made, or it would register the same model again under a new parent.
        same_run = status in ("RUNNING", "FAILED", "KILLED", "FINISHED") and pointer.get("key") == key
        if same_run and not (step and _finished_before(client, cfg, experiment_id, pointer["run_id"], step)):
            if status != "RUNNING":  # a step failed, or register was cut off, and is run again: the run goes on
                retrying(cfg, "reopen parent run", client.update_run, pointer["run_id"], "RUNNING")
            return pointer["run_id"]
        if status == "RUNNING":  # its pipeline run will never go on: its code or params changed, or a new one began
            end_stale_parent(client, cfg, experiment_id, pointer["run_id"])
    run_id = _create_parent(client, settings, experiment_id, tags)
    _write_pointer(run_id, key)
    return run_id


def _finished_before(client, cfg: TrackingSettings, experiment_id: str, parent_id: str, step: str) -> bool:
    """Whether `parent_id` already holds a FINISHED run of `step` (register, which logs into the parent, never does)."""
    if step in PARENT_STEPS:
        return False
    runs = retrying(cfg, "list step runs", client.search_runs, [experiment_id],
                    f"tags.mlflow.parentRunId = '{parent_id}' and tags.step = '{step}' "
                    "and attributes.status = 'FINISHED'", max_results=1)
    return bool(runs)


def open_parent_run(settings: Settings) -> str:
    """Start a parent run for an orchestrator (the Prefect flow), which then sets SLICEWISE_PARENT_RUN_ID."""
    client = make_client(settings.tracking)
    experiment_id = ensure_experiment(client, settings.tracking, settings.tracking.experiment)
    return _create_parent(client, settings, experiment_id, provenance.run_tags(settings))


def close_parent_run(settings: Settings, run_id: str, status: str = "FAILED") -> None:
    """End a parent run from the orchestrator (e.g. FAILED when a step failed before `register` could)."""
    client = make_client(settings.tracking)
    retrying(settings.tracking, "end parent run", client.set_terminated, run_id, status)
    _forget_pointer(run_id)


def end_abandoned_runs(client, cfg: TrackingSettings, experiment_id: str, parent_id: str, step: str) -> None:
    """End KILLED the runs of `step` under `parent_id` still RUNNING: the pipeline lock (tasks/run_lock.py) lets one
    run work in a project at a time, so such a run's process is gone without closing it (SIGKILL, a power cut), and
    the step's new run takes over."""
    abandoned = retrying(cfg, "find abandoned runs", client.search_runs, [experiment_id],
                         filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and tags.step = '{step}' "
                                       "and attributes.status = 'RUNNING'")
    for run in abandoned:
        log.warning("MLflow: run %s of %s was left RUNNING by a process that is gone; ending it KILLED",
                    run.info.run_id, step)
        retrying(cfg, "end abandoned run", client.set_terminated, run.info.run_id, "KILLED")


class MlflowTracker:
    """The Tracker protocol on one MLflow run: a step's child run, or the parent run for `register`."""

    def __init__(self, client, run_id: str, cfg: TrackingSettings, parent_run_id: str | None = None):
        self.client = client
        self.run_id = run_id
        self.cfg = cfg
        self.parent_run_id = parent_run_id  # None: this tracker is on the parent run itself

    @classmethod
    def for_step(cls, settings: Settings, step: str) -> "MlflowTracker":
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        cfg = settings.tracking
        client = make_client(cfg)
        experiment_id = ensure_experiment(client, cfg, cfg.experiment)
        tags = provenance.run_tags(settings)
        parent_id = resolve_parent_run(client, settings, experiment_id, tags, step)
        parent = cls(client, parent_id, cfg)
        parent.set_tags(tags)  # the data hash may have become known since the parent was opened
        if step in PARENT_STEPS:
            tracker = parent
        else:
            end_abandoned_runs(client, cfg, experiment_id, parent_id, step)
            run = retrying(cfg, "create run", client.create_run, experiment_id, run_name=step,
                           tags={**tags, MLFLOW_PARENT_RUN_ID: parent_id, "step": step})
            tracker = cls(client, run.info.run_id, cfg, parent_run_id=parent_id)
        return tracker

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            retrying(self.cfg, "log params", self.client.log_batch, self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(str(k), float(v), now, step or 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        for start in range(0, len(items), 1000):
            retrying(self.cfg, "log metrics", self.client.log_batch, self.run_id, metrics=items[start : start + 1000])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.exists():  # a missing plot must not fail a training run; say so instead
            log.warning("MLflow: not logging %s, it does not exist", path)
            return
        upload = self.client.log_artifacts if path.is_dir() else self.client.log_artifact
        retrying(self.cfg, f"log artifact {path.name}", upload, self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        if items:
            retrying(self.cfg, "set tags", self.client.log_batch, self.run_id, tags=items)

    def close(self, status: str = "FINISHED") -> None:
        """End the run. A failed step's run ends FAILED and so does its pipeline's parent run (tagged with the
        step), which the step's next attempt reopens (resolve_parent_run). Ending a failed run is best effort: its
        error must not hide the step's own error."""
        ended_with_parent = status != "FINISHED" and self.parent_run_id is not None
        runs = [self.run_id, self.parent_run_id] if ended_with_parent else [self.run_id]
        for run_id in runs:
            try:
                if run_id == self.parent_run_id:
                    step = retrying(self.cfg, "get run", self.client.get_run, self.run_id).data.tags.get("step", "")
                    retrying(self.cfg, "tag parent run", self.client.set_tag, run_id, "failed_step", step)
                retrying(self.cfg, "end run", self.client.set_terminated, run_id, status)
            except Exception as exc:
                if status == "FINISHED":
                    raise
                log.warning("MLflow: could not mark run %s %s: %s", run_id, status, exc)
                break
        if self.parent_run_id is None and status == "FINISHED":  # a failed register's rerun must find its run
            _forget_pointer(self.run_id)
        elif status == "FINISHED" and os.environ.get(PARENT_RUN_ENV) != self.parent_run_id:
            # Under `dvc repro` the parent is FINISHED as far as the pipeline run went: when the stages after this
            # one are up to date (evaluate came out the same, so export and register did not run), no step would
            # end it, and it stayed RUNNING. The next step reopens it (resolve_parent_run), register ends it for
            # good. A flow's parent (from the environment) is the flow's to end.
            retrying(self.cfg, "end parent run", self.client.set_terminated, self.parent_run_id, "FINISHED")

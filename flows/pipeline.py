"""The SliceWise pipeline as a Prefect flow: the same nine DVC stages, the same dvc.lock, one more front door.

    fetch → slice → split → train_seg → train_cls → train_joint → evaluate → export → register

Each task is one DVC stage (flows/stage_task.py): DVC says whether it is stale, the step runs in-process
only then, and its result is committed to dvc.lock, so `dvc repro` and this flow never disagree about what
is up to date. `fetch` and `register` talk to the network whatever the MLflow store, so they retry (the other steps'
MLflow calls retry on their own, tasks/tracking/store.py).

`slice_runner="dask"` runs the slice step's per-patient jobs on a Dask cluster (flows/dask_slicing.py).
"""

from __future__ import annotations

import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows import artifacts, dvc_stage, lineage
from flows.dask_slicing import SliceRunner, slice_on_dask
from flows.source_inventory import local_source_drift
from flows.stage_task import StepRun, forward_step_logs, stage_task
from tasks import paths
from tasks.config import Settings, load_settings
from tasks.errors import SliceWiseError
from tasks.params_edit import set_params
from tasks.preflight import check_params_dvc_reads, check_prerequisites, run_warnings
from tasks.redaction import redact
from tasks.release.store_moved import registered_elsewhere
from tasks.run_lock import dvc_lock_for_params, pipeline_lock
from tasks.tracking import provenance

MINUTE, HOUR = 60, 3600


def _source_drift(settings: Settings | None = None) -> str | None:
    return local_source_drift(settings or load_settings())


# Timeouts are generous ceilings for the production profile on one GPU; they exist to stop a hung run.
fetch = stage_task("fetch", timeout_seconds=4 * HOUR, network=True, force_check=_source_drift)
slice_ = stage_task("slice", timeout_seconds=2 * HOUR)
split = stage_task("split", timeout_seconds=20 * MINUTE)
train_seg = stage_task("train_seg", timeout_seconds=8 * HOUR)
train_cls = stage_task("train_cls", timeout_seconds=4 * HOUR)
train_joint = stage_task("train_joint", timeout_seconds=8 * HOUR)
evaluate = stage_task("evaluate", timeout_seconds=1 * HOUR)
export = stage_task("export", timeout_seconds=30 * MINUTE)
register = stage_task("register", timeout_seconds=20 * MINUTE, network=True, force_check=registered_elsewhere)
STAGE_TASKS = (fetch, slice_, split, train_seg, train_cls, train_joint, evaluate, export, register)


class StepFailed(RuntimeError):
    """A stage failed; the message names it, so the flow run's final state says which step and why."""


@flow(name="slicewise-pipeline", persist_result=False)
def slicewise_pipeline(
    profile: str | None = None,
    data_source: Literal["synthetic", "local", "kaggle"] | None = None,
    brats_dir: str | None = None,
    kaggle_dir: str | None = None,
    slice_runner: SliceRunner = "processes",
    dask_address: str | None = None,
) -> dict[str, dict]:
    """Run every stale stage of the DVC pipeline; returns stage → {"state": Cached | Completed | Skipped, ...}.

    The first four parameters go into params.yaml (DVC sees them). `slice_runner` and `dask_address` do not:
    they choose where the slice step's per-patient jobs run (a local process pool, or Dask: a local cluster, or
    the scheduler at `dask_address`), which does not change its output, so it is no reason to rerun it.
    """
    forward_step_logs()
    step_runs = step_runs_for(slice_runner, dask_address)
    # before params.yaml changes: a run already working in this project (a flow, or a `dvc repro` step) is told
    # and DVC's own lock on every output: a `dvc repro` started meanwhile is refused before it clears any of them
    with pipeline_lock(f"Prefect flow run {flow_run.id}"), dvc_stage.outputs_held():
        return _run_pipeline(step_runs, profile, data_source, brats_dir, kaggle_dir)


def _run_pipeline(step_runs: dict[str, StepRun], profile: str | None, data_source: str | None, brats_dir: str | None,
                  kaggle_dir: str | None) -> dict[str, dict]:
    settings = apply_parameters(profile=profile, data_source=data_source, brats_dir=brats_dir, kaggle_dir=kaggle_dir)
    with provenance.git_asked_once():  # the commit and the diff cannot change during the run: ask git once
        lineage.tag_flow_run(flow_run.id, lineage.flow_run_tags(settings), existing=list(flow_run.tags))
        status = dvc_stage.PipelineStatus.read()  # DVC is asked once about all stages, not once per stage
        warn_about_stages_without_task(status.stages)

        outcomes, pending = {}, something_to_do(status, settings)
        with lineage.pipeline_run(settings, flow_run.id, work_pending=pending) as parent:
            for stage in STAGE_TASKS:
                outcomes[stage.name] = run_stage(stage, step_runs.get(stage.name), status)
        artifacts.publish(settings, parent.run_id)
    return outcomes


def run_stage(stage, run: StepRun | None = None, status: dvc_stage.PipelineStatus | None = None) -> dict:
    """Run one stage task; a failure stops the flow with the stage's name and its error."""
    state = stage(run, status, return_state=True)
    if state.is_completed():
        return {"state": state.name, **state.result()}
    error = state.result(raise_on_failure=False)
    # redacted: a raw MLflow or requests error carries the store URI with its password (tasks/redaction.py)
    why = redact(f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else state.message)
    # for the Prefect UI; `flows run` prints it once, as its last line (flows/__main__.py, ConsoleSaysFailuresOnce)
    get_run_logger().error("step %r failed: %s", stage.name, why, extra={"said_in_one_line": True})
    # chained: a stop signal behind the error (tasks/termination.py) gives `flows run` its exit status
    raise StepFailed(f"step {stage.name!r} failed: {why}") from (error if isinstance(error, BaseException) else None)


def step_runs_for(slice_runner: SliceRunner, dask_address: str | None) -> dict[str, StepRun]:
    """Stage → how to run its step, where that differs from `run_step(stage)` (what `dvc repro` runs)."""
    if slice_runner == "dask":
        return {"slice": partial(slice_on_dask, dask_address)}
    if dask_address:
        raise ValueError(f"dask_address={dask_address!r} needs slice_runner='dask'")
    return {}


def something_to_do(status: dvc_stage.PipelineStatus, settings: Settings) -> bool:
    """Whether any stage will run (DVC finds one stale, the local source changed, or the MLflow store did); else all
    are Cached."""
    return bool(status.stale) or _source_drift(settings) is not None or registered_elsewhere() is not None


def warn_about_stages_without_task(stages: list[str]) -> None:
    if unknown := set(stages) - {task.name for task in STAGE_TASKS}:
        get_run_logger().warning("dvc.yaml stages without a task in this flow (run them with dvc repro): %s",
                                 sorted(unknown))


# The flow's parameters that are params.yaml keys.
PARAMETER_KEYS = {"profile": "profile", "data_source": "data.source", "brats_dir": "data.brats_dir",
                  "kaggle_dir": "data.kaggle_dir"}


def parameter_updates(**values: str | None) -> dict[str, str]:
    """The params.yaml updates the given flow parameters make (None: left as it is)."""
    return {PARAMETER_KEYS[name]: value for name, value in values.items() if value is not None}


def folders_without_local_source(updates: dict[str, str], source: str) -> str | None:
    """Why a source folder given with another data source than `local` is refused, or None. Written into params.yaml
    it was never read, yet it changed fetch's params: the run regenerated the synthetic data and said nothing."""
    given = [key for key in ("data.brats_dir", "data.kaggle_dir") if key in updates]
    source = updates.get("data.source", source)
    if given and source != "local":
        return (f"{' and '.join(given)} given with data source {source!r}: source folders are read only by the "
                "local source (add --data-source local, the flow parameter data_source='local')")
    return None


def checked_settings(updates: dict[str, str]) -> Settings:
    """The settings params.yaml gives with `updates`, checked on a copy as `make run` checks them (`tasks check`): a
    bad value, a source folder no other source than `local` reads, a missing source folder or environment, Kaggle
    credentials where fetch must download. A SliceWiseError says which, before params.yaml changes and before any
    stage's outputs are removed (a missing local folder was found by fetch after the flow had deleted data/raw)."""
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / paths.PARAMS.name
        shutil.copy(paths.PARAMS, trial)
        try:
            settings = set_params(updates, trial) if updates else load_settings(trial)
            check_params_dvc_reads(trial)
        except SliceWiseError as exc:  # named as params.yaml, not as the copy
            error = SliceWiseError(exc.reason, paths.PARAMS)
            error.exit_code = exc.exit_code
            raise error from None
    if why := folders_without_local_source(updates, settings.data.source):  # the source with the updates applied
        raise SliceWiseError(why, paths.PARAMS)
    check_prerequisites(settings)
    return settings


def apply_parameters(**values: str | None) -> Settings:
    """Write the given flow parameters into params.yaml first, as `dvc exp run -S` would, so DVC sees them; checked
    first (`checked_settings`), since a run from the UI, a deployment or a schedule has had no `flows run` check."""
    updates = parameter_updates(**values)
    for warning in run_warnings(checked_settings(updates)):  # as `tasks check` says them before make run
        get_run_logger().warning(warning)
    if updates:
        with dvc_lock_for_params():  # not while `dvc repro` records a stage, reading params.yaml (tasks/run_lock.py)
            set_params(updates)
        get_run_logger().info("params.yaml updated: %s", updates)
    return load_settings(paths.PARAMS)

"""One Prefect task per DVC stage: ask DVC, run the step in-process only when stale, then record it in dvc.lock.

A task's final state says what happened:
- "Cached": DVC found the stage up to date, or restored its outputs from DVC's run cache (this exact cmd,
  deps and params ran before), as `dvc repro` would; nothing ran. Carries the stage's dvc.lock fingerprint.
- "Completed": the step ran (the message says why: DVC's changes, or a forced reason) and was committed.
- "Skipped": dvc.yaml has no such stage (yet), so there is nothing DVC could vouch for.
- "Failed": the step raised; nothing was committed, so its partial output can never look complete.

Prefect's own result cache is switched off (NO_CACHE): its default key includes the flow run id and the
inputs, neither of which says whether the data changed. DVC's deps/params/outs hashes do, and they are
shared with `dvc repro`, so DVC is the only cache. Results are not persisted either: the outputs are files
that DVC tracks, and the task returns only a small summary.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State
from prefect.tasks import Task, exponential_backoff

from flows import dvc_stage
from tasks.__main__ import run_step
from tasks.errors import CredentialsError, SliceWiseError

NETWORK_RETRIES = 3
NETWORK_BACKOFF_SECONDS = 10  # 10 s, 20 s, 40 s: a flaky download or registry gets a minute to come back

ForceCheck = Callable[[], "str | None"]  # returns why the stage must run although DVC finds it fresh
StepRun = Callable[[], dict]  # runs the stage's step another way than run_step(stage) (flows/dask_slicing.py)
STEP_LOGGER = "tasks"  # the steps log through logging.getLogger("tasks.<module>")


def forward_step_logs() -> None:
    """Send the steps' own log records to the flow run's logs in the Prefect UI (idempotent).

    What PREFECT_LOGGING_EXTRA_LOGGERS=tasks does, but independent of whether Prefect was imported first.
    """
    step_logger = logging.getLogger(STEP_LOGGER)
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in step_logger.handlers:
            step_logger.addHandler(handler)
    if step_logger.level == logging.NOTSET:
        step_logger.setLevel(logging.INFO)


def worth_retrying(task: Task, task_run: Any, state: State) -> bool:
    """Retry transient trouble (network, a server error), not a problem only the user can fix.

    Transient: a connection or timeout error, a locked database, a server error (HTTP 5xx or 429), raised or behind
    a SliceWiseError (e.g. "MLflow ... failed after 3 attempts" from a connection error). Not transient: a
    SliceWiseError of its own (missing folder, no usable patient), refused credentials, and anything else (a bad
    parameter, a missing or broken metrics.json, a KeyError): a retry would only delay the message by minutes.
    """
    from prefect.task_engine import TaskRunTimeoutError

    from tasks.data.kaggle_download import root_cause
    from tasks.tracking.store import is_transient

    exc = state.data if isinstance(state.data, BaseException) else None
    # A task's own timeout is a TimeoutError too, but it is there to stop a hung step, not to start it again.
    if exc is None or isinstance(exc, (CredentialsError, TaskRunTimeoutError)):
        return False
    cause = exc.__cause__ if isinstance(exc, SliceWiseError) else exc
    if cause is None:
        return False
    status = getattr(getattr(cause, "response", None), "status_code", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    return is_transient(cause) or is_transient(root_cause(cause))


def stage_task(stage: str, *, timeout_seconds: float, network: bool = False, force_check: ForceCheck | None = None):
    """The Prefect task for DVC stage `stage`; `network` stages get retries with exponential backoff."""

    def run_stage(run: StepRun | None = None, status: dvc_stage.PipelineStatus | None = None) -> State:
        return run_if_stale(stage, force_check, run, status)

    # A name of its own per stage: Prefect keys tasks by function name and source, which all stages share.
    run_stage.__name__ = run_stage.__qualname__ = f"stage_{stage}"
    run_stage.__doc__ = f"DVC stage `{stage}`: `python -m tasks {stage}` when DVC finds it stale."
    return task(
        run_stage,
        name=stage,
        task_run_name=stage,
        cache_policy=NO_CACHE,
        persist_result=False,
        timeout_seconds=timeout_seconds,
        retries=NETWORK_RETRIES if network else 0,
        retry_delay_seconds=exponential_backoff(backoff_factor=NETWORK_BACKOFF_SECONDS) if network else 0,
        retry_condition_fn=worth_retrying if network else None,
    )


def run_if_stale(stage: str, force_check: ForceCheck | None = None, run: StepRun | None = None,
                 status: dvc_stage.PipelineStatus | None = None) -> State:
    """Ask DVC; when the stage is stale, run its step (`run_step(stage)`, or `run` when given) and commit it.

    `status` is the flow run's snapshot of the whole pipeline (read once, flows/dvc_stage.py); without one the
    task reads its own.
    """
    logger = get_run_logger()
    status = status or dvc_stage.PipelineStatus.read()
    if stage not in status.stages:
        logger.warning("dvc.yaml has no stage %r yet: skipped", stage)
        return Completed(name="Skipped", message=f"dvc.yaml has no stage {stage!r}", data={"stage": stage})

    forced = force_check() if force_check else None
    changes = status.changes(stage)
    if not changes and not forced:
        fingerprint = status.fingerprint(stage)
        logger.info("%s: up to date with dvc.lock (%s), nothing to do", stage, fingerprint[:12])
        return Completed(name="Cached", message=f"up to date with dvc.lock entry sha256:{fingerprint}",
                         data={"stage": stage, "cached": True, "lock_sha256": fingerprint})

    reason = forced or (dvc_stage.describe_changes(changes) if status.lock_entry(stage) else "no dvc.lock entry yet")
    status.workspace_changed()  # from here on this stage's outputs and dvc.lock change: later stages ask DVC again
    if dvc_stage.clear_or_restore(stage, use_run_cache=not forced):
        fingerprint = dvc_stage.commit_stage(stage)
        reason = f"restored from the DVC run cache ({reason})"
        logger.info("%s: %s; dvc.lock %s", stage, reason, fingerprint[:12])
        return Completed(name="Cached", message=f"{reason}; dvc.lock entry sha256:{fingerprint}",
                         data={"stage": stage, "cached": True, "lock_sha256": fingerprint, "reason": reason})

    logger.info("%s: running (%s)", stage, reason)
    # Raises on failure: nothing below runs, so dvc.lock keeps the last good entry.
    result = run() if run else run_step(stage)
    if edited := status.code_edited(stage):
        raise SliceWiseError(f"{', '.join(edited)} changed while this flow ran: the {stage} step ran the code it had "
                             "loaded before, so dvc.lock does not record it as this code's result (the stage stays "
                             "stale); run the flow again", dvc_stage.DVC_LOCK)
    fingerprint = dvc_stage.commit_stage(stage)
    logger.info("%s: done, recorded in dvc.lock (%s)", stage, fingerprint[:12])
    return Completed(message=f"ran ({reason}); dvc.lock entry sha256:{fingerprint}",
                     data={"stage": stage, "cached": False, "lock_sha256": fingerprint, "reason": reason,
                           "result": result})

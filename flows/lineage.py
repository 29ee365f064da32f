"""Lineage of a flow run: tags in Prefect, the flow run id for MLflow, and the MLflow parent run.

- The flow run is tagged `profile:<p>`, `source:<s>` and `git:<commit>` so the Prefect UI filters by them.
- `SLICEWISE_PREFECT_FLOW_RUN_ID` is exported for the run's duration; the steps run in this process, and the
  MLflow tracker tags runs and registry versions with it (`prefect_flow_run_id`).
- When tracking is on and some stage will run, the MLflow parent run is opened up front
  (tasks.tracking.mlflow_runs.open_parent_run) and exported as `SLICEWISE_PARENT_RUN_ID`, so every step's child
  run hangs under it. `register` ends the parent itself; if the flow fails first, or `register` did not run
  (it was Cached, or is not in dvc.yaml yet), the parent is ended here (FAILED / FINISHED) so none stays
  RUNNING. A run where everything is Cached opens no parent at all: it trained nothing. Nor, in the end, does one
  where no step logged under it (its stale stages came back from DVC's run cache, or only the data steps ran, which
  log nothing to MLflow): the parent, opened up front, is deleted again.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from tasks.config import Settings
from tasks.tracking import provenance
from tasks.tracking.mlflow_runs import PARENT_RUN_ENV
from tasks.tracking.provenance import FLOW_RUN_ENV

log = logging.getLogger(__name__)


def flow_run_tags(settings: Settings) -> list[str]:
    return [f"profile:{settings.profile}", f"source:{settings.data.source}", f"git:{provenance.git_commit()[:12]}"]


def tag_flow_run(flow_run_id: str, tags: list[str], existing: list[str] | None = None) -> None:
    """Add tags to the running flow run, keeping those it already has (e.g. from its deployment).

    `existing`: the run's tags as its context already knows them (`prefect.runtime.flow_run.tags`), which saves
    asking the server for them; None asks.
    """
    from prefect import get_client

    with get_client(sync_client=True) as client:
        if existing is None:
            existing = client.read_flow_run(flow_run_id).tags or []
        if missing := set(tags) - set(existing):
            client.update_flow_run(flow_run_id, tags=sorted(set(existing) | missing))


@contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    """Set an environment variable for the block only, so one flow run never leaks into the next."""
    previous = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@dataclass
class ParentRun:
    """The flow run's MLflow parent run: `run_id` None when none was opened, or when it was deleted at the end
    because no step ran under it."""

    run_id: str | None


@contextmanager
def pipeline_run(settings: Settings, flow_run_id: str, work_pending: bool) -> Iterator[ParentRun]:
    """The block in which the stages run; yields the MLflow parent run."""
    parent = ParentRun(open_parent(settings) if work_pending and settings.tracking.enabled else None)
    with _env(FLOW_RUN_ENV, flow_run_id), _env(PARENT_RUN_ENV, parent.run_id):
        try:
            yield parent
        except BaseException:
            if parent.run_id:
                end_parent_if_running(settings, parent.run_id, "FAILED")
            raise
    if parent.run_id:
        if delete_if_empty(settings, parent.run_id):
            parent.run_id = None
        else:
            end_parent_if_running(settings, parent.run_id, "FINISHED")


def delete_if_empty(settings: Settings, run_id: str) -> bool:
    """Delete the parent when no step logged under it (still RUNNING, so register did not end it, and no child
    run): every stale stage was restored from DVC's run cache, or only the data steps ran. True when deleted."""
    from tasks.tracking.store import make_client, retrying

    client = make_client(settings.tracking)
    run = retrying(settings.tracking, "get run", client.get_run, run_id)
    children = retrying(settings.tracking, "find step runs", client.search_runs, [run.info.experiment_id],
                        filter_string=f"tags.mlflow.parentRunId = '{run_id}'", max_results=1)
    if run.info.status != "RUNNING" or children:
        return False
    retrying(settings.tracking, "delete empty parent run", client.delete_run, run_id)
    log.info("MLflow: deleted parent run %s: no step logged under it", run_id)
    return True


def open_parent(settings: Settings) -> str:
    from tasks.tracking.mlflow_runs import open_parent_run

    return open_parent_run(settings)  # which logs "MLflow: parent run <id> (<name>)", in the UI too


def end_parent_if_running(settings: Settings, run_id: str, status: str) -> None:
    """End the parent unless `register` already did; never let this hide the flow's own error."""
    from tasks.tracking.mlflow_runs import close_parent_run
    from tasks.tracking.store import make_client, retrying

    try:
        client = make_client(settings.tracking)
        if retrying(settings.tracking, "get run", client.get_run, run_id).info.status == "RUNNING":
            close_parent_run(settings, run_id, status)
    except Exception as exc:
        if status == "FINISHED":
            raise
        log.warning("could not end MLflow parent run %s as %s: %s", run_id, status, exc)

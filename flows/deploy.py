"""Scheduled retraining: the pipeline flow as a deployment on the cron in params.yaml (`schedule` section).

`python -m flows serve` serves it from this process: the deployment `slicewise-pipeline/slicewise-weekly`
appears in the Prefect UI, runs on its schedule, and can be started by hand ("Quick run", or
`prefect deployment run slicewise-pipeline/slicewise-weekly`). A scheduled run whose raw data and parameters
have not changed finds every stage Cached in DVC and finishes in seconds without registering anything.
Each run executes in a fresh process in the serving directory (the project root), like `dvc repro`.
(scripts/prefect_worker.sh deploys the same flow onto a work pool instead, for a worker in docker compose.)
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from flows.pipeline import slicewise_pipeline
from tasks import paths
from tasks.config import Settings
from tasks.errors import SliceWiseError

DEPLOYMENT_NAME = "slicewise-weekly"


def retraining_schedule(settings: Settings) -> Cron:
    """The `schedule` section as a Prefect schedule; a cron string or time zone Prefect refuses is a SliceWiseError
    naming params.yaml's key (it was a pydantic traceback from deep inside `flows serve`)."""
    schedule = settings.schedule
    try:
        ZoneInfo(schedule.timezone)  # Prefect takes any name here and fails later, in the scheduler
    except (ValueError, OSError, ZoneInfoNotFoundError) as exc:  # "Europe" is a folder of zones: IsADirectoryError
        raise SliceWiseError(f"schedule.timezone {schedule.timezone!r} is not a time zone name (e.g. 'UTC', "
                             "'Europe/Paris')", paths.PARAMS) from exc
    try:
        return Cron(schedule.cron, timezone=schedule.timezone)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        reason = getattr(exc, "errors", lambda: [{"msg": str(exc)}])()[0]["msg"]
        raise SliceWiseError(f"schedule.cron {schedule.cron!r} ({schedule.timezone}) is not a schedule Prefect "
                             f"accepts: {reason}; e.g. '0 3 * * 1' (Mondays 03:00)", paths.PARAMS) from exc


def build_deployment(settings: Settings, name: str = DEPLOYMENT_NAME) -> RunnerDeployment:
    """The deployment object (nothing is sent to a server until it is served or applied)."""
    schedule = settings.schedule
    return slicewise_pipeline.to_deployment(
        name=name,
        schedules=[retraining_schedule(settings)],
        description=f"Retrain when data or parameters changed; cron {schedule.cron!r} ({schedule.timezone})",
        tags=["slicewise", "retraining"],
        concurrency_limit=1,  # runs share data/ and dvc.lock; tasks/run_lock.py refuses a second one anyway
        # Imported as flows.pipeline, not loaded from its file: Prefect would put flows/ itself on sys.path.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve(settings: Settings) -> None:
    """Serve the deployment until interrupted; one run at a time, as runs share data/ and dvc.lock."""
    from prefect import serve as prefect_serve

    prefect_serve(build_deployment(settings), limit=1)

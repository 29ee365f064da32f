"""Register a flow, from source, as a deployment on a Prefect work pool.

`scripts/prefect_worker.sh` (`make worker`, the compose `worker` service) runs this before it starts the worker,
so the worker has the pipeline to run. A worker never runs the caller's in-memory flow: each run starts a fresh
process that first changes into the source directory (the deployment's `set_working_directory` pull step) and
then imports the entrypoint, so the pipeline's relative paths (params.yaml, data/, ...) resolve as with DVC.

    python scripts/deploy_flow.py --pool slicewise-pool                     # the pipeline, cron from params.yaml
    python scripts/deploy_flow.py --pool p --source DIR --entrypoint pkg.module.flow_fn --no-schedule
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# A module path (package.module.function), imported from the source directory: a file path (flows/pipeline.py:fn)
# would also put flows/ itself on sys.path, as flows/deploy.py explains.
PIPELINE_ENTRYPOINT = "flows.pipeline.slicewise_pipeline"
DEPLOYMENT_NAME = "worker"  # full name: <flow name>/worker, e.g. slicewise-pipeline/worker
WORK_POOL = "slicewise-pool"


def deploy_from_source(
    source: Path,
    entrypoint: str,
    name: str,
    work_pool: str,
    cron: str | None = None,
    timezone: str = "UTC",
    parameters: dict[str, Any] | None = None,
) -> str:
    """Create or update the deployment `<flow>/<name>` on `work_pool`; returns its id.

    Uses `to_deployment(...).apply()` rather than `Flow.deploy`: in Prefect 3.8.8 `Flow.deploy` (and
    `prefect deploy`) first lists the pool's online workers with a request the server rejects (422, null
    offset/limit), whereas `apply()` only registers the deployment, which is all a process pool needs.
    """
    from prefect import flow
    from prefect.schedules import Cron

    source_flow = flow.from_source(source=str(source.resolve()), entrypoint=entrypoint)
    deployment = source_flow.to_deployment(
        name=name,
        work_pool_name=work_pool,
        schedules=[Cron(cron, timezone=timezone)] if cron else None,
        parameters=parameters or {},
        concurrency_limit=1,  # as flows/deploy.py: runs share data/ and dvc.lock (tasks/run_lock.py refuses a second)
    )
    deployment_id = str(deployment.apply())
    logger.info("deployed %s/%s to work pool %s (schedule: %s)", source_flow.name, name, work_pool, cron or "none")
    return deployment_id


def schedule_from_params(params: Path) -> tuple[str, str]:
    """The retraining cron and its timezone from params.yaml's `schedule` section (parsed by tasks.config), checked
    as `flows serve` checks them (a cron or time zone Prefect would take here and fail on later is refused now)."""
    from flows.deploy import retraining_schedule
    from tasks.config import load_settings
    from tasks.errors import SliceWiseError

    settings = load_settings(params)
    try:
        retraining_schedule(settings)
    except SliceWiseError as exc:  # it names the project's params.yaml, which it checks by default; this is `params`
        raise SliceWiseError(exc.reason, params) from exc
    return settings.schedule.cron, settings.schedule.timezone


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=WORK_POOL, help="work pool (must exist)")
    parser.add_argument("--source", type=Path, default=Path("."), help="directory the worker runs the flow from")
    parser.add_argument(
        "--entrypoint", default=PIPELINE_ENTRYPOINT, help="module.path.function (or FILE:FUNCTION) in --source"
    )
    parser.add_argument("--name", default=DEPLOYMENT_NAME, help="deployment name")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="where the schedule is read")
    parser.add_argument("--no-schedule", action="store_true", help="deploy without the params.yaml cron")
    args = parser.parse_args(argv)

    from tasks.errors import SliceWiseError

    try:
        cron, timezone = (None, "UTC") if args.no_schedule else schedule_from_params(args.params)
    except SliceWiseError as exc:  # a bad params.yaml: one line naming it (`make worker` runs this), not a traceback
        raise SystemExit(f"error: {exc}") from None
    return deploy_from_source(args.source, args.entrypoint, args.name, args.pool, cron=cron, timezone=timezone)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()

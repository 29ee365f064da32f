#!/usr/bin/env bash
# A Prefect worker for the SliceWise pipeline: `make worker`, and the `worker` service of docker/compose.yaml.
#   1. creates the process work pool if it does not exist yet,
#   2. deploys the pipeline flow from this checkout onto it (cron from params.yaml's `schedule`),
#   3. runs `prefect worker start` in the foreground; each run executes in a new process from the checkout.
# Trigger a run:  PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/prefect deployment run slicewise-pipeline/worker
#
# Environment:
#   PREFECT_API_URL            the Prefect server (default http://127.0.0.1:4200/api, as `make prefect-ui` starts)
#   SLICEWISE_WORK_POOL        work pool name (default slicewise-pool)
#   SLICEWISE_FLOW_SOURCE      directory the worker runs flows from (default: the repository root)
#   SLICEWISE_FLOW_ENTRYPOINT  module.path.function in the source (default: flows.pipeline.slicewise_pipeline)
#   SLICEWISE_DEPLOYMENT       deployment name (default worker)
#   SLICEWISE_SCHEDULE         params (default: weekly cron from params.yaml) or none
#   SLICEWISE_PYTHON           interpreter with Prefect installed (default: python on PATH)
# Extra arguments go to `prefect worker start` (e.g. --with-healthcheck, --limit 1, --run-once).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PREFECT_API_URL="${PREFECT_API_URL:-http://127.0.0.1:4200/api}"
python="${SLICEWISE_PYTHON:-python}"
pool="${SLICEWISE_WORK_POOL:-slicewise-pool}"
source_dir="${SLICEWISE_FLOW_SOURCE:-$repo_root}"
schedule="${SLICEWISE_SCHEDULE:-params}"
# said before anything is created: "off" or "false" deployed the weekly cron, quietly
if [[ "$schedule" != params && "$schedule" != none ]]; then
  echo "error: SLICEWISE_SCHEDULE=$schedule: use params (the cron of params.yaml's schedule) or none" >&2
  exit 2
fi

"$repo_root/scripts/seed_state.sh" "$repo_root"  # the worker image's state volume (nothing to do elsewhere)

if ! "$python" -m prefect work-pool inspect "$pool" >/dev/null 2>&1; then
  "$python" -m prefect work-pool create "$pool" --type process
fi

# The cron from the params.yaml the runs read: the source's (SLICEWISE_FLOW_SOURCE) when it has one, this checkout's
# otherwise (a source holding another flow alone).
params="$source_dir/params.yaml"
[[ -f "$params" ]] || params="$repo_root/params.yaml"
deploy_args=(--pool "$pool" --source "$source_dir" --params "$params")
[[ -n "${SLICEWISE_FLOW_ENTRYPOINT:-}" ]] && deploy_args+=(--entrypoint "$SLICEWISE_FLOW_ENTRYPOINT")
[[ -n "${SLICEWISE_DEPLOYMENT:-}" ]] && deploy_args+=(--name "$SLICEWISE_DEPLOYMENT")
[[ "$schedule" == none ]] && deploy_args+=(--no-schedule)
# The repository root on the path: the deploy script reads the schedule through tasks.config.
PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}" "$python" "$repo_root/scripts/deploy_flow.py" "${deploy_args[@]}"

exec "$python" -m prefect worker start --pool "$pool" --type process "$@"

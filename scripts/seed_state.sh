#!/usr/bin/env bash
# The worker image (docker/Dockerfile.train) links dvc.lock and params.yaml into state/, a volume. A named volume
# starts as the image's copy, but a bind mount or a Kubernetes volume starts empty, and the links would point at
# nothing: they are filled from the image's own copies (.state-seed/) where missing, never over what a run wrote.
# Usage: scripts/seed_state.sh PROJECT_ROOT (a checkout without .state-seed/: nothing to do).
set -euo pipefail
root="${1:?usage: seed_state.sh PROJECT_ROOT}"
[[ -d "$root/.state-seed" ]] || exit 0
mkdir -p "$root/state"
for name in dvc.lock params.yaml; do
  [[ -e "$root/state/$name" ]] || cp "$root/.state-seed/$name" "$root/state/$name"
done

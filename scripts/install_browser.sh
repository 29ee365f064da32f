#!/usr/bin/env bash
# Installs the headless browser the web-UI test drives: Debian's chromium + chromium-driver.
# Does nothing when /usr/bin/chromium and /usr/bin/chromedriver are already there (make test calls it every time).
# Debian packages, not a downloaded Chrome: the versions of browser and driver always match, and the
# package manager verifies what it installs.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver

if [[ -x "$CHROMIUM" && -x "$CHROMEDRIVER" ]]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: no apt-get on this system; install chromium and its driver so that" \
         "$CHROMIUM and $CHROMEDRIVER exist" >&2
    exit 1
fi

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_browser.sh: installing chromium needs root (or sudo)" >&2
        exit 1
    fi
fi

echo "installing chromium and chromium-driver (Debian packages) for the web-UI test ..."
export DEBIAN_FRONTEND=noninteractive
# The lock wait matters where several jobs share one machine and another apt-get may be running.
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -q
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends chromium chromium-driver fonts-dejavu-core

"$CHROMIUM" --version
"$CHROMEDRIVER" --version

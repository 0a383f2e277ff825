#!/usr/bin/env bash
# Sets up a virtualenv in .venv with the project installed; idempotent.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --dev    plus the test tools and the Debian packages the tests run
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[ "${1:-}" = "--dev" ] && DEV=1

# Debian packages the test suite starts for real (added as the suite needs them).
DEV_APT_PACKAGES=(prometheus docker-compose nginx wrk chromium chromium-driver iproute2)

apt_install() {
    [ "$#" -gt 0 ] || return 0
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    if [ "$(id -u)" != 0 ]; then
        echo "setup: please install: ${missing[*]} (apt-get install needs root)" >&2
        return 1
    fi
    echo "setup: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" -V 2>&1))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        apt_install python3-venv python3-pip
        "$PYTHON" -m venv .venv
    fi
fi

STAMP=.venv/.installed-$DEV-$(cat pyproject.toml | sha1sum | cut -c1-12)
if [ ! -e "$STAMP" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    if [ "$DEV" = 1 ]; then
        .venv/bin/python -m pip install -q -e '.[dev]'
    else
        .venv/bin/python -m pip install -q -e .
    fi
    touch "$STAMP"
fi
if [ "$DEV" = 1 ]; then
    apt_install "${DEV_APT_PACKAGES[@]}"
fi

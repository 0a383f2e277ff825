#!/usr/bin/env bash
# Set up (once) and run every check: formatting, lint, types, the whole test suite, then the
# Windows stage (scripts/ci-windows.sh: the exe built and run as a service under Wine).
# Extra arguments go to pytest and skip the Windows stage, as does OM_SKIP_WINDOWS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy
# The Windows-only code (service host, Win32 seam, job object), type-checked as on Windows.
.venv/bin/mypy --platform win32 --no-warn-unreachable
.venv/bin/python -m pytest "$@"
if [ "$#" -eq 0 ] && [ "${OM_SKIP_WINDOWS:-0}" != 1 ]; then
    bash scripts/ci-windows.sh
fi

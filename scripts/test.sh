#!/usr/bin/env bash
# Set up (once) and run every check: formatting, lint, types, then the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy
# The Windows-only code (service host, Win32 seam, job object), type-checked as on Windows.
.venv/bin/mypy --platform win32 --no-warn-unreachable
exec .venv/bin/python -m pytest "$@"

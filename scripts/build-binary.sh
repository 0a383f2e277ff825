#!/usr/bin/env bash
# Builds the one-file Linux executable dist/ollama-metrics from build/pyinstaller.spec with
# the project's .venv (set up first if missing; PyInstaller added to it if missing), then
# prints the executable's path on stdout (the build's own output goes to stderr).
# Idempotent: every run is a clean build of the current checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/ollama-metrics ]; then
    bash scripts/setup.sh >&2
fi
if ! .venv/bin/python -c 'import PyInstaller' 2>/dev/null; then
    echo "build-binary: installing PyInstaller into .venv" >&2
    .venv/bin/python -m pip install -q pyinstaller >&2
fi
started=$(date +%s.%N)
.venv/bin/python -m PyInstaller --noconfirm --clean --log-level "${PYINSTALLER_LOG_LEVEL:-WARN}" \
    --distpath dist --workpath build/out build/pyinstaller.spec >&2
# Dated when the build began: a source edited during the build is then newer than the
# binary, which is what tests/concerns/test_frozen_binary.py checks before reusing it.
touch -d "@$started" dist/ollama-metrics
echo "$PWD/dist/ollama-metrics"

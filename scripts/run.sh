#!/usr/bin/env bash
# Set up (once) and run ollama-metrics; with no arguments, the proxy on 127.0.0.1:11434
# in front of the Ollama on 127.0.0.1:11435. Any arguments are ollama-metrics' own.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ "$#" -gt 0 ] || set -- proxy
exec .venv/bin/ollama-metrics "$@"

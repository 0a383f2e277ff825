"""A stand-in `ollama` executable for tests of code that runs the real binary.

`tests/fake_ollama/ollama` is a POSIX sh script that runs `python -m tests.fake_ollama`
with `$FAKE_OLLAMA_PYTHON` (default `python3`). Put this folder first on PATH and the
wrapper under test finds it as `ollama`:

    env = fake_ollama.environ(OLLAMA_HOST="127.0.0.1:11435")
    subprocess.Popen(["ollama", "serve"], env=env)        # found through env["PATH"]

`ollama serve` runs the project's emulator (`tests.emulator`) on `envconfig.Host()`;
the client commands (list, ps, show, pull, push, create, cp, rm, stop, run, -v) talk
HTTP to it, or to whatever listens there (a proxy), sending what the real CLI sends
and printing what it prints. Flow: `cli` (argv, environment, errors) → `commands` /
`run` (requests, output) → `client` (HTTP, Go client errors); `serve` → `server`.

Test knobs (environment):
    FAKE_OLLAMA_PYTHON          interpreter for the script (tests: sys.executable)
    FAKE_OLLAMA_TOKEN_DELAY     seconds between streamed chunks of `serve`
    FAKE_OLLAMA_CRASH_AFTER     `serve` exits with status 2 this long after listening
    FAKE_OLLAMA_PIDFILE         `serve` appends its pid to this file at every start
    FAKE_OLLAMA_SERVER_VERSION  what `serve` reports in /api/version (default 0.33.0)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["BIN_DIR", "EXECUTABLE", "environ"]

BIN_DIR = Path(__file__).resolve().parent
EXECUTABLE = BIN_DIR / "ollama"


def environ(base: Mapping[str, str] | None = None, **variables: str) -> dict[str, str]:
    """A copy of `base` (default: os.environ) in which `ollama` is the stand-in.

    Keyword arguments are set as environment variables (OLLAMA_HOST=..., FAKE_OLLAMA_...).
    """
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join(filter(None, [str(BIN_DIR), env.get("PATH", "")]))
    env["FAKE_OLLAMA_PYTHON"] = sys.executable
    env.update(variables)
    return env

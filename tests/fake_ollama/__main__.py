"""`python -m tests.fake_ollama ARGS...` is what the `ollama` script in this folder runs."""

from __future__ import annotations

import io
import signal
import sys

if __name__ == "__main__":
    if sys.argv[1:2] in (["serve"], ["start"]):
        # The real server exits 0 on SIGTERM/SIGINT; claim that before the slow imports
        # below, so a wrapper that stops a server right after starting it sees status 0.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: sys.exit(0))

    # The real binary reads and writes UTF-8 whatever the locale says.
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(encoding="utf-8")

    from tests.fake_ollama.cli import main

    sys.exit(main())

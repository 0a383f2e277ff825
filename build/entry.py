"""PyInstaller's entry script: the frozen ``ollama-metrics`` is ``python -m app``."""

import sys

from app.__main__ import run

if __name__ == "__main__":
    sys.exit(run())

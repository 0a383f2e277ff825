"""PyInstaller's entry script: the frozen ``ollama-metrics`` is the ``ollama-metrics`` CLI."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""How this program starts itself again as a child process (``serve`` in the background,
the analytics migration at start-up)."""

from __future__ import annotations

import subprocess
import sys


def self_command() -> list[str]:
    """The command line that runs this program: a PyInstaller exe is its own interpreter."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "app"]


# A child needs no console window of its own (a Windows service has none to share).
if sys.platform == "win32":
    NO_WINDOW = subprocess.CREATE_NO_WINDOW
else:
    NO_WINDOW = 0

"""Where the ``ollama`` executable is."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

INSTALL_HINT = (
    "Ollama is not installed (no 'ollama' on PATH or in the usual places). Install it from "
    "Ollama's download page, or set OLLAMA_BIN to its path; to put the proxy in front of an "
    "Ollama that runs elsewhere, use: ollama-metrics proxy --upstream http://HOST:PORT"
)


def usual_locations() -> list[Path]:
    """Where Ollama's installers put the binary, per platform."""
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA", "")
        program_files = os.environ.get("PROGRAMFILES", r"C:\Program Files")
        return [
            Path(local) / "Programs" / "Ollama" / "ollama.exe",
            Path(program_files) / "Ollama" / "ollama.exe",
        ]
    if sys.platform == "darwin":
        return [
            Path("/Applications/Ollama.app/Contents/Resources/ollama"),
            Path("/usr/local/bin/ollama"),
            Path("/opt/homebrew/bin/ollama"),
        ]
    return [Path("/usr/local/bin/ollama"), Path("/usr/bin/ollama"), Path("/snap/bin/ollama")]


def find_ollama(configured: str | None) -> str | None:
    """``OLLAMA_BIN`` if given (a path or a name on PATH), else PATH, else the usual places."""
    if configured:
        found = shutil.which(configured)
        return found or (configured if Path(configured).is_file() else None)
    found = shutil.which("ollama")
    if found:
        return found
    for candidate in usual_locations():
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None

"""The program starting itself again: the command line, and the hidden migration child."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.analytics.migrate import CHILD_COMMAND
from app.reexec import self_command
from tests.support import ROOT


def test_a_frozen_exe_is_its_own_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    assert self_command() == [sys.executable, "-m", "app"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert self_command() == [sys.executable]


@pytest.mark.process
def test_the_command_runs_this_program_and_reaches_the_migration_child() -> None:
    help_text = subprocess.run(
        [*self_command(), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert help_text.returncode == 0, help_text.stderr
    assert "ollama-metrics" in help_text.stdout
    # The hidden first argument is the migration child, not a CLI command: bad orders on
    # its stdin are its error, said on stderr, status 1.
    child = subprocess.run(
        [*self_command(), CHILD_COMMAND],
        input="not json",
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 1
    assert child.stderr.startswith("JSONDecodeError:"), child.stderr

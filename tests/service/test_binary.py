"""Finding the ``ollama`` executable (app/service/binary.py): OLLAMA_BIN, PATH, then the
places each platform's installer uses."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from app.cli import _parser
from app.service import binary as binary_module
from app.service.binary import INSTALL_HINT, find_ollama, usual_locations


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_find_ollama_prefers_ollama_bin_then_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = tmp_path / "my-ollama"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    assert find_ollama(str(binary)) == str(binary)
    assert find_ollama(str(tmp_path / "missing")) is None
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "ollama").write_text("#!/bin/sh\n")
    (on_path / "ollama").chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path) + os.pathsep + os.environ["PATH"])
    assert find_ollama(None) == str(on_path / "ollama")


def test_ollama_bin_may_be_a_name_looked_up_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = executable(tmp_path / "bin" / "ollama-nightly")
    monkeypatch.setenv("PATH", str(found.parent))
    assert find_ollama("ollama-nightly") == str(found)


def test_a_configured_binary_that_is_missing_is_not_replaced_by_the_one_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = executable(tmp_path / "bin" / "ollama")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert find_ollama(None) == str(on_path)
    assert find_ollama(str(tmp_path / "elsewhere" / "ollama")) is None
    assert find_ollama("no-such-ollama") is None


def test_without_ollama_on_path_the_usual_places_are_tried_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    not_executable = tmp_path / "first" / "ollama"
    not_executable.parent.mkdir()
    not_executable.write_text("data, not a program\n")
    not_executable.chmod(0o644)
    second = executable(tmp_path / "second" / "ollama")
    third = executable(tmp_path / "third" / "ollama")
    places = [tmp_path / "absent" / "ollama", not_executable, second, third]
    monkeypatch.setattr(binary_module, "usual_locations", lambda: places)
    assert find_ollama(None) == str(second)
    monkeypatch.setattr(binary_module, "usual_locations", lambda: places[:2])
    assert find_ollama(None) is None


def test_the_usual_places_on_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", "/u/ada/AppData/Local")
    monkeypatch.delenv("PROGRAMFILES", raising=False)
    assert usual_locations() == [
        Path("/u/ada/AppData/Local/Programs/Ollama/ollama.exe"),
        Path(r"C:\Program Files") / "Ollama" / "ollama.exe",
    ]
    monkeypatch.setenv("PROGRAMFILES", "/pf")
    assert usual_locations()[1] == Path("/pf/Ollama/ollama.exe")


def test_the_usual_places_on_macos_start_with_the_app_bundle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    places = usual_locations()
    assert places[0] == Path("/Applications/Ollama.app/Contents/Resources/ollama")
    assert Path("/opt/homebrew/bin/ollama") in places


def test_the_usual_places_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    assert usual_locations() == [
        Path("/usr/local/bin/ollama"),
        Path("/usr/bin/ollama"),
        Path("/snap/bin/ollama"),
    ]


def test_the_install_hint_names_both_ways_out_and_its_command_is_real() -> None:
    assert "set OLLAMA_BIN to its path" in INSTALL_HINT
    suggested = INSTALL_HINT.split("use: ollama-metrics ", 1)[1].split()
    assert suggested == ["proxy", "--upstream", "http://HOST:PORT"]
    args = _parser().parse_args(suggested)
    assert (args.command, args.upstream) == ("proxy", "http://HOST:PORT")

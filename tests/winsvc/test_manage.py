"""service install/uninstall/start/stop/status against a fake Windows (tests/winfake.py).

The Windows machine is simulated behind the seam; the files (Startup folder, task files,
configuration, backup) are real files in a temporary folder laid out as on Windows.
"""

from __future__ import annotations

import io
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.config import CONFIG_ENV, Settings
from app.winsvc import manage, sc
from app.winsvc.system import REG_SZ, RegValue
from tests.winfake import (
    RUN_KEY,
    FakeWindows,
    Service,
    split_args,
    split_image_path,
    task_enabled,
    task_xml,
    windows_drive,
)

EXE = r"C:\Program Files\Ollama Metrics\ollama-metrics.exe"
TRAY = r"C:\Users\ada\AppData\Local\Programs\Ollama\ollama app.exe"


@dataclass
class Machine:
    win: FakeWindows
    root: Path
    home: Path
    out: io.StringIO
    err: io.StringIO

    def run(self, action: str, **kwargs: object) -> int:
        self.out.seek(0)
        self.out.truncate()
        self.err.seek(0)
        self.err.truncate()
        options = manage.Options(
            executable=EXE, home=self.home, out=self.out, err=self.err, sleep=lambda s: None
        )
        for key, value in kwargs.items():
            setattr(options, key, value)
        return manage.run(action, options, win=self.win)

    @property
    def startup(self) -> Path:
        return self.root / "AppData/Roaming/Microsoft/Windows/Start Menu/Programs/Startup"

    @property
    def tasks(self) -> Path:
        return self.root / "Windows/System32/Tasks"


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Machine:
    root = tmp_path / "C"
    win = windows_drive(root, monkeypatch.setenv)
    # The user's Ollama, where its installer puts it, and their models.
    ollama_dir = root / "AppData/Local/Programs/Ollama"
    ollama_dir.mkdir(parents=True)
    for name in ("ollama.exe", "ollama app.exe"):
        (ollama_dir / name).write_bytes(b"MZ")
        (ollama_dir / name).chmod(0o755)
    (ollama_dir / "ollama").symlink_to(ollama_dir / "ollama.exe")
    (root / "Users/ada/.ollama/models").mkdir(parents=True)
    monkeypatch.setenv("PATH", f"{ollama_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    win.listeners[445] = 4
    return Machine(win, root, root / "ProgramData/OllamaMetrics", io.StringIO(), io.StringIO())


def add_ollama_everywhere(m: Machine) -> bytes:
    """Ollama as its installer leaves it, plus every other way people make it start."""
    m.startup.mkdir(parents=True, exist_ok=True)
    shortcut = os.urandom(64)
    (m.startup / "Ollama.lnk").write_bytes(shortcut)
    (m.startup / "Other.lnk").write_bytes(b"other")
    m.win.reg_set(RUN_KEY, RegValue("Ollama", REG_SZ, f'"{TRAY}"'))
    (m.tasks / "Ollama Serve").write_bytes(task_xml(r"C:\ollama\ollama.exe", "serve"))
    (m.tasks / "Microsoft").mkdir()
    (m.tasks / "Microsoft" / "Defrag").write_bytes(task_xml(r"C:\Windows\defrag.exe"))
    (m.tasks / "Old Ollama").write_bytes(task_xml(r"C:\ollama\ollama.exe", enabled=False))
    m.win.services["Ollama Server"] = Service(
        r'"C:\ollama\ollama.exe" serve', "delayed-auto", state="RUNNING"
    )
    m.win.processes.update({100: "ollama app.exe", 101: "ollama.exe", 102: "ollama.exe"})
    m.win.listeners[11434] = 101
    return shortcut


def test_install_registers_the_exact_service_and_writes_its_configuration(m: Machine) -> None:
    assert m.run("install") == 0, m.err.getvalue()
    service = m.win.services["OllamaMetricsProxy"]
    assert split_image_path(service.image_path) == (EXE, ["-service"])
    assert service.image_path == f'"{EXE}" -service'
    assert service.start == "auto"
    assert service.display_name == "Ollama Metrics Proxy"
    assert service.description == sc.DESCRIPTION
    assert service.failure == ("86400", "restart/5000/restart/10000/restart/60000")
    # The lines run are exactly the ones --dry-run prints.
    created = [c for c in m.win.commands if c.startswith("sc.exe create")]
    assert created == [sc.create("OllamaMetricsProxy", EXE).line]

    config = m.home / "config.toml"
    values = tomllib.loads(config.read_text(encoding="utf-8"))
    assert values["service_command"] == "serve"
    assert Path(values["ollama_bin"]).name in ("ollama", "ollama.exe")
    assert values["ollama_env"]["OLLAMA_MODELS"] == str(m.root / "Users/ada/.ollama/models")
    os.environ[CONFIG_ENV] = str(config)
    try:
        settings = Settings()
    finally:
        del os.environ[CONFIG_ENV]
    assert settings.proxy_port == 11434
    assert settings.ollama_env == {"OLLAMA_MODELS": str(m.root / "Users/ada/.ollama/models")}
    assert "ollama-metrics service start" in m.out.getvalue()


@pytest.fixture
def m(machine: Machine) -> Machine:
    return machine


def test_install_keeps_an_existing_configuration(m: Machine) -> None:
    m.home.mkdir(parents=True)
    (m.home / "config.toml").write_text('service_command = "proxy"\n', encoding="utf-8")
    assert m.run("install") == 0
    assert (m.home / "config.toml").read_text(encoding="utf-8") == 'service_command = "proxy"\n'


def test_start_stop_status(m: Machine) -> None:
    assert m.run("status") == manage.STATUS_MISSING
    assert "not installed" in m.out.getvalue()
    assert m.run("install") == 0
    assert m.run("status") == manage.STATUS_STOPPED
    assert m.run("start") == 0
    assert m.win.services["OllamaMetricsProxy"].state == "RUNNING"
    assert m.run("status") == 0
    assert "OllamaMetricsProxy: RUNNING" in m.out.getvalue()
    assert str(m.home / "logs" / "ollama-metrics.log") in m.out.getvalue()
    assert m.run("start") == 0  # already running: fine
    assert m.run("stop") == 0
    assert m.win.services["OllamaMetricsProxy"].state == "STOPPED"
    assert m.run("stop") == 0  # already stopped: fine


def test_a_service_that_fails_to_start_points_to_its_log(m: Machine) -> None:
    assert m.run("install") == 0
    m.win.services["OllamaMetricsProxy"].behaviour = "fails"
    assert m.run("start") == 1
    assert "did not start (STOPPED)" in m.err.getvalue()
    assert str(m.home / "logs" / "ollama-metrics.log") in m.err.getvalue()


def test_not_elevated_is_a_clear_error_and_changes_nothing(m: Machine) -> None:
    m.win.admin = False
    before = m.win.snapshot()
    for action in ("install", "uninstall", "start", "stop"):
        assert m.run(action) == 1
        assert "Run as administrator" in m.err.getvalue()
    assert m.win.snapshot() == before
    assert not m.home.exists()
    assert m.run("status") == manage.STATUS_MISSING  # status needs no elevation


def test_an_existing_service_is_not_overwritten(m: Machine) -> None:
    assert m.run("install") == 0
    commands = len(m.win.commands)
    assert m.run("install") == 1
    assert "already exists" in m.err.getvalue()
    assert "uninstall" in m.err.getvalue()
    assert not [c for c in m.win.commands[commands:] if c.startswith("sc.exe create")]


def test_uninstall_of_a_missing_service_says_so(m: Machine) -> None:
    assert m.run("uninstall", name="Nope") == 1
    assert "no service named Nope" in m.err.getvalue()


def test_uninstall_stops_a_running_service_first(m: Machine) -> None:
    assert m.run("install") == 0
    assert m.run("start") == 0
    assert m.run("uninstall") == 0
    assert "OllamaMetricsProxy" not in m.win.services
    ran = [c for c in m.win.commands if c.split()[1] in ("stop", "delete")]
    assert ran[-2:] == ["sc.exe stop OllamaMetricsProxy", "sc.exe delete OllamaMetricsProxy"]
    assert "stay in" in m.out.getvalue()


def test_install_stops_and_disables_ollama_and_uninstall_restores_exactly(m: Machine) -> None:
    shortcut = add_ollama_everywhere(m)
    tray = m.root / "AppData/Local/Programs/Ollama/ollama app.exe"
    before = m.win.snapshot()

    assert m.run("install") == 0, m.err.getvalue()
    out = m.out.getvalue()
    # Every Ollama autostart is off, the Ollama processes are gone, the port is free.
    assert not (m.startup / "Ollama.lnk").exists()
    assert (m.startup / "Other.lnk").read_bytes() == b"other"
    values = {v.name for v in m.win.reg_values(RUN_KEY)}
    assert values == {"OneDrive"}
    assert not task_enabled(m.tasks / "Ollama Serve")
    assert task_enabled(m.tasks / "Microsoft" / "Defrag")
    assert m.win.services["Ollama Server"].start == "disabled"
    assert m.win.services["Ollama Server"].state in ("STOP_PENDING", "STOPPED")
    assert m.win.services["Spooler"].start == "auto"
    assert set(m.win.processes) == {4}
    assert 11434 not in m.win.listeners
    for what in (
        "Startup-folder shortcut",
        "Run value",
        "scheduled task \\Ollama Serve",
        "service Ollama Server",
        "ollama app.exe (pid 100)",
    ):
        assert what in out
    backup = json.loads((m.home / "ollama-autostart-backup.json").read_text(encoding="utf-8"))
    assert {e["kind"] for e in backup["entries"]} == {
        "startup_shortcut",
        "run_value",
        "scheduled_task",
        "service",
        "process",
    }
    assert "Old Ollama" not in json.dumps(backup)  # already disabled: left alone

    assert m.run("uninstall") == 0, m.err.getvalue()
    after = m.win.snapshot()
    # Exactly what was there: the shortcut's bytes, the Run value, the task enabled, the
    # service's start type (and it is started again), nothing else changed.
    assert (m.startup / "Ollama.lnk").read_bytes() == shortcut
    assert after["registry"] == before["registry"]
    assert after["tasks"] == before["tasks"]
    restored = after["services"]["Ollama Server"]
    assert restored.start == "delayed-auto"
    assert restored.state in ("START_PENDING", "RUNNING")
    assert after["services"].keys() == before["services"].keys()
    assert m.win.launched == [str(tray)]
    assert not (m.home / "ollama-autostart-backup.json").exists()
    assert not (m.home / "ollama-autostart").exists()
    assert "restored" in m.out.getvalue()


def test_a_port_held_by_another_program_stops_the_install_untouched(m: Machine) -> None:
    add_ollama_everywhere(m)
    m.win.processes[300] = "nginx.exe"
    m.win.listeners[11434] = 300
    before = m.win.snapshot()
    assert m.run("install") == 1
    assert "nginx.exe (pid 300)" in m.err.getvalue()
    assert m.win.snapshot() == before
    assert (m.startup / "Ollama.lnk").exists()
    assert "OllamaMetricsProxy" not in m.win.services


def test_a_failed_create_puts_ollama_back(m: Machine) -> None:
    shortcut = add_ollama_everywhere(m)
    before = m.win.snapshot()
    m.win.fail_commands["create"] = 1072  # "marked for deletion"
    assert m.run("install") == 1
    assert "failed (exit status 1072)" in m.err.getvalue()
    after = m.win.snapshot()
    assert after["registry"] == before["registry"]
    assert after["tasks"] == before["tasks"]
    assert after["services"]["Ollama Server"].start == "delayed-auto"
    assert (m.startup / "Ollama.lnk").read_bytes() == shortcut
    assert "OllamaMetricsProxy" not in m.win.services
    assert not (m.home / "ollama-autostart-backup.json").exists()


def test_dry_run_lists_what_it_would_disable_and_changes_nothing(m: Machine) -> None:
    add_ollama_everywhere(m)
    before = m.win.snapshot()
    assert m.run("install", dry_run=True) == 0
    assert m.win.snapshot() == before
    assert (m.startup / "Ollama.lnk").exists()
    lines = m.out.getvalue().splitlines()
    assert [split_args(line)[1] for line in lines] == ["create", "description", "failure"]
    assert "rem would stop and disable: service Ollama Server" in m.err.getvalue()

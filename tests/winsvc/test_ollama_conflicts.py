"""An installed Ollama's autostarts (app/winsvc/ollama_conflicts.py): found, described,
disabled with a backup, and restored, on the fake Windows of tests/winfake.py with real
files (Startup folders, task files, the backup) laid out as on Windows."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.winsvc import ollama_conflicts
from app.winsvc.ollama_conflicts import (
    BACKUP_NAME,
    describe,
    disable,
    find,
    port_holders,
    restore,
    runs_ollama,
)
from app.winsvc.system import REG_DWORD, REG_EXPAND_SZ, REG_SZ, Completed, RegValue
from tests.winfake import RUN_KEY, FakeWindows, Service, task_enabled, task_xml, windows_drive

HKCU_RUN = RUN_KEY
HKLM_RUN = r"HKLM\Software\Microsoft\Windows\CurrentVersion\Run"
WOW_RUN = r"HKLM\Software\WOW6432Node\Microsoft\Windows\CurrentVersion\Run"
OWN = "OllamaMetricsProxy"


@dataclass
class Machine:
    win: FakeWindows
    root: Path
    home: Path

    @property
    def user_startup(self) -> Path:
        return self.root / "AppData/Roaming/Microsoft/Windows/Start Menu/Programs/Startup"

    @property
    def common_startup(self) -> Path:
        return self.root / "ProgramData/Microsoft/Windows/Start Menu/Programs/StartUp"

    @property
    def tasks(self) -> Path:
        return self.root / "Windows/System32/Tasks"

    @property
    def tray(self) -> Path:
        return self.root / "AppData/Local/Programs/Ollama/ollama app.exe"

    def find(self) -> list[ollama_conflicts.Entry]:
        return find(self.win, own_service=OWN)


@pytest.fixture
def m(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Machine:
    root = tmp_path / "C"
    win = windows_drive(root, monkeypatch.setenv)
    return Machine(win, root, root / "ProgramData/OllamaMetrics")


@pytest.mark.parametrize(
    ("command", "runs"),
    [
        (r'"C:\Users\ada\AppData\Local\Programs\Ollama\ollama app.exe"', True),
        (r"C:\ollama\ollama.exe serve", True),
        ("ollama.exe", True),
        (r'"C:\Program Files\Ollama Metrics\ollama-metrics.exe" -service', False),
        (r"C:\tools\myollama.exe", False),
        (r"C:\tools\ollama.exe.bak", False),
    ],
)
def test_what_counts_as_running_ollama(command: str, runs: bool) -> None:
    assert ollama_conflicts.runs_ollama(command) is runs


@pytest.mark.parametrize(
    ("command", "runs"),
    [
        (r"C:\OLLAMA\OLLAMA.EXE serve", True),  # Windows paths are case-insensitive
        ("C:/ollama/ollama.exe", True),
        (r"cmd.exe /c ollama.exe serve", True),
        (r'"C:\Ollama\Ollama App.exe" --hide', True),
        (r"C:\ollama\ollama app.exe.old", False),
        (r"C:\ollama\ollama-app.exe", False),
        ("", False),
    ],
)
def test_what_counts_as_running_ollama_more(command: str, runs: bool) -> None:
    assert runs_ollama(command) is runs


def test_our_own_service_is_never_taken_for_ollama(m: Machine) -> None:
    m.win.services["OllamaMetricsProxy"] = Service(
        r'"C:\ollama\ollama.exe" -service', "auto", state="RUNNING"
    )
    found = ollama_conflicts.find(m.win, own_service="OllamaMetricsProxy")
    assert found == []
    assert find(m.win, own_service="ollamametricsproxy") == []  # names: case-insensitive


def test_a_clean_machine_has_nothing_to_disable(m: Machine) -> None:
    assert m.find() == []


def test_startup_shortcuts_named_ollama_in_either_startup_folder(m: Machine) -> None:
    for folder in (m.user_startup, m.common_startup):
        folder.mkdir(parents=True)
    (m.user_startup / "Ollama.lnk").write_bytes(b"lnk")
    (m.user_startup / "Ollama Metrics.lnk").write_bytes(b"ours")
    (m.user_startup / "Other.lnk").write_bytes(b"other")
    (m.user_startup / "ollama-folder").mkdir()
    (m.common_startup / "ollama serve.lnk").write_bytes(b"lnk")
    assert m.find() == [
        {"kind": "startup_shortcut", "path": str(m.user_startup / "Ollama.lnk")},
        {"kind": "startup_shortcut", "path": str(m.common_startup / "ollama serve.lnk")},
    ]


def test_run_values_that_start_ollama_in_any_run_key(m: Machine) -> None:
    m.win.reg_set(HKCU_RUN, RegValue("Ollama", REG_SZ, f'"{m.tray}"'))
    m.win.reg_set(WOW_RUN, RegValue("OllamaServe", REG_EXPAND_SZ, r"C:\o\ollama.exe serve"))
    m.win.reg_set(HKLM_RUN, RegValue("Counter", REG_DWORD, 1))
    m.win.reg_set(HKLM_RUN, RegValue("Metrics", REG_SZ, r"C:\om\ollama-metrics.exe serve"))
    assert m.find() == [
        {"kind": "run_value", "key": HKCU_RUN, "name": "Ollama", "type": REG_SZ,
         "data": f'"{m.tray}"'},
        {"kind": "run_value", "key": WOW_RUN, "name": "OllamaServe", "type": REG_EXPAND_SZ,
         "data": r"C:\o\ollama.exe serve"},
    ]  # fmt: skip


def test_enabled_scheduled_tasks_that_run_ollama(m: Machine) -> None:
    (m.tasks / "Ollama Serve").write_bytes(task_xml(r"C:\ollama\ollama.exe", "serve"))
    (m.tasks / "Tools").mkdir()
    (m.tasks / "Tools" / "Via cmd").write_bytes(task_xml("cmd.exe", "/c ollama.exe serve"))
    (m.tasks / "Old Ollama").write_bytes(task_xml(r"C:\ollama\ollama.exe", enabled=False))
    (m.tasks / "Defrag").write_bytes(task_xml(r"C:\Windows\defrag.exe"))
    (m.tasks / "Broken").write_bytes(b"\x00not xml")
    assert m.find() == [
        {"kind": "scheduled_task", "task": "\\Ollama Serve"},
        {"kind": "scheduled_task", "task": "\\Tools\\Via cmd"},
    ]


@pytest.mark.parametrize(
    ("start", "state", "found"),
    [
        ("auto", "RUNNING", {"start_type": "auto", "was_running": True}),
        ("delayed-auto", "STOPPED", {"start_type": "delayed-auto", "was_running": False}),
        ("demand", "RUNNING", {"start_type": "demand", "was_running": True}),
        ("disabled", "RUNNING", {"start_type": "disabled", "was_running": True}),
        ("disabled", "STOPPED", None),  # already off and not running: nothing to do
    ],
)
def test_services_that_run_ollama_with_their_start_type(
    m: Machine, start: str, state: str, found: dict[str, object] | None
) -> None:
    m.win.services["Ollama"] = Service(r'"C:\ollama\ollama.exe" serve', start, state=state)
    expected = [] if found is None else [{"kind": "service", "name": "Ollama", **found}]
    assert m.find() == expected


def test_running_ollama_processes_and_the_tray_app_to_relaunch(m: Machine) -> None:
    m.win.processes.update({100: "ollama app.exe", 101: "Ollama.exe", 102: "ollama-metrics.exe"})
    assert m.find() == [  # no tray app installed: nothing to start again
        {"kind": "process", "pid": 100, "image": "ollama app.exe", "relaunch": None},
        {"kind": "process", "pid": 101, "image": "Ollama.exe", "relaunch": None},
    ]
    m.tray.parent.mkdir(parents=True)
    m.tray.write_bytes(b"MZ")
    assert [e["relaunch"] for e in m.find()] == [str(m.tray), None]


def test_find_lists_services_tasks_run_values_shortcuts_then_processes(m: Machine) -> None:
    m.user_startup.mkdir(parents=True)
    (m.user_startup / "Ollama.lnk").write_bytes(b"lnk")
    m.win.reg_set(HKCU_RUN, RegValue("Ollama", REG_SZ, "ollama.exe"))
    (m.tasks / "Ollama").write_bytes(task_xml("ollama.exe", "serve"))
    m.win.services["Ollama"] = Service("ollama.exe serve", "auto")
    m.win.processes[100] = "ollama.exe"
    kinds = [e["kind"] for e in m.find()]
    assert kinds == ["service", "scheduled_task", "run_value", "startup_shortcut", "process"]


def test_port_holders_names_each_listener(m: Machine) -> None:
    assert port_holders(m.win, 11434) == []
    assert m.win.commands == ["netstat -ano -p TCP"]  # nobody listens: no tasklist
    m.win.processes.update({101: "ollama.exe"})
    m.win.listeners.update({11434: 101, 8080: 300})
    assert port_holders(m.win, 11434) == [(101, "ollama.exe")]
    assert port_holders(m.win, 8080) == [(300, "unknown program")]  # gone by now


@pytest.mark.parametrize(
    ("entry", "text"),
    [
        ({"kind": "startup_shortcut", "path": r"C:\S\Ollama.lnk"},
         r"Startup-folder shortcut C:\S\Ollama.lnk"),
        ({"kind": "run_value", "key": HKCU_RUN, "name": "Ollama", "data": "ollama.exe"},
         f"registry Run value {HKCU_RUN}\\Ollama = ollama.exe"),
        ({"kind": "scheduled_task", "task": "\\Ollama Serve"}, "scheduled task \\Ollama Serve"),
        ({"kind": "service", "name": "Ollama", "start_type": "auto", "was_running": True},
         "service Ollama (start type auto, running)"),
        ({"kind": "service", "name": "Ollama", "start_type": "demand", "was_running": False},
         "service Ollama (start type demand)"),
        ({"kind": "process", "pid": 7, "image": "ollama.exe", "relaunch": None},
         "running process ollama.exe (pid 7)"),
    ],
)  # fmt: skip
def test_describe(entry: ollama_conflicts.Entry, text: str) -> None:
    assert describe(entry) == text


def backup(m: Machine) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((m.home / BACKUP_NAME).read_text(encoding="utf-8"))
    return loaded


def test_a_shortcut_is_moved_aside_and_put_back_byte_for_byte(m: Machine) -> None:
    m.user_startup.mkdir(parents=True)
    shortcut = os.urandom(256)
    (m.user_startup / "Ollama.lnk").write_bytes(shortcut)
    path = disable(m.win, m.find(), m.home)
    assert path == m.home / BACKUP_NAME
    assert not (m.user_startup / "Ollama.lnk").exists()
    saved = m.home / "ollama-autostart" / "Ollama.lnk"
    assert saved.read_bytes() == shortcut
    assert backup(m)["entries"] == [
        {"kind": "startup_shortcut", "path": str(m.user_startup / "Ollama.lnk"),
         "saved_as": str(saved)},
    ]  # fmt: skip
    assert m.find() == []
    assert restore(m.win, m.home) == [f"Startup-folder shortcut {m.user_startup / 'Ollama.lnk'}"]
    assert (m.user_startup / "Ollama.lnk").read_bytes() == shortcut
    assert not (m.home / BACKUP_NAME).exists()
    assert not (m.home / "ollama-autostart").exists()


def test_a_run_value_is_deleted_and_written_back_with_its_type(m: Machine) -> None:
    value = RegValue("Ollama", REG_EXPAND_SZ, r'"%LOCALAPPDATA%\Programs\Ollama\ollama app.exe"')
    m.win.reg_set(HKCU_RUN, value)
    before = m.win.snapshot()
    disable(m.win, m.find(), m.home)
    assert [v.name for v in m.win.reg_values(HKCU_RUN)] == ["OneDrive"]
    restore(m.win, m.home)
    assert m.win.snapshot() == before
    assert value in m.win.reg_values(HKCU_RUN)


def test_a_task_is_disabled_and_enabled_again(m: Machine) -> None:
    task = m.tasks / "Ollama Serve"
    task.write_bytes(task_xml(r"C:\ollama\ollama.exe", "serve"))
    disable(m.win, m.find(), m.home)
    assert not task_enabled(task)
    assert m.win.commands[-1] == 'schtasks.exe /Change /TN "\\Ollama Serve" /DISABLE'
    restore(m.win, m.home)
    assert task_enabled(task)
    assert m.win.commands[-1] == 'schtasks.exe /Change /TN "\\Ollama Serve" /ENABLE'


def test_a_running_service_is_stopped_disabled_and_restored_and_started(m: Machine) -> None:
    m.win.services["Ollama"] = Service("ollama.exe serve", "delayed-auto", state="RUNNING")
    disable(m.win, m.find(), m.home)
    assert m.win.services["Ollama"].start == "disabled"
    assert m.win.services["Ollama"].state == "STOPPED"
    assert m.win.services["Spooler"].state == "RUNNING"
    assert restore(m.win, m.home) == ["service Ollama (start type delayed-auto, running)"]
    assert m.win.services["Ollama"].start == "delayed-auto"
    assert m.win.services["Ollama"].state == "START_PENDING"


def test_processes_are_killed_with_their_children_and_the_tray_app_relaunched(
    m: Machine,
) -> None:
    m.tray.parent.mkdir(parents=True)
    m.tray.write_bytes(b"MZ")
    m.win.processes.update({100: "ollama app.exe", 101: "ollama.exe"})
    m.win.listeners[11434] = 101
    disable(m.win, m.find(), m.home)
    assert set(m.win.processes) == {4}
    assert 11434 not in m.win.listeners
    assert m.win.commands[-2:] == ["taskkill.exe /F /T /PID 100", "taskkill.exe /F /T /PID 101"]
    restore(m.win, m.home)
    assert m.win.launched == [str(m.tray)]  # once: the tray app starts the server itself


def test_restore_undoes_in_reverse_order(m: Machine) -> None:
    m.win.reg_set(HKCU_RUN, RegValue("Ollama", REG_SZ, "ollama.exe"))
    (m.tasks / "Ollama").write_bytes(task_xml("ollama.exe", "serve"))
    m.win.services["Ollama"] = Service("ollama.exe serve", "auto")
    entries = m.find()
    disable(m.win, entries, m.home)
    assert restore(m.win, m.home) == [describe(e) for e in reversed(entries)]


def test_restore_without_a_backup_does_nothing(m: Machine) -> None:
    before = m.win.snapshot()
    assert restore(m.win, m.home) == []
    assert m.win.commands == []
    assert m.win.snapshot() == before


def test_a_failed_step_undoes_the_steps_before_it_and_raises(m: Machine) -> None:
    m.win.reg_set(HKCU_RUN, RegValue("Ollama", REG_SZ, "ollama.exe"))
    (m.tasks / "Ollama").write_bytes(task_xml("ollama.exe", "serve"))
    before = m.win.snapshot()
    entries = [e for e in m.find() if e["kind"] == "run_value"]
    entries += [{"kind": "scheduled_task", "task": "\\Removed meanwhile"}]
    with pytest.raises(OSError, match=r"Removed meanwhile.*failed \(1\)"):
        disable(m.win, entries, m.home)
    assert m.win.snapshot() == before
    assert not (m.home / BACKUP_NAME).exists()


def test_a_sc_config_that_fails_is_an_error_too(m: Machine) -> None:
    m.win.services["Ollama"] = Service("ollama.exe serve", "auto")
    m.win.fail_commands["config"] = 5
    with pytest.raises(OSError, match=r"sc.exe config Ollama start= disabled failed \(5\)"):
        disable(m.win, m.find(), m.home)
    assert m.win.services["Ollama"].start == "auto"


class Interrupted(BaseException):
    """The installer killed mid-way: nothing after this line of disable() runs."""


class InterruptedWindows(FakeWindows):
    def run(self, command_line: str) -> Completed:
        if command_line.startswith("taskkill.exe"):
            raise Interrupted
        return super().run(command_line)


def test_an_interrupted_disable_leaves_a_backup_that_restores_what_was_done(m: Machine) -> None:
    win = InterruptedWindows(tasks_dir=m.tasks)
    win.reg_set(HKCU_RUN, RegValue("Ollama", REG_SZ, "ollama.exe"))
    (m.tasks / "Ollama").write_bytes(task_xml("ollama.exe", "serve"))
    win.processes[101] = "ollama.exe"
    before = win.snapshot()
    with pytest.raises(Interrupted):
        disable(win, find(win, own_service=OWN), m.home)
    entries = backup(m)["entries"]
    assert isinstance(entries, list)
    assert [e["kind"] for e in entries] == ["scheduled_task", "run_value"]
    assert not task_enabled(m.tasks / "Ollama")
    restore(win, m.home)
    assert win.snapshot() == before


def test_the_folders_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("APPDATA", "PROGRAMDATA", "LOCALAPPDATA", "SYSTEMROOT"):
        monkeypatch.delenv(name, raising=False)
    assert ollama_conflicts.startup_folders() == []
    assert ollama_conflicts.tray_app_path() is None
    assert ollama_conflicts.tasks_folder() == Path(r"C:\Windows") / "System32" / "Tasks"
    monkeypatch.setenv("PROGRAMDATA", str(tmp_path / "PD"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "L"))
    assert ollama_conflicts.startup_folders() == [
        tmp_path / "PD/Microsoft/Windows/Start Menu/Programs/StartUp"
    ]
    assert ollama_conflicts.tray_app_path() is None  # not installed

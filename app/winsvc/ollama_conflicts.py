"""An Ollama already installed on the machine: found, stopped, disabled, and put back.

Ollama's Windows installer starts its tray app (``ollama app.exe``) at logon through a
Startup-folder shortcut, and the tray app runs ``ollama.exe serve`` on port 11434 — the
port the service needs. Other set-ups use a ``Run`` registry value, a scheduled task or a
service. ``find`` lists every such entry, ``disable`` stops and disables them after saving
what each was in a backup file, and ``restore`` (at uninstall) puts back exactly that.
Everything goes through the ``Windows`` seam or plain files, so it is tested on Linux.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.winsvc import sc
from app.winsvc.system import (
    RegValue,
    Windows,
    parse_netstat_listeners,
    parse_tasklist,
    service_state,
    wait_for_state,
)

log = logging.getLogger(__name__)

BACKUP_NAME = "ollama-autostart-backup.json"
RUN_KEYS = (
    r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run",
    r"HKLM\Software\Microsoft\Windows\CurrentVersion\Run",
    r"HKLM\Software\WOW6432Node\Microsoft\Windows\CurrentVersion\Run",
)
SERVICES_KEY = r"HKLM\SYSTEM\CurrentControlSet\Services"
OLLAMA_IMAGES = ("ollama app.exe", "ollama.exe")
# A command that runs Ollama's own executables (and not, say, ollama-metrics.exe).
_OLLAMA_COMMAND = re.compile(r'(?:^|[\\/"\s])ollama(?: app)?\.exe(?:$|[\s"])', re.IGNORECASE)
_TASK_NS = "{http://schemas.microsoft.com/windows/2004/02/mit/task}"
_START_TYPES = {2: "auto", 3: "demand", 4: "disabled", 0: "boot", 1: "system"}

Entry = dict[str, Any]


def runs_ollama(command: str) -> bool:
    return bool(_OLLAMA_COMMAND.search(command))


def startup_folders() -> list[Path]:
    folders = []
    if os.environ.get("APPDATA"):
        folders.append(
            Path(os.environ["APPDATA"]) / "Microsoft/Windows/Start Menu/Programs/Startup"
        )
    if os.environ.get("PROGRAMDATA"):
        folders.append(
            Path(os.environ["PROGRAMDATA"]) / "Microsoft/Windows/Start Menu/Programs/StartUp"
        )
    return folders


def tasks_folder() -> Path:
    return Path(os.environ.get("SYSTEMROOT") or r"C:\Windows") / "System32" / "Tasks"


def tray_app_path() -> Path | None:
    """Where Ollama's installer puts the tray app, if it is there."""
    local = os.environ.get("LOCALAPPDATA")
    if not local:
        return None
    path = Path(local) / "Programs" / "Ollama" / "ollama app.exe"
    return path if path.is_file() else None


def _startup_shortcuts() -> list[Entry]:
    found = []
    for folder in startup_folders():
        if not folder.is_dir():
            continue
        for item in sorted(folder.iterdir()):
            name = item.name.lower()
            if item.is_file() and name.startswith("ollama") and "metrics" not in name:
                found.append({"kind": "startup_shortcut", "path": str(item)})
    return found


def _run_values(win: Windows) -> list[Entry]:
    found = []
    for key in RUN_KEYS:
        for value in win.reg_values(key):
            if isinstance(value.data, str) and runs_ollama(value.data):
                found.append(
                    {
                        "kind": "run_value",
                        "key": key,
                        "name": value.name,
                        "type": value.type,
                        "data": value.data,
                    }
                )
    return found


def _task_runs_ollama(path: Path) -> bool | None:
    """True/False for an enabled task that does/doesn't run Ollama; None if disabled or
    unreadable."""
    try:
        root = ET.fromstring(path.read_bytes())
    except (OSError, ET.ParseError):
        return None
    enabled = root.find(f"{_TASK_NS}Settings/{_TASK_NS}Enabled")
    if enabled is not None and (enabled.text or "").strip().lower() == "false":
        return None
    commands = [
        f"{e.findtext(f'{_TASK_NS}Command') or ''} {e.findtext(f'{_TASK_NS}Arguments') or ''}"
        for e in root.iter(f"{_TASK_NS}Exec")
    ]
    return any(runs_ollama(command.strip()) for command in commands)


def _scheduled_tasks() -> list[Entry]:
    folder = tasks_folder()
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if _task_runs_ollama(path):
            name = "\\" + "\\".join(path.relative_to(folder).parts)
            found.append({"kind": "scheduled_task", "task": name})
    return found


def _services(win: Windows, own_service: str) -> list[Entry]:
    found = []
    for name in win.reg_subkeys(SERVICES_KEY):
        if name.lower() == own_service.lower():
            continue
        values = {v.name.lower(): v for v in win.reg_values(rf"{SERVICES_KEY}\{name}")}
        image = values.get("imagepath")
        if image is None or not isinstance(image.data, str) or not runs_ollama(image.data):
            continue
        start = values.get("start")
        start_type = _START_TYPES.get(int(start.data) if start is not None else 3, "demand")
        delayed = values.get("delayedautostart")
        if start_type == "auto" and delayed is not None and delayed.data == 1:
            start_type = "delayed-auto"
        state = service_state(win, name)
        if start_type == "disabled" and state != "RUNNING":
            continue
        found.append(
            {
                "kind": "service",
                "name": name,
                "start_type": start_type,
                "was_running": state == "RUNNING",
            }
        )
    return found


def _processes(win: Windows) -> list[Entry]:
    running = [
        p
        for p in parse_tasklist(win.run("tasklist /FO CSV /NH").output)
        if p.image.lower() in OLLAMA_IMAGES
    ]
    tray = tray_app_path()
    return [
        {
            "kind": "process",
            "pid": p.pid,
            "image": p.image,
            # Started again at uninstall: the tray app, which starts the server itself.
            "relaunch": str(tray) if p.image.lower() == "ollama app.exe" and tray else None,
        }
        for p in running
    ]


def port_holders(win: Windows, port: int) -> list[tuple[int, str]]:
    """(pid, image) of whatever listens on ``port``."""
    pids = parse_netstat_listeners(win.run("netstat -ano -p TCP").output, port)
    if not pids:
        return []
    images = {p.pid: p.image for p in parse_tasklist(win.run("tasklist /FO CSV /NH").output)}
    return [(pid, images.get(pid, "unknown program")) for pid in sorted(pids)]


def find(win: Windows, *, own_service: str) -> list[Entry]:
    """Every way Ollama starts or runs on this machine right now (none is changed)."""
    return [
        *_services(win, own_service),
        *_scheduled_tasks(),
        *_run_values(win),
        *_startup_shortcuts(),
        *_processes(win),
    ]


def describe(entry: Entry) -> str:
    kind = entry["kind"]
    if kind == "startup_shortcut":
        return f"Startup-folder shortcut {entry['path']}"
    if kind == "run_value":
        return f"registry Run value {entry['key']}\\{entry['name']} = {entry['data']}"
    if kind == "scheduled_task":
        return f"scheduled task {entry['task']}"
    if kind == "service":
        running = ", running" if entry["was_running"] else ""
        return f"service {entry['name']} (start type {entry['start_type']}{running})"
    return f"running process {entry['image']} (pid {entry['pid']})"


def _undo(win: Windows, entry: Entry) -> None:
    kind = entry["kind"]
    if kind == "startup_shortcut":
        Path(entry["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(entry["saved_as"], entry["path"])
    elif kind == "run_value":
        win.reg_set(entry["key"], RegValue(entry["name"], entry["type"], entry["data"]))
    elif kind == "scheduled_task":
        win.run(f"schtasks.exe /Change /TN {sc.quote_arg(entry['task'])} /ENABLE")
    elif kind == "service":
        win.run(sc.configure_start(entry["name"], entry["start_type"]).line)
        if entry["was_running"]:
            win.run(sc.start(entry["name"]).line)
    elif kind == "process" and entry.get("relaunch"):
        win.launch(entry["relaunch"])


def _apply(win: Windows, entry: Entry, saved: Path) -> None:
    kind = entry["kind"]
    if kind == "startup_shortcut":
        saved.mkdir(parents=True, exist_ok=True)
        target = saved / Path(entry["path"]).name
        shutil.move(entry["path"], target)
        entry["saved_as"] = str(target)
    elif kind == "run_value":
        win.reg_delete(entry["key"], entry["name"])
    elif kind == "scheduled_task":
        _check(win, f"schtasks.exe /Change /TN {sc.quote_arg(entry['task'])} /DISABLE")
    elif kind == "service":
        _check(win, sc.configure_start(entry["name"], "disabled").line)
        if entry["was_running"]:
            win.run(sc.stop(entry["name"]).line)
            if wait_for_state(win, entry["name"], "STOPPED", within=30) not in ("STOPPED", None):
                raise OSError(f"the service {entry['name']} did not stop within 30s")
    elif kind == "process":
        # /T: the server's model runners go with it.
        win.run(f"taskkill.exe /F /T /PID {int(entry['pid'])}")


def _check(win: Windows, line: str) -> None:
    result = win.run(line)
    if result.returncode != 0:
        raise OSError(f"{line} failed ({result.returncode}): {result.output.strip()}")


def disable(win: Windows, entries: list[Entry], home: Path) -> Path:
    """Stop and disable ``entries``; write what they were to the backup file first and
    after each step, so an interrupted install can still be undone. On a failure the
    steps already taken are undone and the error raised."""
    backup = home / BACKUP_NAME
    saved = home / "ollama-autostart"
    record: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "entries": [],
    }
    home.mkdir(parents=True, exist_ok=True)
    done: list[Entry] = []
    try:
        for entry in entries:
            _apply(win, entry, saved)
            done.append(entry)
            record["entries"] = done
            _write(backup, record)
            log.info("disabled %s", describe(entry))
    except Exception:
        for entry in reversed(done):
            _undo(win, entry)
        backup.unlink(missing_ok=True)
        raise
    _write(backup, record)
    return backup


def restore(win: Windows, home: Path) -> list[str]:
    """Put back everything ``disable`` changed (in reverse order); returns what was done."""
    backup = home / BACKUP_NAME
    if not backup.is_file():
        return []
    record = json.loads(backup.read_text(encoding="utf-8"))
    restored = []
    for entry in reversed(record.get("entries", [])):
        _undo(win, entry)
        restored.append(describe(entry))
    backup.unlink()
    saved = home / "ollama-autostart"
    if saved.is_dir() and not any(saved.iterdir()):
        saved.rmdir()
    return restored


def _write(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    os.replace(tmp, path)

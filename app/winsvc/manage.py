"""``ollama-metrics service install|uninstall|start|stop|status``.

Each action is the list of ``sc.exe`` command lines from ``app.winsvc.sc`` plus the checks
a person would otherwise have to know to make: elevated, the service present or absent,
port 11434 free or held by an Ollama that is then stopped and kept from starting again
(``ollama_conflicts``). ``--dry-run`` prints the command lines, exactly as cmd.exe takes
them, and changes nothing; it works on any OS. The machine is reached only through the
``Windows`` seam.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from app.config import CONFIG_NAME, program_data_home
from app.service.binary import find_ollama
from app.winsvc import ollama_conflicts, sc
from app.winsvc.runner import LOG_NAME
from app.winsvc.system import Windows, service_state, wait_for_state

DEFAULT_EXE = r"C:\Program Files\Ollama Metrics\ollama-metrics.exe"
PROXY_PORT = 11434
UPSTREAM = "http://127.0.0.1:11435"
# Exit statuses of `status`, as LSB init scripts have them: 3 stopped, 4 not installed.
STATUS_STOPPED = 3
STATUS_MISSING = 4


class ServiceError(Exception):
    """A clear reason why the action cannot be done; exit status 1."""


@dataclass
class Options:
    name: str = sc.DEFAULT_NAME
    executable: str | None = None
    dry_run: bool = False
    home: Path = field(default_factory=program_data_home)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    wait_seconds: float = 120.0
    sleep: Callable[[float], None] = time.sleep


def default_executable() -> str | None:
    """The running exe, when this is the built (frozen) Windows program."""
    if getattr(sys, "frozen", False) and sys.platform == "win32":
        return sys.executable
    return None


def _executable(options: Options) -> str:
    if options.executable:
        return options.executable
    found = default_executable()
    if found:
        return found
    if options.dry_run:
        print(f"rem no --exe given: assuming {DEFAULT_EXE}", file=options.err)
        return DEFAULT_EXE
    raise ServiceError(
        "the service runs the built ollama-metrics.exe: run this command from it, "
        "or give its path with --exe"
    )


def _print_commands(options: Options, commands: list[sc.Command]) -> None:
    for command in commands:
        print(f"rem {command.purpose}", file=options.err)
        print(sc.for_cmd(command.line), file=options.out)


def _need(win: Windows | None, *, admin: bool = True) -> Windows:
    if win is None:
        raise ServiceError(
            "Windows services exist only on Windows; --dry-run shows the commands on any OS"
        )
    if admin and not win.is_admin():
        raise ServiceError(
            "this needs an elevated prompt: right-click Command Prompt or PowerShell, "
            "'Run as administrator', and run it again"
        )
    return win


def _check(win: Windows, command: sc.Command) -> None:
    result = win.run(command.line)
    if result.returncode != 0:
        raise ServiceError(
            f"{command.line} failed (exit status {result.returncode}): {result.output.strip()}"
        )


def _wait_for(win: Windows, options: Options, wanted: str, *, failed: str | None) -> str | None:
    return wait_for_state(
        win, options.name, wanted, failed=failed, within=options.wait_seconds, sleep=options.sleep
    )


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes).
    return json.dumps(value, ensure_ascii=False)


def default_config(ollama_bin: str | None, models: str | None) -> str:
    """The configuration file install writes when there is none: the service runs as
    LocalSystem, whose profile is not the user's, so where the user's Ollama and models
    are is written down here."""
    lines = [
        "# Ollama Metrics Proxy, Windows service configuration.",
        "# Keys are the settings of docs/configuration.md in lower case; the service reads",
        "# this file at start: ollama-metrics service stop, then start, to apply a change.",
        'service_command = "serve"  # or "proxy" in front of an Ollama that runs elsewhere',
        'proxy_host = "127.0.0.1"  # "0.0.0.0" to let other machines in',
        f"proxy_port = {PROXY_PORT}",
        f"ollama_upstream = {_toml_string(UPSTREAM)}",
    ]
    if ollama_bin:
        lines.append(f"ollama_bin = {_toml_string(ollama_bin)}")
    else:
        lines.append("# ollama_bin = 'C:\\path\\to\\ollama.exe'  (Ollama was not found)")
    if models:
        lines += ["", "[ollama_env]", f"OLLAMA_MODELS = {_toml_string(models)}"]
    return "\n".join(lines) + "\n"


def _user_models() -> str | None:
    if os.environ.get("OLLAMA_MODELS"):
        return os.environ["OLLAMA_MODELS"]
    profile = os.environ.get("USERPROFILE")
    if profile and (Path(profile) / ".ollama" / "models").is_dir():
        return str(Path(profile) / ".ollama" / "models")
    return None


def install(win: Windows | None, options: Options) -> int:
    if not options.dry_run:
        win = _need(win)
    commands = sc.install_commands(options.name, _executable(options))
    if options.dry_run:
        if win is not None:
            for entry in ollama_conflicts.find(win, own_service=options.name):
                print(
                    f"rem would stop and disable: {ollama_conflicts.describe(entry)}",
                    file=options.err,
                )
        _print_commands(options, commands)
        return 0
    win = _need(win)
    if service_state(win, options.name) is not None:
        raise ServiceError(
            f"the service {options.name} already exists: "
            f"ollama-metrics service uninstall --name {options.name} first"
        )
    conflicts = ollama_conflicts.find(win, own_service=options.name)
    foreign = [
        (pid, image)
        for pid, image in ollama_conflicts.port_holders(win, PROXY_PORT)
        if image.lower() not in ollama_conflicts.OLLAMA_IMAGES
    ]
    if foreign:
        who = ", ".join(f"{image} (pid {pid})" for pid, image in foreign)
        raise ServiceError(
            f"port {PROXY_PORT} is in use by {who}: stop it first, or install anyway after "
            f"setting proxy_port in {options.home / CONFIG_NAME}"
        )
    config = options.home / CONFIG_NAME
    ollama_bin = find_ollama(None)
    if not config.exists():
        options.home.mkdir(parents=True, exist_ok=True)
        config.write_text(default_config(ollama_bin, _user_models()), encoding="utf-8")
        print(f"wrote {config}", file=options.out)
    backup = ollama_conflicts.disable(win, conflicts, options.home)
    for entry in conflicts:
        print(f"stopped and disabled {ollama_conflicts.describe(entry)}", file=options.out)
    try:
        for command in commands:
            _check(win, command)
    except ServiceError:
        if service_state(win, options.name) is not None:
            win.run(sc.delete(options.name).line)
        for undone in ollama_conflicts.restore(win, options.home):
            print(f"restored {undone}", file=options.out)
        raise
    if conflicts:
        print(f"saved what they were in {backup}; uninstall restores them", file=options.out)
    if ollama_bin is None:
        print(
            f"warning: Ollama was not found: set ollama_bin in {config} before starting",
            file=options.err,
        )
    print(
        f"installed the service {options.name} (starts with Windows); "
        f"start it now with: ollama-metrics service start",
        file=options.out,
    )
    return 0


def uninstall(win: Windows | None, options: Options) -> int:
    if options.dry_run:
        _print_commands(options, [sc.stop(options.name), sc.delete(options.name)])
        return 0
    win = _need(win)
    current = service_state(win, options.name)
    if current is None:
        restored = ollama_conflicts.restore(win, options.home)
        for undone in restored:
            print(f"restored {undone}", file=options.out)
        raise ServiceError(f"there is no service named {options.name}")
    if current != "STOPPED":
        stop(win, options)
    _check(win, sc.delete(options.name))
    for undone in ollama_conflicts.restore(win, options.home):
        print(f"restored {undone}", file=options.out)
    print(
        f"removed the service {options.name}; its configuration, logs and analytics stay "
        f"in {options.home}",
        file=options.out,
    )
    return 0


def _drive(win: Windows | None, options: Options, command: sc.Command, wanted: str) -> str:
    """Send start or stop unless the service is there already, then wait for ``wanted``;
    the state it ended in."""
    if options.dry_run:
        _print_commands(options, [command])
        return wanted
    win = _need(win)
    current = service_state(win, options.name)
    if current is None:
        raise ServiceError(f"there is no service named {options.name}: install it first")
    if current != wanted:
        _check(win, command)
        # A service that fails to start ends up STOPPED: no use waiting longer then.
        failed = "STOPPED" if wanted == "RUNNING" else None
        current = _wait_for(win, options, wanted, failed=failed) or "gone"
    return current


def start(win: Windows | None, options: Options) -> int:
    current = _drive(win, options, sc.start(options.name), "RUNNING")
    if current != "RUNNING":
        raise ServiceError(
            f"the service {options.name} did not start ({current}); "
            f"see {options.home / 'logs' / LOG_NAME}"
        )
    if not options.dry_run:
        print(f"{options.name} is running", file=options.out)
    return 0


def stop(win: Windows | None, options: Options) -> int:
    current = _drive(win, options, sc.stop(options.name), "STOPPED")
    if current != "STOPPED":
        raise ServiceError(f"the service {options.name} did not stop ({current})")
    if not options.dry_run:
        print(f"{options.name} is stopped", file=options.out)
    return 0


def status(win: Windows | None, options: Options) -> int:
    if options.dry_run:
        _print_commands(options, [sc.query(options.name)])
        return 0
    win = _need(win, admin=False)
    current = service_state(win, options.name)
    if current is None:
        print(f"{options.name}: not installed", file=options.out)
        return STATUS_MISSING
    print(f"{options.name}: {current}", file=options.out)
    print(f"configuration: {options.home / CONFIG_NAME}", file=options.out)
    print(f"log: {options.home / 'logs' / LOG_NAME}", file=options.out)
    return 0 if current == "RUNNING" else STATUS_STOPPED


ACTIONS: dict[str, Callable[[Windows | None, Options], int]] = {
    "install": install,
    "uninstall": uninstall,
    "start": start,
    "stop": stop,
    "status": status,
}


def real_windows() -> Windows | None:
    if sys.platform == "win32":  # pragma: no cover - Windows only
        from app.winsvc.win32 import RealWindows

        return RealWindows()
    return None


def run(action: str, options: Options, win: Windows | None = None) -> int:
    try:
        return ACTIONS[action](win if win is not None else real_windows(), options)
    except (ServiceError, sc.CommandError, OSError) as exc:
        print(f"ollama-metrics service {action}: {exc}", file=options.err)
        return 1


__all__ = ["ACTIONS", "Options", "ServiceError", "run"]

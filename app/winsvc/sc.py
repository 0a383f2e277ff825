"""The ``sc.exe`` command lines that install and control the service, as exact strings.

A Windows program receives one command-line string and splits it itself; ``sc.exe`` splits
it with the C runtime's rules. The service's own command line (``binPath=``) is stored as
the service's ``ImagePath`` and later parsed by the service manager, which takes the
executable from the first quoted token. So a path with spaces needs two levels::

    sc.exe create OllamaMetricsProxy
        binPath= "\\"C:\\Program Files\\Ollama Metrics\\ollama-metrics.exe\\" -service" ...

Everything here is pure: each function returns the exact string that is passed, unchanged,
to ``CreateProcess`` (never through ``subprocess.list2cmdline``). ``for_cmd`` renders such a
string for a ``cmd.exe`` prompt or ``.cmd`` file, which ``--dry-run`` prints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PureWindowsPath

DEFAULT_NAME = "OllamaMetricsProxy"
DISPLAY_NAME = "Ollama Metrics Proxy"
DESCRIPTION = (
    "Runs Ollama behind a transparent proxy on port 11434 that records Prometheus metrics "
    "and request analytics."
)
SERVICE_FLAG = "-service"
# Restart after 5 s, then 10 s, then every 60 s; the failure count resets after a day.
FAILURE_RESET_SECONDS = 86_400
FAILURE_ACTIONS = "restart/5000/restart/10000/restart/60000"

# What a service name may be: the service manager allows more, but these are the names a
# person types, and they need no quoting anywhere.
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
# cmd.exe's metacharacters outside double quotes.
_CMD_SPECIAL = frozenset("^&|<>()")


class CommandError(ValueError):
    """A name or path that cannot be put on a command line safely."""


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise CommandError(
            f"service name {name!r}: use 1-80 letters, digits, '.', '_' or '-' (no spaces)"
        )
    return name


def quote_arg(arg: str) -> str:
    """One argument quoted for the C runtime's parser (``CommandLineToArgvW`` rules).

    Arguments without spaces, tabs or quotes are left alone. Otherwise the argument is
    wrapped in quotes, each quote inside becomes ``\\"``, and backslashes are doubled
    exactly where they precede a quote (the closing one included), so ``C:\\dir\\``
    becomes ``"C:\\dir\\\\"`` and reads back as ``C:\\dir\\``.
    """
    if arg and not any(c in arg for c in ' \t\n\v"'):
        return arg
    out = ['"']
    backslashes = 0
    for char in arg:
        if char == "\\":
            backslashes += 1
            continue
        if char == '"':
            out.append("\\" * (2 * backslashes + 1) + '"')
        else:
            out.append("\\" * backslashes + char)
        backslashes = 0
    out.append("\\" * (2 * backslashes) + '"')
    return "".join(out)


def check_executable(path: str) -> str:
    """An absolute Windows path to an ``.exe``, as the service manager needs it."""
    windows = PureWindowsPath(path)
    if '"' in path or "\n" in path or "%" in path:
        raise CommandError(
            f"{path!r}: a service executable path cannot contain '\"', '%' or a line break"
        )
    if not windows.is_absolute():
        raise CommandError(f"{path}: the service needs an absolute path (C:\\...\\...exe)")
    if windows.suffix.lower() != ".exe":
        raise CommandError(f"{path}: the service executable must be an .exe")
    return str(windows)


def image_path(executable: str, args: tuple[str, ...] = (SERVICE_FLAG,)) -> str:
    """The service's command line, stored as its ImagePath.

    The executable is always quoted: an unquoted path with spaces makes the service
    manager try ``C:\\Program.exe`` first. The service manager takes the program name up
    to the closing quote (no escapes), so the path itself is not escaped.
    """
    return " ".join([f'"{check_executable(executable)}"', *(quote_arg(a) for a in args)])


@dataclass(frozen=True)
class Command:
    """One ``sc.exe`` call: the exact command line and what it is for."""

    line: str
    purpose: str


def _sc(*parts: str) -> str:
    return " ".join(["sc.exe", *parts])


def create(name: str, executable: str, *, args: tuple[str, ...] = (SERVICE_FLAG,)) -> Command:
    """``sc.exe create``. sc's own syntax wants ``option= value`` (the space after ``=``)."""
    line = _sc(
        "create",
        check_name(name),
        "binPath=",
        quote_arg(image_path(executable, args)),
        "start=",
        "auto",
        "DisplayName=",
        quote_arg(DISPLAY_NAME),
    )
    return Command(line, "register the service (starts with Windows)")


def describe(name: str) -> Command:
    return Command(
        _sc("description", check_name(name), quote_arg(DESCRIPTION)), "set its description"
    )


def on_failure(name: str) -> Command:
    return Command(
        _sc(
            "failure",
            check_name(name),
            "reset=",
            str(FAILURE_RESET_SECONDS),
            "actions=",
            FAILURE_ACTIONS,
        ),
        "restart it if it fails",
    )


def start(name: str) -> Command:
    return Command(_sc("start", quote_arg(name)), "start the service")


def stop(name: str) -> Command:
    return Command(_sc("stop", quote_arg(name)), "stop the service")


def query(name: str) -> Command:
    return Command(_sc("query", quote_arg(name)), "show its state")


def delete(name: str) -> Command:
    return Command(_sc("delete", quote_arg(name)), "remove the service")


def configure_start(name: str, start_type: str) -> Command:
    """``sc.exe config NAME start= TYPE`` (auto, delayed-auto, demand, disabled)."""
    if start_type not in ("auto", "delayed-auto", "demand", "disabled", "boot", "system"):
        raise CommandError(f"unknown start type {start_type!r}")
    return Command(
        _sc("config", quote_arg(name), "start=", start_type), f"set its start type to {start_type}"
    )


def install_commands(
    name: str, executable: str, *, args: tuple[str, ...] = (SERVICE_FLAG,)
) -> list[Command]:
    return [create(name, executable, args=args), describe(name), on_failure(name)]


def for_cmd(line: str) -> str:
    """The line as typed at a ``cmd.exe`` prompt or written to a ``.cmd`` file.

    cmd.exe toggles "quoted" at every ``"`` (it knows no ``\\"``) and treats ``^ & | < > ( )``
    outside quotes as its own, so those get a ``^``. ``%`` cannot be escaped the same way in
    both places and is refused by :func:`check_executable` before it gets here.
    """
    out = []
    quoted = False
    for char in line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in _CMD_SPECIAL:
            out.append("^")
        out.append(char)
    return "".join(out)


# `sc query` prints "        STATE              : 4  RUNNING" (the number is the same in
# every language; the word is not translated either, but the number is what we read).
_STATE_LINE = re.compile(r"^\s*STATE\s*:\s*(\d+)", re.MULTILINE)
STATES = {
    1: "STOPPED",
    2: "START_PENDING",
    3: "STOP_PENDING",
    4: "RUNNING",
    5: "CONTINUE_PENDING",
    6: "PAUSE_PENDING",
    7: "PAUSED",
}


def parse_state(output: str) -> str | None:
    """The state ``sc query`` reports, or None when it names no state (no such service)."""
    match = _STATE_LINE.search(output)
    if match is None:
        return None
    return STATES.get(int(match.group(1)), f"STATE_{match.group(1)}")

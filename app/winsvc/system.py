"""The seam between the service logic and Windows: everything it asks of the machine.

``Windows`` is the whole surface: run a command line (verbatim), ask whether we are
elevated, read and write registry values, start a program detached. The real
implementation is ``app.winsvc.win32.RealWindows``; tests use a faithful fake. What the
commands print is parsed here, by pure functions that tests feed real outputs to.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from app.winsvc import sc

# Registry value types (winreg's constants, the same numbers on every Windows).
REG_SZ = 1
REG_EXPAND_SZ = 2
REG_DWORD = 4


@dataclass(frozen=True)
class Completed:
    returncode: int
    output: str


@dataclass(frozen=True)
class RegValue:
    name: str
    type: int
    data: str | int


class Windows(Protocol):
    def run(self, command_line: str) -> Completed:
        """Run a program with exactly this command line; wait; return its code and output."""

    def is_admin(self) -> bool: ...

    def reg_values(self, key: str) -> list[RegValue]:
        """The values of ``key`` (``HKCU\\...`` or ``HKLM\\...``); [] if the key is absent."""

    def reg_subkeys(self, key: str) -> list[str]: ...

    def reg_set(self, key: str, value: RegValue) -> None: ...

    def reg_delete(self, key: str, name: str) -> None: ...

    def launch(self, executable: str) -> None:
        """Start a program detached from us (not waited for)."""


@dataclass(frozen=True)
class Process:
    pid: int
    image: str  # e.g. "ollama app.exe"


def parse_tasklist(output: str) -> list[Process]:
    """``tasklist /FO CSV /NH``: "Image Name","PID","Session Name","Session#","Mem Usage"."""
    found = []
    for row in csv.reader(io.StringIO(output)):
        if len(row) >= 2 and row[1].strip().isdigit():
            found.append(Process(int(row[1]), row[0]))
    return found


_LISTEN = re.compile(r"^\s*TCP\s+(\S+):(\d+)\s+\S+\s+\S+\s+(\d+)\s*$")


def parse_netstat_listeners(output: str, port: int) -> set[int]:
    """PIDs listening on TCP ``port`` in ``netstat -ano -p TCP`` output.

    Lines look like ``  TCP    127.0.0.1:11434    0.0.0.0:0    LISTENING    4242``; the state
    word is translated on non-English Windows, but a listener is the only row whose remote
    port is 0, so that is what is matched.
    """
    pids = set()
    for line in output.splitlines():
        match = _LISTEN.match(line)
        if match is None or int(match.group(2)) != port:
            continue
        remote = line.split()[2]
        if remote.endswith(":0"):
            pids.add(int(match.group(3)))
    return pids


def service_state(win: Windows, name: str) -> str | None:
    """RUNNING, STOPPED, …; None if there is no such service."""
    return sc.parse_state(win.run(sc.query(name).line).output)


def wait_for_state(
    win: Windows,
    name: str,
    wanted: str,
    *,
    within: float,
    failed: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """Poll until the service is ``wanted`` (or ``failed``, or gone, or time is up); the
    last state seen. ``sc`` returns at once, while the service is still pending."""
    deadline = time.monotonic() + within
    current = service_state(win, name)
    while current not in (wanted, failed, None) and time.monotonic() < deadline:
        sleep(0.25)
        current = service_state(win, name)
    return current

"""A fake Windows behind the ``app.winsvc.system.Windows`` seam, faithful where it matters.

Command lines are split as Windows programs split them (the C runtime's rules, as
``CommandLineToArgvW``), so a quoting mistake in what we build shows up as a wrong
argument here. ``sc.exe`` behaves as documented: ``option= value`` pairs, ``binPath=``
stored as the service's ImagePath, exit status 1060 for a missing service, 1073 for an
existing one, 5 without elevation, ``query`` printing ``STATE : 4  RUNNING``. The service
registry (``HKLM\\SYSTEM\\CurrentControlSet\\Services``) is derived from the services,
as on Windows. ``tasklist``, ``netstat``, ``taskkill`` and ``schtasks /Change`` act on
in-memory processes, listeners and task files.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.winsvc.system import REG_DWORD, REG_EXPAND_SZ, REG_SZ, Completed, RegValue

SERVICES_KEY = r"HKLM\SYSTEM\CurrentControlSet\Services"
_START = {"boot": 0, "system": 1, "auto": 2, "delayed-auto": 2, "demand": 3, "disabled": 4}
_STATE_CODES = {"STOPPED": 1, "START_PENDING": 2, "STOP_PENDING": 3, "RUNNING": 4}
TASK_NS = "http://schemas.microsoft.com/windows/2004/02/mit/task"


def split_args(line: str) -> list[str]:
    """The C runtime's command-line splitting (``CommandLineToArgvW``, post-2008 rules)."""
    args: list[str] = []
    current: list[str] = []
    in_quotes = False
    have_arg = False
    i = 0
    while i < len(line):
        char = line[i]
        if char == "\\":
            start = i
            while i < len(line) and line[i] == "\\":
                i += 1
            count = i - start
            if i < len(line) and line[i] == '"':
                current.append("\\" * (count // 2))
                if count % 2:
                    current.append('"')
                    i += 1
                have_arg = True
                continue
            current.append("\\" * count)
            have_arg = True
            continue
        if char == '"':
            if in_quotes and i + 1 < len(line) and line[i + 1] == '"':
                current.append('"')  # "" inside quotes: a literal quote
                i += 2
                continue
            in_quotes = not in_quotes
            have_arg = True
            i += 1
            continue
        if char in " \t" and not in_quotes:
            if have_arg:
                args.append("".join(current))
                current, have_arg = [], False
            i += 1
            continue
        current.append(char)
        have_arg = True
        i += 1
    if have_arg:
        args.append("".join(current))
    return args


def split_image_path(image: str) -> tuple[str, list[str]]:
    """How the service manager reads an ImagePath: the program is the first quoted token
    (no escapes) or, unquoted, everything up to the first space; the rest are arguments."""
    if image.startswith('"'):
        end = image.index('"', 1)
        return image[1:end], split_args(image[end + 1 :])
    program, _, rest = image.partition(" ")
    return program, split_args(rest)


def cmd_unescape(line: str) -> str:
    """What cmd.exe hands to the program for a line typed at its prompt: carets outside
    double quotes are removed (and escape the next character)."""
    out = []
    quoted = False
    i = 0
    while i < len(line):
        char = line[i]
        if char == '"':
            quoted = not quoted
        elif char == "^" and not quoted and i + 1 < len(line):
            out.append(line[i + 1])
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


@dataclass
class Service:
    image_path: str
    start: str = "demand"
    display_name: str = ""
    description: str = ""
    failure: tuple[str, str] | None = None
    state: str = "STOPPED"
    # What happens at `sc start`: "runs" (RUNNING after one START_PENDING query) or "fails".
    behaviour: str = "runs"


@dataclass
class FakeWindows:
    admin: bool = True
    services: dict[str, Service] = field(default_factory=dict)
    registry: dict[str, dict[str, RegValue]] = field(default_factory=dict)
    processes: dict[int, str] = field(default_factory=dict)
    listeners: dict[int, int] = field(default_factory=dict)  # port -> pid
    tasks_dir: Path | None = None
    commands: list[str] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)
    fail_commands: dict[str, int] = field(default_factory=dict)  # argv[1] -> exit status

    # --- the seam ---------------------------------------------------------------
    def run(self, command_line: str) -> Completed:
        self.commands.append(command_line)
        argv = split_args(command_line)
        program = argv[0].lower()
        if program in ("sc.exe", "sc"):
            return self._sc(argv[1:])
        if program == "tasklist":
            rows = [
                f'"{image}","{pid}","Console","1","10,000 K"'
                for pid, image in sorted(self.processes.items())
            ]
            return Completed(0, "\r\n".join(rows) + "\r\n")
        if program == "netstat":
            lines = [
                "",
                "Active Connections",
                "",
                "  Proto  Local Address  Foreign Address  State  PID",
            ]
            for port, pid in sorted(self.listeners.items()):
                lines.append(f"  TCP    127.0.0.1:{port}    0.0.0.0:0    LISTENING    {pid}")
                lines.append(
                    f"  TCP    127.0.0.1:{port}    127.0.0.1:50000    ESTABLISHED    {pid}"
                )
            return Completed(0, "\r\n".join(lines))
        if program == "taskkill.exe":
            pid = int(argv[argv.index("/PID") + 1])
            if pid not in self.processes:
                return Completed(128, f'ERROR: The process "{pid}" not found.')
            del self.processes[pid]
            for port in [p for p, owner in self.listeners.items() if owner == pid]:
                del self.listeners[port]
            return Completed(0, f"SUCCESS: The process with PID {pid} has been terminated.")
        if program == "schtasks.exe":
            return self._schtasks(argv[1:])
        return Completed(9009, f"'{argv[0]}' is not recognized as a command")

    def is_admin(self) -> bool:
        return self.admin

    def reg_values(self, key: str) -> list[RegValue]:
        prefix = SERVICES_KEY.lower() + "\\"
        if key.lower().startswith(prefix):
            service = self._service(key[len(prefix) :])
            if service is None:
                return []
            values = [
                RegValue("ImagePath", REG_EXPAND_SZ, service.image_path),
                RegValue("Start", REG_DWORD, _START[service.start]),
                RegValue("DisplayName", REG_SZ, service.display_name),
            ]
            if service.start == "delayed-auto":
                values.append(RegValue("DelayedAutostart", REG_DWORD, 1))
            return values
        return list(self.registry.get(key.lower(), {}).values())

    def reg_subkeys(self, key: str) -> list[str]:
        if key.lower() == SERVICES_KEY.lower():
            return list(self.services)
        return []

    def reg_set(self, key: str, value: RegValue) -> None:
        self.registry.setdefault(key.lower(), {})[value.name.lower()] = value

    def reg_delete(self, key: str, name: str) -> None:
        values = self.registry.get(key.lower(), {})
        if name.lower() not in values:
            raise FileNotFoundError(f"{key}\\{name}")
        del values[name.lower()]

    def launch(self, executable: str) -> None:
        self.launched.append(executable)

    # --- helpers for tests -------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything a restore must put back (services, registry, processes aside)."""
        tasks = {}
        if self.tasks_dir is not None and self.tasks_dir.is_dir():
            tasks = {str(p): task_enabled(p) for p in self.tasks_dir.rglob("*") if p.is_file()}
        return {
            "services": copy.deepcopy(self.services),
            "registry": copy.deepcopy(self.registry),
            "tasks": tasks,
        }

    def _service(self, name: str) -> Service | None:
        for key, service in self.services.items():
            if key.lower() == name.lower():
                return service
        return None

    def _sc(self, args: list[str]) -> Completed:
        if not args:
            return Completed(1, "DESCRIPTION: SC is a command line program ...")
        verb = args[0].lower()
        if verb in self.fail_commands:
            return Completed(self.fail_commands[verb], f"[SC] {verb} FAILED")
        if verb != "query" and not self.admin:
            return Completed(5, "[SC] OpenSCManager FAILED 5:\r\n\r\nAccess is denied.")
        name = args[1] if len(args) > 1 else ""
        options = self._options(args[2:])
        if options is None:
            return Completed(1639, "[SC] invalid option: an option must be followed by a value")
        service = self._service(name)
        if verb == "create":
            if service is not None:
                return Completed(
                    1073,
                    "[SC] CreateService FAILED 1073:\r\n\r\nThe specified service already exists.",
                )
            if "binpath=" not in options:
                return Completed(1639, "[SC] CreateService: binPath= is required")
            self.services[name] = Service(
                image_path=options["binpath="],
                start=options.get("start=", "demand"),
                display_name=options.get("displayname=", name),
            )
            return Completed(0, "[SC] CreateService SUCCESS")
        if service is None:
            return Completed(
                1060,
                f"[SC] {verb} FAILED 1060:\r\n\r\nThe specified service does not exist "
                "as an installed service.",
            )
        if verb == "description":
            service.description = args[2]
        elif verb == "failure":
            service.failure = (options["reset="], options["actions="])
        elif verb == "config":
            if "start=" in options:
                service.start = options["start="]
        elif verb == "start":
            if service.state != "STOPPED":
                return Completed(
                    1056,
                    "[SC] StartService FAILED 1056: An instance of the service is already running.",
                )
            if service.start == "disabled":
                return Completed(
                    1058, "[SC] StartService FAILED 1058: The service cannot be started."
                )
            service.state = "START_PENDING"
            return Completed(0, self._query_text(name, service))
        elif verb == "stop":
            if service.state == "STOPPED":
                return Completed(
                    1062, "[SC] ControlService FAILED 1062: The service has not been started."
                )
            service.state = "STOP_PENDING"
            return Completed(0, self._query_text(name, service))
        elif verb == "query":
            text = self._query_text(name, service)
            self._advance(service)
            return Completed(0, text)
        elif verb == "delete":
            del self.services[next(k for k in self.services if k.lower() == name.lower())]
            return Completed(0, "[SC] DeleteService SUCCESS")
        else:
            return Completed(1, f"unknown sc verb {verb}")
        return Completed(0, f"[SC] {verb} SUCCESS")

    @staticmethod
    def _options(args: list[str]) -> dict[str, str] | None:
        found = {}
        i = 0
        while i < len(args):
            if args[i].endswith("="):
                if i + 1 >= len(args):
                    return None
                found[args[i].lower()] = args[i + 1]
                i += 2
            else:
                i += 1
        return found

    @staticmethod
    def _advance(service: Service) -> None:
        if service.state == "START_PENDING":
            service.state = "RUNNING" if service.behaviour == "runs" else "STOPPED"
        elif service.state == "STOP_PENDING":
            service.state = "STOPPED"

    @staticmethod
    def _query_text(name: str, service: Service) -> str:
        code = _STATE_CODES[service.state]
        return (
            f"\r\nSERVICE_NAME: {name}\r\n        TYPE               : 10  WIN32_OWN_PROCESS\r\n"
            f"        STATE              : {code}  {service.state}\r\n"
            "        WIN32_EXIT_CODE    : 0  (0x0)\r\n"
        )

    def _schtasks(self, args: list[str]) -> Completed:
        if not self.admin:
            return Completed(1, "ERROR: Access is denied.")
        name = args[args.index("/TN") + 1]
        assert self.tasks_dir is not None
        path = self.tasks_dir.joinpath(*name.strip("\\").split("\\"))
        if not path.is_file():
            return Completed(1, "ERROR: The system cannot find the file specified.")
        ET.register_namespace("", TASK_NS)
        root = ET.fromstring(path.read_bytes())
        settings = root.find(f"{{{TASK_NS}}}Settings")
        assert settings is not None
        enabled = settings.find(f"{{{TASK_NS}}}Enabled")
        if enabled is None:
            enabled = ET.SubElement(settings, f"{{{TASK_NS}}}Enabled")
        enabled.text = "false" if "/DISABLE" in args else "true"
        path.write_bytes(ET.tostring(root, encoding="utf-16"))
        return Completed(
            0, f'SUCCESS: The parameters of scheduled task "{name}" have been changed.'
        )


def task_xml(command: str, arguments: str = "", *, enabled: bool = True) -> bytes:
    """A Task Scheduler task file as Windows writes it (UTF-16, the task namespace)."""
    enabled_xml = "" if enabled else "<Enabled>false</Enabled>"
    text = (
        '<?xml version="1.0" encoding="UTF-16"?>\r\n'
        f'<Task version="1.2" xmlns="{TASK_NS}">'
        "<Triggers><LogonTrigger><Enabled>true</Enabled></LogonTrigger></Triggers>"
        f"<Settings><MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>{enabled_xml}</Settings>"
        f'<Actions Context="Author"><Exec><Command>{command}</Command>'
        f"<Arguments>{arguments}</Arguments></Exec></Actions></Task>"
    )
    return text.encode("utf-16")


def task_enabled(path: Path) -> bool:
    enabled = ET.fromstring(path.read_bytes()).find(f"{{{TASK_NS}}}Settings/{{{TASK_NS}}}Enabled")
    return enabled is None or (enabled.text or "").strip().lower() != "false"


RUN_KEY = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run"
# Where Windows keeps what, as its environment names it (a user called ada).
KNOWN_FOLDERS = {
    "APPDATA": "AppData/Roaming",
    "LOCALAPPDATA": "AppData/Local",
    "PROGRAMDATA": "ProgramData",
    "SYSTEMROOT": "Windows",
    "USERPROFILE": "Users/ada",
}


def windows_drive(root: Path, setenv: Callable[[str, str], None]) -> FakeWindows:
    """A Windows drive under ``root``, its known folders named in the environment (through
    ``setenv``), and a FakeWindows holding what every Windows has and nothing may touch."""
    for name, sub in KNOWN_FOLDERS.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        setenv(name, str(root / sub))
    (root / "Windows/System32/Tasks").mkdir(parents=True)
    win = FakeWindows(tasks_dir=root / "Windows/System32/Tasks")
    win.services["Spooler"] = Service(r"C:\Windows\System32\spoolsv.exe", "auto", state="RUNNING")
    win.reg_set(RUN_KEY, RegValue("OneDrive", REG_SZ, r'"C:\OneDrive\OneDrive.exe" /background'))
    win.processes[4] = "System"
    return win

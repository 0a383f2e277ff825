"""The real Windows seam (app/winsvc/win32.py): absent off Windows; loaded as on Windows over
an in-memory ``winreg`` and a recording ``subprocess``, the calls it makes. Under real Win32
it runs in scripts/ci-windows.sh."""

from __future__ import annotations

import codecs
import ctypes
import importlib.util
import inspect
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from app.winsvc import win32
from app.winsvc.system import REG_DWORD, REG_EXPAND_SZ, REG_SZ, Completed, RegValue, Windows

# winreg's numbers, the same on every Windows.
HKEY_CURRENT_USER = 0x80000001
HKEY_LOCAL_MACHINE = 0x80000002
KEY_READ = 0x20019
KEY_SET_VALUE = 0x0002
REG_BINARY = 3
REG_MULTI_SZ = 7
# subprocess's creation flags on Windows (winbase.h).
CREATE_NO_WINDOW = 0x08000000
DETACHED_PROCESS = 0x00000008
CREATE_NEW_PROCESS_GROUP = 0x00000200


@dataclass
class Key:
    """An open registry key (winreg's PyHKEY): a context manager that closes it."""

    hive: int
    path: str
    access: int
    closed: bool = False

    def __enter__(self) -> Key:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True


@dataclass
class Registry:
    """``winreg`` over an in-memory registry, with its errors: OpenKey of a missing key and
    DeleteValue of a missing value raise FileNotFoundError, enumeration past the end
    raises OSError (ERROR_NO_MORE_ITEMS). Paths and value names are case-insensitive."""

    HKEY_CURRENT_USER: int = HKEY_CURRENT_USER
    HKEY_LOCAL_MACHINE: int = HKEY_LOCAL_MACHINE
    KEY_SET_VALUE: int = KEY_SET_VALUE
    # (hive, lower-case path) -> (path as created, {lower-case name: (name, data, type)})
    keys: dict[tuple[int, str], tuple[str, dict[str, tuple[str, Any, int]]]] = field(
        default_factory=dict
    )
    opened: list[Key] = field(default_factory=list)

    def add(self, hive: int, path: str, *values: tuple[str, Any, int]) -> None:
        parts = path.split("\\")
        for depth in range(1, len(parts) + 1):
            prefix = "\\".join(parts[:depth])
            self.keys.setdefault((hive, prefix.lower()), (prefix, {}))
        for name, data, kind in values:
            self.keys[hive, path.lower()][1][name.lower()] = (name, data, kind)

    def values(self, hive: int, path: str) -> dict[str, tuple[str, Any, int]]:
        return self.keys[hive, path.lower()][1]

    def _values(self, key: Key) -> dict[str, tuple[str, Any, int]]:
        return self.values(key.hive, key.path)

    def OpenKey(self, hive: int, path: str, reserved: int = 0, access: int = KEY_READ) -> Key:
        if (hive, path.lower()) not in self.keys:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        key = Key(hive, path, access)
        self.opened.append(key)
        return key

    def CreateKey(self, hive: int, path: str) -> Key:
        self.add(hive, path)
        return self.OpenKey(hive, path, 0, 0xF003F)

    def EnumValue(self, key: Key, index: int) -> tuple[str, Any, int]:
        values = list(self._values(key).values())
        if index >= len(values):
            raise OSError(259, "No more data is available")
        return values[index]

    def EnumKey(self, key: Key, index: int) -> str:
        prefix = key.path.lower() + "\\"
        children = [
            created.rsplit("\\", 1)[1]
            for (hive, lower), (created, _) in self.keys.items()
            if hive == key.hive and lower.startswith(prefix) and "\\" not in lower[len(prefix) :]
        ]
        if index >= len(children):
            raise OSError(259, "No more data is available")
        return children[index]

    def SetValueEx(self, key: Key, name: str, reserved: int, kind: int, data: Any) -> None:
        assert key.access & KEY_SET_VALUE, "key not opened for writing"
        self._values(key)[name.lower()] = (name, data, kind)

    def DeleteValue(self, key: Key, name: str) -> None:
        assert key.access & KEY_SET_VALUE, "key not opened for writing"
        if name.lower() not in self._values(key):
            raise FileNotFoundError(2, "The system cannot find the file specified")
        del self._values(key)[name.lower()]


@dataclass
class Machine:
    module: ModuleType  # app/winsvc/win32.py as Windows runs it
    registry: Registry
    runs: list[tuple[Any, dict[str, Any]]]
    started: list[tuple[Any, dict[str, Any]]]
    answer: subprocess.CompletedProcess[bytes]

    def windows(self) -> Any:
        return self.module.RealWindows()


def _mbcs(name: str) -> codecs.CodecInfo | None:
    """Windows' "mbcs" codec is the ANSI code page: cp1252 on a Western-European Windows."""
    return codecs.lookup("cp1252") if name == "mbcs" else None


@pytest.fixture
def m(monkeypatch: pytest.MonkeyPatch) -> Iterator[Machine]:
    registry = Registry()
    runs: list[tuple[Any, dict[str, Any]]] = []
    started: list[tuple[Any, dict[str, Any]]] = []
    answer = subprocess.CompletedProcess[bytes]("", 0, b"", b"")

    def run(args: Any, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        runs.append((args, kwargs))
        return answer

    monkeypatch.setitem(sys.modules, "winreg", registry)
    with monkeypatch.context() as as_windows:
        as_windows.setattr(sys, "platform", "win32")
        spec = importlib.util.spec_from_file_location("win32_as_on_windows", win32.__file__)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    module.subprocess = SimpleNamespace(  # type: ignore[attr-defined]
        run=run,
        Popen=lambda args, **kwargs: started.append((args, kwargs)),
        DEVNULL=subprocess.DEVNULL,
        CREATE_NO_WINDOW=CREATE_NO_WINDOW,
        DETACHED_PROCESS=DETACHED_PROCESS,
        CREATE_NEW_PROCESS_GROUP=CREATE_NEW_PROCESS_GROUP,
    )
    codecs.register(_mbcs)
    try:
        yield Machine(module, registry, runs, started, answer)
    finally:
        codecs.unregister(_mbcs)


def test_off_windows_the_module_imports_and_offers_nothing() -> None:
    assert sys.platform != "win32"
    assert not hasattr(win32, "RealWindows")
    assert "winreg" not in vars(win32)  # winreg exists only on Windows


def test_real_windows_has_the_whole_seam_with_its_signatures(m: Machine) -> None:
    real = m.module.RealWindows
    for name, method in vars(Windows).items():
        if callable(method) and not name.startswith("_"):
            assert inspect.signature(getattr(real, name)) == inspect.signature(method), name


def test_run_hands_the_command_line_over_verbatim_with_no_window(m: Machine) -> None:
    line = r'sc.exe create OllamaMetricsProxy binPath= "\"C:\Program Files\om.exe\" -service"'
    m.answer.returncode = 1060
    m.answer.stdout = b"[SC] OpenService FAILED 1060:\r\n"
    m.answer.stderr = b"Caf\xe9 \x81"
    done = m.windows().run(line)
    assert done == Completed(1060, "[SC] OpenService FAILED 1060:\r\nCafé \ufffd")
    ((args, kwargs),) = m.runs
    assert args is line  # a string, not split: CreateProcess gets exactly what we built
    assert kwargs["creationflags"] == CREATE_NO_WINDOW
    assert kwargs["stdin"] == subprocess.DEVNULL
    assert kwargs["capture_output"] is True
    assert kwargs["check"] is False


def test_launch_starts_the_program_detached_and_does_not_wait(m: Machine) -> None:
    tray = r"C:\Users\ada\AppData\Local\Programs\Ollama\ollama app.exe"
    m.windows().launch(tray)
    ((args, kwargs),) = m.started
    assert args == [tray]
    assert kwargs["creationflags"] == DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP
    assert kwargs["close_fds"] is True
    for stream in ("stdin", "stdout", "stderr"):
        assert kwargs[stream] == subprocess.DEVNULL


@pytest.mark.parametrize(("answer", "admin"), [(1, True), (0, False), (OSError(), False)])
def test_is_admin_asks_shell32(
    m: Machine, monkeypatch: pytest.MonkeyPatch, answer: int | OSError, admin: bool
) -> None:
    def is_user_an_admin() -> int:
        if isinstance(answer, OSError):
            raise answer
        return answer

    windll = SimpleNamespace(shell32=SimpleNamespace(IsUserAnAdmin=is_user_an_admin))
    monkeypatch.setattr(ctypes, "windll", windll, raising=False)
    assert m.windows().is_admin() is admin


RUN = r"Software\Microsoft\Windows\CurrentVersion\Run"


def test_reg_values_reads_the_hive_and_keeps_string_and_number_values(m: Machine) -> None:
    m.registry.add(
        HKEY_CURRENT_USER,
        RUN,
        ("Ollama", r'"C:\o\ollama app.exe"', REG_SZ),
        ("Path", r"%LOCALAPPDATA%\o.exe", REG_EXPAND_SZ),
        ("Count", 3, REG_DWORD),
        ("Blob", b"\x00\x01", REG_BINARY),
        ("List", ["a", "b"], REG_MULTI_SZ),
    )
    m.registry.add(HKEY_LOCAL_MACHINE, RUN, ("Machine", "m.exe", REG_SZ))
    assert m.windows().reg_values("HKCU\\" + RUN) == [
        RegValue("Ollama", REG_SZ, r'"C:\o\ollama app.exe"'),
        RegValue("Path", REG_EXPAND_SZ, r"%LOCALAPPDATA%\o.exe"),
        RegValue("Count", REG_DWORD, 3),
    ]
    assert m.windows().reg_values("hklm\\" + RUN) == [RegValue("Machine", REG_SZ, "m.exe")]
    assert all(key.closed for key in m.registry.opened)


def test_a_missing_key_has_no_values_and_no_subkeys(m: Machine) -> None:
    assert m.windows().reg_values(r"HKLM\Software\Nope") == []
    assert m.windows().reg_subkeys(r"HKLM\Software\Nope") == []


def test_reg_subkeys_lists_the_children(m: Machine) -> None:
    services = r"SYSTEM\CurrentControlSet\Services"
    m.registry.add(HKEY_LOCAL_MACHINE, services + r"\Ollama", ("Start", 2, REG_DWORD))
    m.registry.add(HKEY_LOCAL_MACHINE, services + r"\Spooler\Parameters")
    assert m.windows().reg_subkeys("HKLM\\" + services) == ["Ollama", "Spooler"]
    assert m.windows().reg_subkeys("HKLM\\" + services + r"\Ollama") == []


def test_reg_set_creates_the_key_and_writes_the_value_with_its_type(m: Machine) -> None:
    windows = m.windows()
    windows.reg_set("HKCU\\" + RUN, RegValue("Ollama", REG_EXPAND_SZ, r"%X%\ollama.exe"))
    assert m.registry.values(HKEY_CURRENT_USER, RUN) == {
        "ollama": ("Ollama", r"%X%\ollama.exe", REG_EXPAND_SZ)
    }
    assert windows.reg_values("HKCU\\" + RUN) == [
        RegValue("Ollama", REG_EXPAND_SZ, r"%X%\ollama.exe")
    ]


def test_reg_delete_opens_the_key_for_writing_and_removes_the_value(m: Machine) -> None:
    m.registry.add(HKEY_CURRENT_USER, RUN, ("Ollama", "o.exe", REG_SZ), ("Keep", "k", REG_SZ))
    m.windows().reg_delete("HKCU\\" + RUN, "Ollama")
    assert list(m.registry.values(HKEY_CURRENT_USER, RUN)) == ["keep"]
    assert m.registry.opened[-1].access == KEY_SET_VALUE
    with pytest.raises(FileNotFoundError):
        m.windows().reg_delete("HKCU\\" + RUN, "Ollama")  # what ollama_conflicts would see

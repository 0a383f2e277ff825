"""``KillOnCloseJob`` (app/service/jobobject.py): a no-op off Windows; on "Windows" (a fake
kernel32), the Win32 calls it makes and the JOBOBJECT_EXTENDED_LIMIT_INFORMATION it passes,
laid out as Windows x64 defines it. The real job object runs under Wine (ci-windows.sh)."""

from __future__ import annotations

import ctypes
import logging
import struct
import sys
from collections.abc import Callable
from ctypes import wintypes
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.service.jobobject import KillOnCloseJob

# winnt.h: JobObjectExtendedLimitInformation, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE.
EXTENDED_LIMIT_INFORMATION = 9
KILL_ON_JOB_CLOSE = 0x2000
# sizeof and offsetof of JOBOBJECT_EXTENDED_LIMIT_INFORMATION on Windows x64 (winnt.h):
# BasicLimitInformation (JOBOBJECT_BASIC_LIMIT_INFORMATION, 64 bytes) at 0, LimitFlags
# at 16 within it, IoInfo (IO_COUNTERS, 48 bytes) at 64, then four SIZE_T.
SIZEOF_EXTENDED_X64 = 144
BASIC_X64 = {
    "per_process_user_time": 0,
    "per_job_user_time": 8,
    "limit_flags": 16,
    "min_working_set": 24,
    "max_working_set": 32,
    "active_process_limit": 40,
    "affinity": 48,
    "priority_class": 56,
    "scheduling_class": 60,
}
EXTENDED_X64 = {
    "basic": 0,
    "io": 64,
    "process_memory_limit": 112,
    "job_memory_limit": 120,
    "peak_process_memory_used": 128,
    "peak_job_memory_used": 136,
}
JOB = 0x1F0  # the handle the fake CreateJobObjectW returns
PROCESS = 0x2A4  # the Ollama process handle the supervisor passes


class Function:
    """A kernel32 export: callable, and takes the restype/argtypes ctypes code sets."""

    def __init__(self, name: str, calls: list[tuple[str, tuple[Any, ...]]], result: Any) -> None:
        self.name, self.calls, self.result = name, calls, result
        self.argtypes: list[Any] | None = None
        self.restype: Any = None

    def __call__(self, *args: Any) -> Any:
        self.calls.append((self.name, args))
        return self.result(*args) if callable(self.result) else self.result


@dataclass
class Kernel32:
    """What ``ctypes.WinDLL("kernel32")`` gives on Windows, recording every call."""

    create: Any = JOB
    set_information: Any = 1
    assign: Any = 1
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    limits: list[ctypes.Structure] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.CreateJobObjectW = Function("CreateJobObjectW", self.calls, self.create)
        self.SetInformationJobObject = Function(
            "SetInformationJobObject", self.calls, self._set_information
        )
        self.AssignProcessToJobObject = Function(
            "AssignProcessToJobObject", self.calls, self.assign
        )
        self.CloseHandle = Function("CloseHandle", self.calls, 1)

    def _set_information(self, job: int, kind: int, pointer: Any, size: int) -> int:
        self.limits.append(pointer._obj)  # what byref() points at
        return int(self.set_information)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Kernel32]:
    """This process as Windows x64 for the module: sys.platform, kernel32, and DWORD as
    the 32-bit type it is there (LLP64; ``wintypes.DWORD`` is c_ulong, 8 bytes on Linux)."""
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        pytest.skip("the layout checked is Windows x64's")

    def make(**results: Any) -> Kernel32:
        kernel32 = Kernel32(**results)
        monkeypatch.setattr(sys, "platform", "win32")
        monkeypatch.setattr(wintypes, "DWORD", ctypes.c_uint32)
        monkeypatch.setattr(ctypes, "WinDLL", lambda name, **kw: kernel32, raising=False)
        monkeypatch.setattr(
            ctypes, "windll", type("windll", (), {"kernel32": kernel32}), raising=False
        )
        monkeypatch.setattr(ctypes, "get_last_error", lambda: 5, raising=False)
        return kernel32

    return make


def test_off_windows_assign_does_nothing_and_says_so() -> None:
    job = KillOnCloseJob()
    assert job.assign(1234) is False
    assert job.handle is None


def test_off_windows_close_forgets_the_handle_without_calling_win32() -> None:
    job = KillOnCloseJob()
    job.handle = 0x1F0  # ctypes.windll does not exist here: a Win32 call would raise
    for _ in range(2):
        job.close()
        assert job.handle is None


def test_assign_creates_a_kill_on_close_job_and_puts_the_process_in_it(
    windows: Callable[..., Kernel32],
) -> None:
    kernel32 = windows()
    job = KillOnCloseJob()
    assert job.assign(PROCESS) is True
    assert job.handle == JOB
    assert kernel32.names() == [
        "CreateJobObjectW",
        "SetInformationJobObject",
        "AssignProcessToJobObject",
    ]
    assert kernel32.calls[0][1] == (None, None)  # unnamed, default security
    _, (handle, kind, _, size) = kernel32.calls[1]
    assert (handle, kind, size) == (JOB, EXTENDED_LIMIT_INFORMATION, SIZEOF_EXTENDED_X64)
    assert kernel32.calls[2][1] == (JOB, PROCESS)
    (limits,) = kernel32.limits
    raw = ctypes.string_at(ctypes.addressof(limits), ctypes.sizeof(limits))
    assert len(raw) == SIZEOF_EXTENDED_X64
    # LimitFlags (a DWORD at offset 16) is KILL_ON_JOB_CLOSE; every other byte is zero.
    assert struct.unpack_from("<I", raw, 16) == (KILL_ON_JOB_CLOSE,)
    assert raw[:16] + raw[20:] == bytes(SIZEOF_EXTENDED_X64 - 4)


def test_the_limits_structure_has_the_windows_x64_layout(
    windows: Callable[..., Kernel32],
) -> None:
    kernel32 = windows()
    assert KillOnCloseJob().assign(PROCESS) is True
    (limits,) = kernel32.limits
    extended = type(limits)
    basic = type(limits.basic)
    io = type(limits.io)
    assert ctypes.sizeof(basic) == 64
    assert ctypes.sizeof(io) == 48  # IO_COUNTERS: six ULONGLONG
    assert {name: getattr(basic, name).offset for name, *_ in basic._fields_} == BASIC_X64
    assert {name: getattr(extended, name).offset for name, *_ in extended._fields_} == EXTENDED_X64
    assert [getattr(basic, name).size for name, *_ in basic._fields_] == [8, 8, 4, 8, 8, 4, 8, 4, 4]
    assert ctypes.sizeof(extended) == SIZEOF_EXTENDED_X64


def test_close_closes_the_job_once(windows: Callable[..., Kernel32]) -> None:
    kernel32 = windows()
    job = KillOnCloseJob()
    assert job.assign(PROCESS)
    job.close()
    job.close()
    assert kernel32.calls[-1] == ("CloseHandle", (JOB,))
    assert kernel32.names().count("CloseHandle") == 1
    assert job.handle is None


def test_a_job_that_cannot_be_created_leaves_the_old_behaviour(
    windows: Callable[..., Kernel32], caplog: pytest.LogCaptureFixture
) -> None:
    kernel32 = windows(create=None)
    job = KillOnCloseJob()
    with caplog.at_level(logging.WARNING, logger="app.service.jobobject"):
        assert job.assign(PROCESS) is False
    assert job.handle is None
    assert kernel32.names() == ["CreateJobObjectW"]
    assert "CreateJobObject failed (5)" in caplog.text


@pytest.mark.parametrize(("set_information", "assign"), [(0, 1), (1, 0)])
def test_a_failed_setup_closes_the_job_it_made(
    windows: Callable[..., Kernel32],
    caplog: pytest.LogCaptureFixture,
    set_information: int,
    assign: int,
) -> None:
    kernel32 = windows(set_information=set_information, assign=assign)
    job = KillOnCloseJob()
    with caplog.at_level(logging.WARNING, logger="app.service.jobobject"):
        assert job.assign(PROCESS) is False
    assert job.handle is None
    assert kernel32.calls[-1] == ("CloseHandle", (JOB,))
    # SetInformationJobObject failing means the process is never put in the job.
    assert ("AssignProcessToJobObject" in kernel32.names()) is bool(set_information)
    assert "could not tie ollama serve to this process (error 5)" in caplog.text

"""Windows: tie the Ollama that ``serve`` starts, and everything it starts, to us.

Ollama's server starts model runners as child processes; terminating only the server
would leave them holding GPU memory. A job object with KILL_ON_JOB_CLOSE ends every
process in it when its last handle closes — when we close it after stopping Ollama, or
when this process dies in any way. The Windows counterpart of PR_SET_PDEATHSIG on Linux.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)


class KillOnCloseJob:
    """A job object that ends its processes when closed; a no-op off Windows or when the
    process cannot be assigned (then the old behaviour, terminating the server, remains)."""

    def __init__(self) -> None:
        self.handle: int | None = None

    def assign(self, process_handle: int) -> bool:
        if sys.platform == "win32":
            return self._assign_windows(process_handle)
        return False

    def close(self) -> None:
        if self.handle is not None and sys.platform == "win32":
            import ctypes

            ctypes.windll.kernel32.CloseHandle(self.handle)
        self.handle = None

    def _assign_windows(self, process_handle: int) -> bool:  # pragma: no cover - Windows
        if sys.platform != "win32":  # for the type checker on other platforms
            return False
        import ctypes
        from ctypes import wintypes

        class IoCounters(ctypes.Structure):
            _fields_ = [
                (name, ctypes.c_ulonglong)
                for name in (
                    "read_ops",
                    "write_ops",
                    "other_ops",
                    "read_bytes",
                    "write_bytes",
                    "other_bytes",
                )
            ]

        class BasicLimits(ctypes.Structure):
            _fields_ = [
                ("per_process_user_time", ctypes.c_int64),
                ("per_job_user_time", ctypes.c_int64),
                ("limit_flags", wintypes.DWORD),
                ("min_working_set", ctypes.c_size_t),
                ("max_working_set", ctypes.c_size_t),
                ("active_process_limit", wintypes.DWORD),
                ("affinity", ctypes.c_size_t),
                ("priority_class", wintypes.DWORD),
                ("scheduling_class", wintypes.DWORD),
            ]

        class ExtendedLimits(ctypes.Structure):
            _fields_ = [
                ("basic", BasicLimits),
                ("io", IoCounters),
                ("process_memory_limit", ctypes.c_size_t),
                ("job_memory_limit", ctypes.c_size_t),
                ("peak_process_memory_used", ctypes.c_size_t),
                ("peak_job_memory_used", ctypes.c_size_t),
            ]

        job_object_extended_limit_information = 9
        job_object_limit_kill_on_job_close = 0x2000
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernel32.CreateJobObjectW.restype = wintypes.HANDLE
        kernel32.CreateJobObjectW.argtypes = [wintypes.LPVOID, wintypes.LPCWSTR]
        kernel32.SetInformationJobObject.argtypes = [
            wintypes.HANDLE,
            ctypes.c_int,
            wintypes.LPVOID,
            wintypes.DWORD,
        ]
        kernel32.AssignProcessToJobObject.argtypes = [wintypes.HANDLE, wintypes.HANDLE]
        job = kernel32.CreateJobObjectW(None, None)
        if not job:
            log.warning("CreateJobObject failed (%d)", ctypes.get_last_error())
            return False
        limits = ExtendedLimits()
        limits.basic.limit_flags = job_object_limit_kill_on_job_close
        ok = kernel32.SetInformationJobObject(
            job, job_object_extended_limit_information, ctypes.byref(limits), ctypes.sizeof(limits)
        ) and kernel32.AssignProcessToJobObject(job, process_handle)
        if not ok:
            log.warning(
                "could not tie ollama serve to this process (error %d); its runners may "
                "outlive a crash",
                ctypes.get_last_error(),
            )
            kernel32.CloseHandle(job)
            return False
        self.handle = job
        return True

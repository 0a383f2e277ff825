"""``ollama-metrics.exe -service``: the process the Windows service manager starts.

The thin Win32 layer: pywin32's service framework in the pattern that works frozen by
PyInstaller (``PrepareToHostSingle`` + ``StartServiceCtrlDispatcher``). Everything it runs
is ``ServiceRunner``, which is tested on Linux; this module only maps its state reports to
``SetServiceStatus`` and the service manager's stop/shutdown controls to ``stop()``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from app.winsvc import sc
from app.winsvc.runner import RUNNING, START_PENDING, STOP_PENDING, ServiceRunner

# How long the service manager should wait before expecting the next report (ms); the
# runner reports every second, so this is generous.
WAIT_HINT_MS = 10_000
ERROR_FAILED_SERVICE_CONTROLLER_CONNECT = 1063
NOT_UNDER_SCM = (
    "ollama-metrics: -service is how the Windows service manager starts this program. "
    "To install the service: ollama-metrics service install (elevated); "
    "to run in this window: ollama-metrics serve"
)


def run_service() -> int:  # pragma: no cover - Windows only; exercised under Wine in CI
    import pywintypes
    import servicemanager
    import win32service
    import win32serviceutil

    # A service has no console: anything that writes to stdout/stderr must not fail.
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115

    states = {
        START_PENDING: win32service.SERVICE_START_PENDING,
        RUNNING: win32service.SERVICE_RUNNING,
        STOP_PENDING: win32service.SERVICE_STOP_PENDING,
    }

    class OllamaMetricsService(win32serviceutil.ServiceFramework):
        _svc_name_ = sc.DEFAULT_NAME
        _svc_display_name_ = sc.DISPLAY_NAME
        _svc_description_ = sc.DESCRIPTION

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self.runner = ServiceRunner(self._report)

        def _report(self, state: str) -> None:
            self.ReportServiceStatus(states[state], waitHint=WAIT_HINT_MS)

        def SvcRun(self) -> None:
            # Replaces the framework's SvcRun, which would say RUNNING before the proxy
            # listens. When this returns, the framework reports STOPPED; an exception
            # makes it STOPPED with an error, which the failure actions act on.
            code = self.runner.run()
            if code != 0 and not self.runner.stopping.is_set():
                raise RuntimeError(
                    f"ollama-metrics service failed (status {code}); see {self.runner.log_file}"
                )

        def SvcStop(self) -> None:
            self.runner.stop()

        def SvcShutdown(self) -> None:
            self.runner.stop(hurry=True)

    servicemanager.Initialize()
    servicemanager.PrepareToHostSingle(OllamaMetricsService)
    try:
        servicemanager.StartServiceCtrlDispatcher()  # type: ignore[no-untyped-call]
    except pywintypes.error as exc:
        if exc.winerror == ERROR_FAILED_SERVICE_CONTROLLER_CONNECT:
            print(NOT_UNDER_SCM, file=sys.stderr)
            return 2
        raise
    return 0

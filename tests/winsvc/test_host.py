"""The service host (app/winsvc/host.py) off Windows: safe to import, and ``run_service`` over
stand-ins for pywin32 that record what the service manager would be told. The real host
runs as a service under Wine in scripts/ci-windows.sh."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import uvicorn

from app.cli import _parser
from app.config import CONFIG_ENV
from app.winsvc import host, sc
from app.winsvc.runner import RUNNING, START_PENDING, STOP_PENDING, ServiceRunner

# Each test may reconfigure logging (tests/conftest.py puts it back).
pytestmark = pytest.mark.usefixtures("keep_logging")

# winsvc.h: the states SetServiceStatus takes.
SERVICE_STOPPED = 1
SERVICE_START_PENDING = 2
SERVICE_STOP_PENDING = 3
SERVICE_RUNNING = 4


class PyWinError(Exception):
    """``pywintypes.error``: (winerror, funcname, strerror), each also an attribute."""

    def __init__(self, winerror: int, funcname: str, strerror: str) -> None:
        super().__init__(winerror, funcname, strerror)
        self.winerror, self.funcname, self.strerror = winerror, funcname, strerror


@dataclass
class PyWin32:
    """The four pywin32 modules run_service imports, recording what it does with them."""

    dispatch: Callable[[], None] = lambda: None  # what StartServiceCtrlDispatcher does
    calls: list[str] = field(default_factory=list)
    hosted: list[type[Any]] = field(default_factory=list)
    reports: list[tuple[int, int]] = field(default_factory=list)

    def modules(self) -> dict[str, ModuleType]:
        recorder = self

        class ServiceFramework:
            def __init__(self, args: Any) -> None:
                self.args = args

            def ReportServiceStatus(self, status: int, waitHint: int = 5000) -> None:
                recorder.reports.append((status, waitHint))

        def initialize() -> None:
            self.calls.append("Initialize")

        def prepare(cls: type[Any]) -> None:
            self.calls.append("PrepareToHostSingle")
            self.hosted.append(cls)

        def start_dispatcher() -> None:
            self.calls.append("StartServiceCtrlDispatcher")
            self.dispatch()

        pywintypes = ModuleType("pywintypes")
        pywintypes.error = PyWinError  # type: ignore[attr-defined]
        servicemanager = ModuleType("servicemanager")
        servicemanager.Initialize = initialize  # type: ignore[attr-defined]
        servicemanager.PrepareToHostSingle = prepare  # type: ignore[attr-defined]
        servicemanager.StartServiceCtrlDispatcher = start_dispatcher  # type: ignore[attr-defined]
        win32service = ModuleType("win32service")
        win32service.SERVICE_START_PENDING = SERVICE_START_PENDING  # type: ignore[attr-defined]
        win32service.SERVICE_RUNNING = SERVICE_RUNNING  # type: ignore[attr-defined]
        win32service.SERVICE_STOP_PENDING = SERVICE_STOP_PENDING  # type: ignore[attr-defined]
        win32serviceutil = ModuleType("win32serviceutil")
        win32serviceutil.ServiceFramework = ServiceFramework  # type: ignore[attr-defined]
        return {
            "pywintypes": pywintypes,
            "servicemanager": servicemanager,
            "win32service": win32service,
            "win32serviceutil": win32serviceutil,
        }


@pytest.fixture
def pywin32(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> PyWin32:
    fake = PyWin32()
    for name, module in fake.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    # The service's home (%ProgramData%\OllamaMetrics) in a temporary folder.
    monkeypatch.setenv("PROGRAMDATA", str(tmp_path / "ProgramData"))
    return fake


@pytest.fixture
def service(pywin32: PyWin32) -> Any:
    """The service class run_service hosts, as the service manager instantiates it."""
    assert host.run_service() == 0
    (cls,) = pywin32.hosted
    return cls((sc.DEFAULT_NAME,))


def test_importing_it_off_windows_needs_no_pywin32() -> None:
    assert importlib.util.find_spec("servicemanager") is None  # not installed here
    # This module imported it: pywin32 is imported only when run_service runs.
    assert not {"pywintypes", "servicemanager", "win32service", "win32serviceutil"} & set(
        vars(host)
    )


def test_the_message_outside_the_service_manager_names_real_commands() -> None:
    assert "ollama-metrics service install (elevated)" in host.NOT_UNDER_SCM
    assert "ollama-metrics serve" in host.NOT_UNDER_SCM
    install = _parser().parse_args(["service", "install"])
    assert (install.command, install.action) == ("service", "install")
    assert _parser().parse_args(["serve"]).command == "serve"


def test_run_service_hosts_the_service_under_its_installed_name(pywin32: PyWin32) -> None:
    assert host.run_service() == 0
    assert pywin32.calls == ["Initialize", "PrepareToHostSingle", "StartServiceCtrlDispatcher"]
    (cls,) = pywin32.hosted
    assert cls._svc_name_ == sc.DEFAULT_NAME
    assert cls._svc_display_name_ == sc.DISPLAY_NAME
    assert cls._svc_description_ == sc.DESCRIPTION


def test_started_by_hand_it_says_how_to_install_instead(
    pywin32: PyWin32, capsys: pytest.CaptureFixture[str]
) -> None:
    def not_a_service() -> None:
        raise PyWinError(
            host.ERROR_FAILED_SERVICE_CONTROLLER_CONNECT,
            "StartServiceCtrlDispatcher",
            "The service process could not connect to the service controller.",
        )

    pywin32.dispatch = not_a_service
    assert host.run_service() == 2
    assert capsys.readouterr().err == host.NOT_UNDER_SCM + "\n"


def test_other_dispatcher_errors_are_raised(pywin32: PyWin32) -> None:
    def denied() -> None:
        raise PyWinError(5, "StartServiceCtrlDispatcher", "Access is denied.")

    pywin32.dispatch = denied
    with pytest.raises(PyWinError) as raised:
        host.run_service()
    assert raised.value.winerror == 5


def test_a_missing_console_is_replaced_by_the_null_device(
    pywin32: PyWin32, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", None)
    assert host.run_service() == 0
    replaced = sys.stderr
    assert replaced is not None
    try:
        assert replaced.name == os.devnull
        print("nobody reads this", file=sys.stderr)  # must not fail
    finally:
        replaced.close()


def test_the_runners_states_become_service_status_reports(service: Any, pywin32: PyWin32) -> None:
    assert isinstance(service.runner, ServiceRunner)
    assert service.runner.home == Path(os.environ["PROGRAMDATA"]) / "OllamaMetrics"
    for state in (START_PENDING, RUNNING, STOP_PENDING):
        service.runner.report(state)
    assert pywin32.reports == [
        (SERVICE_START_PENDING, host.WAIT_HINT_MS),
        (SERVICE_RUNNING, host.WAIT_HINT_MS),
        (SERVICE_STOP_PENDING, host.WAIT_HINT_MS),
    ]


def test_stop_asks_the_runner_to_finish(service: Any, pywin32: PyWin32) -> None:
    service.SvcStop()
    assert service.runner.stopping.is_set()
    assert pywin32.reports == [(SERVICE_STOP_PENDING, host.WAIT_HINT_MS)]


def test_shutdown_asks_the_runner_to_hurry(
    service: Any, pywin32: PyWin32, caplog: pytest.LogCaptureFixture
) -> None:
    # A server that is not running: what the runner holds between start and RUNNING.
    server = uvicorn.Server(uvicorn.Config(app=lambda scope, receive, send: None))
    service.runner.server = server
    with caplog.at_level(logging.INFO, logger="app.winsvc.runner"):
        service.SvcShutdown()
    assert server.should_exit is True
    assert service.runner.stopping.is_set()
    assert "service stop requested (machine shutting down)" in caplog.text
    assert pywin32.reports == [(SERVICE_STOP_PENDING, host.WAIT_HINT_MS)]


def test_a_failed_run_is_an_error_the_failure_actions_act_on(
    service: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("proxy_prot = 11434\n", encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    with pytest.raises(RuntimeError) as raised:
        service.SvcRun()
    assert str(raised.value) == (
        f"ollama-metrics service failed (status 2); see {service.runner.log_file}"
    )
    assert "unknown setting proxy_prot" in service.runner.log_file.read_text(encoding="utf-8")


def test_a_run_ended_by_a_stop_is_not_a_failure(
    service: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("proxy_prot = 11434\n", encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    service.SvcStop()  # the service manager may send stop at any time
    service.SvcRun()  # status 2, but we were asked to stop: the framework says STOPPED
    assert service.runner.finished.is_set()
    assert "invalid configuration" in service.runner.log_file.read_text(encoding="utf-8")

"""What the Windows service runs, without the Windows part: settings, logging, the server,
and the state reports the service manager needs while it starts and stops.

``ServiceRunner.run`` blocks like ``ollama-metrics serve`` does; ``stop`` (from another
thread: the service manager's control handler) asks it to finish. While the proxy starts
it reports ``START_PENDING`` every second, ``RUNNING`` once it listens, and while it drains
``STOP_PENDING`` every second until it is done; the host turns those into
``SetServiceStatus`` calls (each pending report advances the checkpoint, so the service
manager keeps waiting for as long as real progress is being made).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn

from app.config import Settings, program_data_home
from app.logs import configure_logging
from app.server import StartError, prepare_server, serve_until_stopped
from app.service.binary import INSTALL_HINT, find_ollama

log = logging.getLogger(__name__)

START_PENDING = "START_PENDING"
RUNNING = "RUNNING"
STOP_PENDING = "STOP_PENDING"
LOG_NAME = "ollama-metrics.log"
# On a machine shutdown Windows gives services a few seconds: in-flight requests get this
# long, then they are cut and the analytics queue is drained.
SHUTDOWN_HURRY_SECONDS = 3.0


def service_settings(home: Path) -> Settings:
    """Settings from the configuration file (and the service's environment), with the data
    under ``home`` unless configured otherwise: a service's working directory is
    ``C:\\Windows\\System32``, no place for a database."""
    settings = Settings()
    updates: dict[str, object] = {}
    if "analytics_dir" not in settings.model_fields_set:
        updates["analytics_dir"] = home / "analytics"
    if "ollama_log" not in settings.model_fields_set:
        updates["ollama_log"] = home / "logs" / "ollama.log"
    return settings.model_copy(update=updates)


class ServiceRunner:
    def __init__(
        self,
        report: Callable[[str], None],
        *,
        home: Path | None = None,
        interval: float = 1.0,
    ) -> None:
        self.report = report
        self.home = home or program_data_home()
        self.interval = interval
        self.server: uvicorn.Server | None = None
        self.stopping = threading.Event()
        self.finished = threading.Event()
        self._lock = threading.Lock()

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / LOG_NAME

    def run(self) -> int:
        """Start, serve until stopped, drain; the exit status (0 = clean)."""
        pulse = threading.Thread(target=self._pulse, name="service-status", daemon=True)
        pulse.start()
        try:
            return self._run()
        finally:
            self.finished.set()
            pulse.join()

    def _run(self) -> int:
        self._report(START_PENDING)
        try:
            settings = service_settings(self.home)
        except Exception as exc:  # a bad config file must reach the log, whatever it is
            configure_logging("info", "text", file=self.log_file)
            log.error("cannot start: invalid configuration: %s", exc)
            return 2
        configure_logging(settings.log_level, settings.log_format, file=self.log_file)
        log.info("service starting: %s (data in %s)", settings.service_command, self.home)
        binary = None
        if settings.service_command == "serve":
            binary = find_ollama(settings.ollama_bin)
            if binary is None:
                log.error("cannot start: %s", INSTALL_HINT)
                return 1
        try:
            server = prepare_server(settings, ollama_binary=binary)
        except StartError as exc:
            log.error("cannot start: %s", exc)
            return exc.code
        with self._lock:
            self.server = server
            if self.stopping.is_set():
                return 0
        code = serve_until_stopped(server, settings)
        log.info("service stopped (status %d)", code)
        return code

    def stop(self, *, hurry: bool = False) -> None:
        """Finish: in-flight requests get SHUTDOWN_GRACE_SECONDS (or, with ``hurry``, a few
        seconds), then the analytics queue is drained and Ollama stopped."""
        with self._lock:
            self.stopping.set()
            self._report(STOP_PENDING)
            server = self.server
        if server is None:
            return
        log.info("service stop requested%s", " (machine shutting down)" if hurry else "")
        server.should_exit = True
        if hurry:
            timer = threading.Timer(SHUTDOWN_HURRY_SECONDS, setattr, (server, "force_exit", True))
            timer.daemon = True
            timer.start()

    def _report(self, state: str) -> None:
        try:
            self.report(state)
        except Exception:  # a failed status report must not take the proxy down
            log.exception("reporting %s to the service manager failed", state)

    def _pulse(self) -> None:
        """RUNNING as soon as the proxy listens; a pending state again every interval."""
        running = False
        last = time.monotonic()
        while not self.finished.wait(0.05):
            with self._lock:
                if self.stopping.is_set():
                    state = STOP_PENDING
                elif self.server is not None and self.server.started:
                    state = RUNNING
                else:
                    state = START_PENDING
                if state == RUNNING:
                    if not running:
                        self._report(RUNNING)
                        running = True
                elif time.monotonic() - last >= self.interval:
                    self._report(state)
                    last = time.monotonic()

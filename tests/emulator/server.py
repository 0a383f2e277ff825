"""Running the emulator: `serve` (blocking, in this process) and `EmulatorServer`.

`EmulatorServer` runs `python -m tests.emulator` in a child process so the emulator has
its own event loop and can be stopped and restarted on the same port, like a real
upstream going away and coming back.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp

from tests.emulator.app import create_app
from tests.emulator.config import EmulatorConfig
from tests.emulator.wire import EmulatedReset

__all__ = ["EmulatorServer", "request_log", "reset_emulator", "serve"]

_PROJECT_ROOT = Path(__file__).resolve().parents[2]


class _HideDeliberateResets(logging.Filter):
    """uvicorn logs a traceback for every aborted response; injected resets are expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        return not isinstance(error, EmulatedReset)


def uvicorn_config(app: ASGIApp, **bind: Any) -> uvicorn.Config:
    """uvicorn set up like Ollama's Go server: no Server header, no server-side timeouts.
    ``bind`` is host/port, or nothing when the caller hands uvicorn a socket."""
    logging.getLogger("uvicorn.error").addFilter(_HideDeliberateResets())
    return uvicorn.Config(
        app,
        **bind,
        server_header=False,
        access_log=False,
        log_level="warning",
        lifespan="off",
        # Ollama's http.Server sets no timeouts, so idle keep-alive connections stay open;
        # uvicorn's 5 s default would make pooled clients race against server-side closes.
        timeout_keep_alive=24 * 3600,
        timeout_graceful_shutdown=1,
    )


def serve(config: EmulatorConfig, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM. Go sends no Server header, so neither does this."""
    uvicorn.Server(uvicorn_config(create_app(config), host=host, port=port)).run()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmulatorServer:
    """`with EmulatorServer(EmulatorConfig(token_delay=0.01)) as upstream: upstream.url`."""

    def __init__(self, config: EmulatorConfig | None = None, *, startup_timeout: float = 20.0):
        self.config = config or EmulatorConfig()
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        # Child output goes to a file, not a pipe nobody drains (a full pipe would block it).
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        c = self.config
        return [
            sys.executable, "-m", "tests.emulator",
            "--host", self.host, "--port", str(self.port),
            "--token-delay", str(c.token_delay), "--first-token-delay", str(c.first_token_delay),
            "--cold-load-delay", str(c.cold_load_delay), "--num-parallel", str(c.num_parallel),
            "--max-loaded-models", str(c.max_loaded_models), "--vram-bytes", str(c.vram_bytes),
            "--keep-alive", str(c.keep_alive), "--max-queue", str(c.max_queue),
            "--version", c.version, "--openai-layout", c.openai_layout,
        ]  # fmt: skip

    def start(self) -> EmulatorServer:
        """Start (again) on the same port and return once it answers HTTP."""
        if self.running:
            return self
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(_PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        self._process = subprocess.Popen(
            self._command(), cwd=_PROJECT_ROOT, env=env, stdout=self._log, stderr=self._log
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"emulator exited during startup:\n{self._output()}")
            try:
                # A control endpoint, so the probe stays out of the request log.
                if httpx.get(f"{self.url}/_emulator/config", timeout=0.5).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            f"emulator did not answer within {self.startup_timeout}s:\n{self._output()}"
        )

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        """Graceful stop (SIGTERM), as when the upstream shuts down; waits for the exit."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Abrupt stop (SIGKILL): open connections are cut, like a crashed upstream."""
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._log.close()

    # Conveniences for tests: the /_emulator control endpoints.

    def requests(self) -> list[dict[str, Any]]:
        return request_log(self.url)

    def reset(self, *, catalog: bool = False) -> None:
        reset_emulator(self.url, catalog=catalog)

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change the live config (the fields of EmulatorConfig)."""
        response = httpx.post(f"{self.url}/_emulator/config", json=changes, timeout=5)
        response.raise_for_status()
        for key, value in changes.items():
            setattr(self.config, key, value)
        result: dict[str, Any] = response.json()
        return result


def request_log(url: str) -> list[dict[str, Any]]:
    """What the emulator at ``url`` received, oldest first (``GET /_emulator/requests``);
    also for an emulator that another program started (the fake ``ollama serve``)."""
    response = httpx.get(f"{url}/_emulator/requests", timeout=5)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()
    return result


def reset_emulator(url: str, *, catalog: bool = False) -> None:
    """Empty the request log of the emulator at ``url``; with ``catalog``, undo every
    model change too."""
    httpx.post(f"{url}/_emulator/reset", json={"catalog": catalog}, timeout=5).raise_for_status()

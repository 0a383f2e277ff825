"""What the Windows service runs, run here: configuration from the file, the proxy (or
Ollama and the proxy) started and stopped from another thread, as the service manager's
control handler does, with the state reports the service manager would get."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import CONFIG_ENV
from app.service.ports import listening
from app.winsvc.runner import RUNNING, START_PENDING, STOP_PENDING, ServiceRunner
from tests import fake_ollama
from tests.emulator.server import EmulatorServer
from tests.support import CHAT, free_port

# Each test may reconfigure logging (tests/conftest.py puts it back).
pytestmark = pytest.mark.usefixtures("keep_logging")


RUNS: list[Run] = []


@pytest.fixture(autouse=True)
def _stop_runs() -> Iterator[None]:
    """A failed test must not leave a proxy running in this process."""
    yield
    while RUNS:
        run = RUNS.pop()
        run.runner.stop()
        run.thread.join(30)


class Run:
    def __init__(self, home: Path) -> None:
        self.reports: list[str] = []
        self.runner = ServiceRunner(self.reports.append, home=home, interval=0.1)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, name="service-main", daemon=True)
        RUNS.append(self)

    def _run(self) -> None:
        self.code = self.runner.run()

    def start(self) -> Run:
        self.thread.start()
        return self

    def wait_for(self, state: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while state not in self.reports:
            assert self.thread.is_alive() or state in self.reports, (self.code, self.reports)
            assert time.monotonic() < deadline, self.reports
            time.sleep(0.02)

    def finish(self, timeout: float = 60) -> int | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        return self.code


def write_config(path: Path, **values: object) -> Path:
    lines = []
    for key, value in values.items():
        rendered = f'"{value}"' if isinstance(value, (str, Path)) else str(value).lower()
        lines.append(f"{key} = {rendered}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.process
def test_proxy_mode_reports_states_serves_and_drains_on_stop(
    emulator: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    home = tmp_path / "ProgramData" / "OllamaMetrics"
    config = write_config(
        tmp_path / "config.toml",
        service_command="proxy",
        proxy_port=port,
        ollama_upstream=emulator.url,
        ps_poll_interval=0,
    )
    monkeypatch.setenv(CONFIG_ENV, str(config))
    run = Run(home).start()
    run.wait_for(RUNNING)
    assert run.reports[0] == START_PENDING
    assert listening("127.0.0.1", port)  # RUNNING is said only once the proxy listens

    sent = 20
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for i in range(sent):
            body = {"model": "llama3.2", "prompt": f"service {i}", "stream": False}
            assert client.post("/api/generate", json=body).status_code == 200
        chat = {"model": "llama3.2", "messages": CHAT, "stream": False}
        assert client.post("/api/chat", json=chat).status_code == 200
    # Stop at once: what was accepted must be written before the service says STOPPED.
    run.runner.stop()
    assert run.finish() == 0
    assert not listening("127.0.0.1", port)

    running = run.reports.index(RUNNING)
    assert set(run.reports[:running]) == {START_PENDING}
    assert run.reports.count(RUNNING) == 1
    assert set(run.reports[running + 1 :]) == {STOP_PENDING}

    with sqlite3.connect(home / "analytics" / "analytics.db") as db:
        prompts = {row[0] for row in db.execute("SELECT prompt FROM requests")}
    assert {f"service {i}" for i in range(sent)} <= prompts
    assert len(prompts) == sent + 1

    log = (home / "logs" / "ollama-metrics.log").read_text(encoding="utf-8")
    assert "service starting: proxy" in log
    assert "service stop requested" in log
    assert "service stopped (status 0)" in log


@pytest.mark.process
def test_serve_mode_runs_ollama_and_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, upstream = free_port(), free_port()
    home = tmp_path / "OllamaMetrics"
    config = write_config(
        tmp_path / "config.toml",
        proxy_port=port,
        ollama_upstream=f"http://127.0.0.1:{upstream}",
        ollama_bin=fake_ollama.EXECUTABLE,
        ps_poll_interval=0,
    )
    monkeypatch.setenv(CONFIG_ENV, str(config))
    monkeypatch.setenv("FAKE_OLLAMA_PYTHON", sys.executable)
    run = Run(home).start()
    run.wait_for(RUNNING)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        assert client.get("/api/version").status_code == 200
        assert client.get("/test").json()["upstream_reachable"] is True
    assert listening("127.0.0.1", upstream)
    run.runner.stop()
    assert run.finish() == 0
    assert not listening("127.0.0.1", port)
    assert not listening("127.0.0.1", upstream)
    # Ollama's own output goes to the service's log folder by default.
    assert (home / "logs" / "ollama.log").stat().st_size > 0


def test_a_bad_configuration_file_stops_the_start_with_the_reason_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "OllamaMetrics"
    config = tmp_path / "config.toml"
    config.write_text("proxy_prot = 11434\n", encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    run = Run(home).start()
    assert run.finish() == 2
    log = (home / "logs" / "ollama-metrics.log").read_text(encoding="utf-8")
    assert "invalid configuration" in log
    assert "unknown setting proxy_prot" in log


def test_serve_without_ollama_says_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "OllamaMetrics"
    config = write_config(tmp_path / "config.toml", ollama_bin=tmp_path / "missing" / "ollama.exe")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    run = Run(home).start()
    assert run.finish() == 1
    assert RUNNING not in run.reports
    log = (home / "logs" / "ollama-metrics.log").read_text(encoding="utf-8")
    assert "Ollama is not installed" in log


@pytest.mark.process
def test_a_port_in_use_is_reported_not_hung(
    emulator: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "OllamaMetrics"
    config = write_config(
        tmp_path / "config.toml",
        service_command="proxy",
        proxy_port=emulator.port,
        ollama_upstream=emulator.url,
    )
    monkeypatch.setenv(CONFIG_ENV, str(config))
    run = Run(home).start()
    assert run.finish() == 1
    log = (home / "logs" / "ollama-metrics.log").read_text(encoding="utf-8")
    assert "already listening" in log or "already in use" in log


@pytest.mark.process
def test_stop_during_start_ends_cleanly(
    emulator: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(
        tmp_path / "config.toml",
        service_command="proxy",
        proxy_port=free_port(),
        ollama_upstream=emulator.url,
    )
    monkeypatch.setenv(CONFIG_ENV, str(config))
    run = Run(tmp_path / "home")
    run.runner.stop()  # the service manager may send stop at any time
    run.start()
    assert run.finish() == 0
    assert RUNNING not in run.reports

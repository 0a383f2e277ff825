"""``OllamaSupervisor`` and its helpers (app/service/supervisor.py): Ollama's environment,
and ``ollama serve`` (the stand-in of tests/fake_ollama) started, restarted and stopped."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from app.service import supervisor as supervision
from app.service.ports import listening
from app.service.supervisor import OllamaSupervisor, child_environment, upstream_address
from tests import fake_ollama
from tests.support import LocalHttpServer, free_port

# What Ollama's FAQ says breaks its client connections.
PROXY_VARIABLES = {"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"}


def test_child_gets_the_upstream_address_and_no_http_proxy() -> None:
    base = {
        "OLLAMA_HOST": "0.0.0.0",
        "HTTP_PROXY": "http://corp:3128",
        "https_proxy": "x",
        "HOME": "/h",
    }
    env = child_environment("127.0.0.1:11435", base)
    assert env == {"OLLAMA_HOST": "127.0.0.1:11435", "HOME": "/h"}


def test_the_configured_ollama_env_cannot_move_ollama_or_bring_back_a_proxy() -> None:
    extra = {
        "OLLAMA_HOST": "0.0.0.0:1",
        "ALL_PROXY": "socks5://corp:1080",
        "OLLAMA_MODELS": r"D:\models",
        "HOME": "/elsewhere",
    }
    env = child_environment("127.0.0.1:11435", {"HOME": "/h", "LANG": "C"}, extra)
    assert env == {
        "OLLAMA_HOST": "127.0.0.1:11435",
        "OLLAMA_MODELS": r"D:\models",
        "HOME": "/elsewhere",
        "LANG": "C",
    }


def test_without_a_base_the_child_inherits_ours_and_ours_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OM_TEST_MARK", "inherited")
    monkeypatch.setenv("HTTPS_PROXY", "http://corp:3128")
    ours = dict(os.environ)
    env = child_environment("127.0.0.1:11435", extra={"OLLAMA_DEBUG": "1"})
    assert env == {
        **{k: v for k, v in ours.items() if k not in PROXY_VARIABLES},
        "OLLAMA_DEBUG": "1",
        "OLLAMA_HOST": "127.0.0.1:11435",
    }
    assert dict(os.environ) == ours


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:11435", "127.0.0.1:11435"),
        ("http://localhost", "localhost:80"),
        ("https://gpu.internal", "gpu.internal:443"),
        # IPv6 keeps its brackets: OLLAMA_HOST is split as Go's net.SplitHostPort does.
        ("http://[::1]:11435", "[::1]:11435"),
    ],
)
def test_upstream_address(url: str, address: str) -> None:
    assert upstream_address(url) == address


# --- ollama serve under the supervisor (the stand-in `ollama` of tests/fake_ollama) ---------


@pytest.fixture
def fake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in's knobs in our environment (the child inherits it), and what a user's
    shell may carry that the supervisor must override; the file the stand-in writes its
    pid to at every start."""
    monkeypatch.setenv("FAKE_OLLAMA_PYTHON", sys.executable)
    monkeypatch.setenv("FAKE_OLLAMA_PIDFILE", str(tmp_path / "ollama.pids"))
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0")
    return tmp_path / "ollama.pids"


def supervisor(
    tmp_path: Path, binary: Path = fake_ollama.EXECUTABLE, **kwargs: Any
) -> OllamaSupervisor:
    return OllamaSupervisor(
        str(binary),
        upstream_host=f"127.0.0.1:{free_port()}",
        log_path=tmp_path / "logs" / "ollama.log",
        **kwargs,
    )


def script(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)
    return path


def pids(pidfile: Path) -> list[int]:
    return [int(line) for line in pidfile.read_text().split()] if pidfile.exists() else []


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def until(condition: Callable[[], bool]) -> None:
    """Poll without a deadline of its own (pytest-timeout bounds a hang)."""
    while not condition():
        time.sleep(0.05)


@pytest.mark.process
def test_start_runs_ollama_serve_on_the_upstream_address_and_stop_ends_it(
    tmp_path: Path, fake_env: Path
) -> None:
    extra = {"OLLAMA_KEEP_ALIVE": "7m", "OLLAMA_HOST": "0.0.0.0:1", "HTTPS_PROXY": "http://c:1"}
    sup = supervisor(tmp_path, extra_env=extra)
    host, port = sup.upstream_host.split(":")

    async def scenario() -> None:
        await sup.start()
        try:
            assert sup.process is not None
            # Ready means answering: start() returned, so /api/version answers now.
            async with httpx.AsyncClient(trust_env=False) as client:
                answer = await client.get(f"http://{sup.upstream_host}/api/version")
            assert answer.status_code == 200
            child = psutil.Process(sup.process.pid)
            env = child.environ()
            assert env["OLLAMA_HOST"] == sup.upstream_host
            assert env["OLLAMA_KEEP_ALIVE"] == "7m"
            assert "HTTPS_PROXY" not in env
            assert child.cmdline()[-1] == "serve"
            # Its own session: a Ctrl-C in the terminal reaches only us.
            assert os.getsid(sup.process.pid) == sup.process.pid
            assert sup.task is not None
            assert not sup.task.done()
        finally:
            await sup.stop()

    asyncio.run(scenario())
    assert sup.process is not None
    assert sup.process.returncode == 0  # SIGTERM: Ollama's clean exit
    assert not listening(host, int(port))
    assert sup.task is not None
    assert sup.task.done()
    assert sup.restarts == 0
    assert sup.job.handle is None
    assert pids(fake_env) == [sup.process.pid]
    assert f"Listening on {sup.upstream_host}" in sup.log_path.read_text()


@pytest.mark.process
def test_readiness_is_asked_directly_whatever_proxy_the_environment_names(
    tmp_path: Path, fake_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy that does not exist: asked through it, Ollama would never seem ready.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    sup = supervisor(tmp_path)

    async def scenario() -> None:
        await sup.start(ready_within=20)
        await sup.stop()

    asyncio.run(scenario())
    assert sup.process is not None
    assert sup.process.returncode == 0


@pytest.mark.process
def test_an_ollama_that_exits_is_restarted_with_backoff_counted_and_not_after_stop(
    tmp_path: Path,
    fake_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("FAKE_OLLAMA_CRASH_AFTER", "0.3")
    seen: list[int] = []

    async def scenario() -> None:
        second_exit = asyncio.Event()

        def on_restart() -> None:
            seen.append(sup.restarts)
            if sup.restarts == 2:
                second_exit.set()

        sup.on_restart = on_restart
        await sup.start()
        try:
            await second_exit.wait()  # the restarted Ollama ran, and exited in its turn
        finally:
            await sup.stop()  # during the 2s backoff: no third start

    sup = supervisor(tmp_path)
    with caplog.at_level(logging.ERROR, logger="app.service.supervisor"):
        asyncio.run(scenario())
    started = pids(fake_env)
    assert len(started) == 2
    assert sup.restarts == 2
    assert seen == [1, 2]  # on_restart once per restart, after the count went up
    assert all(gone(pid) for pid in started)
    assert "ollama serve exited with status 2; restarting in 1s (restart 1; see " in caplog.text
    assert "ollama serve exited with status 2; restarting in 2s (restart 2; see " in caplog.text
    assert sup.log_path.read_text().count("Listening on") == 2


@pytest.mark.process
def test_an_ollama_that_exits_at_start_is_an_error_naming_its_log(tmp_path: Path) -> None:
    broken = script(tmp_path / "ollama", "#!/bin/sh\necho 'Error: no GPU for you' >&2\nexit 3\n")
    sup = supervisor(tmp_path, broken)
    with pytest.raises(RuntimeError) as raised:
        asyncio.run(sup.start())
    assert str(raised.value) == (f"ollama serve exited with status 3 at start; see {sup.log_path}")
    # Its output went to the log file, whose folder start() made.
    assert sup.log_path.read_text() == "Error: no GPU for you\n"
    assert sup.task is None  # nothing to watch: no restart loop behind a failed start


@pytest.mark.process
def test_an_ollama_that_never_answers_fails_the_start_and_stop_ends_it(tmp_path: Path) -> None:
    silent = script(tmp_path / "ollama", "#!/bin/sh\nexec sleep 600\n")
    sup = supervisor(tmp_path, silent)

    async def scenario() -> None:
        try:
            with pytest.raises(RuntimeError) as raised:
                await sup.start(ready_within=1)
            assert str(raised.value) == (
                f"ollama serve did not answer on {sup.upstream_host} within 1s; see {sup.log_path}"
            )
        finally:
            await sup.stop()

    asyncio.run(scenario())
    assert sup.process is not None
    assert sup.process.returncode == -signal.SIGTERM


@pytest.mark.process
def test_an_ollama_that_ignores_sigterm_is_killed_after_the_stop_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stubborn = script(
        tmp_path / "ollama",
        f"#!{sys.executable}\n"
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring SIGTERM', flush=True)\n"
        "time.sleep(600)\n",
    )
    sup = supervisor(tmp_path, stubborn, stop_timeout=0.5)
    with pytest.raises(RuntimeError):
        asyncio.run(sup.start(ready_within=0))
    until(lambda: "ignoring SIGTERM" in sup.log_path.read_text())
    with caplog.at_level(logging.WARNING, logger="app.service.supervisor"):
        asyncio.run(sup.stop())
    assert sup.process is not None
    assert sup.process.returncode == -signal.SIGKILL
    assert "ollama serve did not stop in 0s; killing it" in caplog.text


def test_stop_before_start_is_harmless(tmp_path: Path) -> None:
    sup = supervisor(tmp_path)
    asyncio.run(sup.stop())
    assert sup.stopping is True
    assert sup.process is None
    assert not sup.log_path.exists()


@pytest.mark.process
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_ollama_dies_with_what_started_it(tmp_path: Path, fake_env: Path) -> None:
    """PR_SET_PDEATHSIG fires when the thread that started the child ends: the signal a
    ``kill -9`` of the wrapper means for Ollama, here without killing the test process.
    Without it the child would serve on, and ``wait`` would not return."""
    sup = supervisor(tmp_path)
    host, port = sup.upstream_host.split(":")
    started: list[subprocess.Popen[bytes]] = []

    def spawn_and_end() -> None:
        process = sup._spawn()
        started.append(process)
        while process.poll() is None and not listening(host, int(port)):
            time.sleep(0.05)

    spawner = threading.Thread(target=spawn_and_end)
    spawner.start()
    spawner.join()
    (process,) = started
    assert process.wait() == 0  # it was serving: SIGTERM is Ollama's clean exit
    assert pids(fake_env) == [process.pid]
    assert not listening(host, int(port))


def test_the_readiness_probe_wants_a_200_from_api_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``answers``: True only for 200 to ``GET /api/version`` with our Host; False for another
    status, a refused connection, and a server that accepts and never answers (in time)."""
    seen: list[tuple[str, str]] = []

    def respond(
        method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str | None, bytes]:
        seen.append((path, headers["host"]))
        return (200 if path == "/api/version" else 404), "application/json", b"{}"

    monkeypatch.setattr(supervision, "PROBE_TIMEOUT", 0.3)
    with LocalHttpServer(respond) as ok, socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts (the kernel's backlog) and never answers
        address = ok.url.removeprefix("http://")
        assert asyncio.run(supervision.answers(address))
        assert seen == [("/api/version", address)]
        with LocalHttpServer(lambda *_: (503, None, b"loading")) as busy:
            assert not asyncio.run(supervision.answers(busy.url.removeprefix("http://")))
        assert not asyncio.run(supervision.answers(f"127.0.0.1:{free_port()}"))
        started = time.monotonic()
        assert not asyncio.run(supervision.answers(f"127.0.0.1:{silent.getsockname()[1]}"))
        assert time.monotonic() - started < 5

"""`ollama-metrics serve`, `run` and passthrough with a stand-in `ollama` on PATH."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.emulator import EmulatorServer
from tests.metrics_support import scrape, total
from tests.support import (
    SCRIPT,
    ProxyProcess,
    wait_until_listening,
    wrapper,
    wrapper_env,
)

pytestmark = pytest.mark.process


def ollama_pids(tmp_path: Path) -> list[int]:
    path = tmp_path / "ollama.pids"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def serve(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    extra = getattr(request, "param", {})
    env = wrapper_env(tmp_path, **extra)
    process = subprocess.Popen(
        [SCRIPT, "serve"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_listening(int(env["PROXY_PORT"]), process, timeout=60)  # type: ignore[arg-type]
        yield process, env
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_serve_runs_ollama_behind_the_proxy_and_measures_traffic(
    serve: tuple[subprocess.Popen[str], dict[str, str]], tmp_path: Path
) -> None:
    process, env = serve
    proxy = f"http://127.0.0.1:{env['PROXY_PORT']}"
    answer = httpx.post(
        proxy + "/api/generate", json={"model": "llama3.2", "prompt": "hi", "stream": False}
    )
    assert answer.status_code == 200
    # Ollama listens where the wrapper told it to, not on the 0.0.0.0 the shell said.
    upstream = env["OLLAMA_UPSTREAM"]
    assert httpx.get(upstream + "/api/version").status_code == 200
    samples = scrape(proxy)
    assert total(samples, "ollama_requests_total", endpoint="/api/generate", status="200") == 1
    body = answer.json()
    assert total(samples, "ollama_tokens_total") == body["prompt_eval_count"] + body["eval_count"]
    assert "Listening on 127.0.0.1" in (tmp_path / "ollama.log").read_text()
    pids = ollama_pids(tmp_path)
    assert len(pids) == 1
    assert alive(pids[0])
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == -signal.SIGTERM
    output = process.stdout.read() if process.stdout else ""
    assert "stopped ollama serve" in output
    assert not alive(pids[0]), "Ollama outlived the wrapper"


@pytest.mark.parametrize("serve", [{"FAKE_OLLAMA_CRASH_AFTER": "1.5"}], indirect=True)
def test_a_crashed_ollama_is_restarted_and_counted(
    serve: tuple[subprocess.Popen[str], dict[str, str]], tmp_path: Path
) -> None:
    process, env = serve
    proxy = f"http://127.0.0.1:{env['PROXY_PORT']}"
    deadline = time.monotonic() + 30
    while len(ollama_pids(tmp_path)) < 2:
        if time.monotonic() > deadline:
            pytest.fail(
                "Ollama was not restarted within 30 s\n" + _what_happened(process, tmp_path)
            )
        time.sleep(0.1)
    metrics = httpx.get(proxy + "/metrics").text
    restarts = [
        line for line in metrics.splitlines() if line.startswith("ollama_process_restarts_total")
    ]
    assert restarts
    assert float(restarts[0].split()[-1]) >= 1


def _what_happened(process: subprocess.Popen[str], tmp_path: Path) -> str:
    """The wrapper's output (it is stopped for it) and Ollama's log: for a failure's message."""
    process.kill()
    output = process.stdout.read() if process.stdout else ""
    log = tmp_path / "ollama.log"
    ollama = log.read_text(errors="replace") if log.exists() else "(no ollama.log)"
    return f"-- ollama-metrics serve:\n{output[-4000:]}\n-- ollama.log:\n{ollama[-4000:]}"


def test_sigint_stops_both_with_no_orphan(
    serve: tuple[subprocess.Popen[str], dict[str, str]], tmp_path: Path
) -> None:
    process, _ = serve
    pids = ollama_pids(tmp_path)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    assert pids
    assert not any(alive(pid) for pid in pids)


def test_ollama_dies_with_a_killed_wrapper(
    serve: tuple[subprocess.Popen[str], dict[str, str]], tmp_path: Path
) -> None:
    """SIGKILL leaves the wrapper no time to stop Ollama: the kernel's parent-death signal
    (set before Ollama's exec) does."""
    process, _ = serve
    [pid] = ollama_pids(tmp_path)
    process.kill()
    process.wait(timeout=30)
    deadline = time.monotonic() + 10
    while alive(pid):
        assert time.monotonic() < deadline, "Ollama outlived a killed wrapper"
        time.sleep(0.05)


def test_port_taken_by_ollama_is_explained(tmp_path: Path, emulator: EmulatorServer) -> None:
    env = wrapper_env(tmp_path, PROXY_PORT=str(emulator.port))
    done = wrapper(env, "serve")
    assert done.returncode == 1
    version = emulator.config.version
    expected = f"an Ollama server (version {version}) is already listening on {emulator.port}"
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert ollama_pids(tmp_path) == []


def test_port_taken_by_something_else_is_explained(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = wrapper_env(tmp_path, PROXY_PORT=str(taken.getsockname()[1]))
        done = wrapper(env, "serve")
    assert done.returncode == 1
    assert "is already in use by another program" in done.stderr


def test_serve_without_ollama_says_how_to_install_it(tmp_path: Path) -> None:
    env = wrapper_env(tmp_path, PATH=str(Path(sys.executable).parent) + os.pathsep + "/bin")
    done = wrapper(env, "serve")
    assert done.returncode == 1
    assert "Ollama is not installed" in done.stderr
    assert "proxy --upstream" in done.stderr


def test_passthrough_runs_ollama_commands_through_the_proxy(
    proxied: tuple[ProxyProcess, dict[str, str]],
) -> None:
    proxy, env = proxied
    listed = wrapper(env, "list")
    assert listed.returncode == 0, listed.stderr
    assert "llama3.2:latest" in listed.stdout
    missing = wrapper(env, "show", "no-such-model")
    assert missing.returncode == 1
    assert "not found" in missing.stderr
    unknown = wrapper(env, "frobnicate")
    assert unknown.returncode == 1
    metrics = httpx.get(proxy.url + "/metrics").text
    assert 'endpoint="/api/tags"' in metrics
    assert 'endpoint="/api/show"' in metrics


def test_run_one_shot_and_interactive(proxied: tuple[ProxyProcess, dict[str, str]]) -> None:
    proxy, env = proxied
    once = wrapper(env, "run", "llama3.2", "Why is the sky blue?")
    assert once.returncode == 0, once.stderr
    assert once.stdout.strip()
    chat = wrapper(env, "run", "llama3.2", input="hello there\nand again\n/bye\n")
    assert chat.returncode == 0, chat.stderr
    assert total(scrape(proxy.url), "ollama_requests_total", endpoint="/api/chat") == 3


def test_run_starts_the_stack_when_it_is_not_up(tmp_path: Path) -> None:
    env = wrapper_env(tmp_path)
    try:
        done = wrapper(env, "run", "llama3.2", "Hello", timeout=120)
        assert done.returncode == 0, done.stderr
        assert "started serve in the background" in done.stderr
        assert (
            httpx.get(f"http://127.0.0.1:{env['PROXY_PORT']}/test").json()["upstream_reachable"]
            is True
        )
    finally:
        for process in psutil.process_iter(["cmdline", "environ"]):
            try:
                if (
                    process.info["cmdline"]
                    and "serve" in process.info["cmdline"]
                    and (process.info["environ"] or {}).get("PROXY_PORT") == env["PROXY_PORT"]
                ):
                    process.terminate()
                    process.wait(30)
            except (psutil.Error, TypeError):
                continue
    assert not any(alive(pid) for pid in ollama_pids(tmp_path))

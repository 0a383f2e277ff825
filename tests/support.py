"""Test helpers: the real proxy as a separate process on a loopback port, the HTTP peers
tests stand up in a thread, Prometheus, and the sample records and rows of analytics."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import httpx
import pytest

from app.analytics.rows import to_row
from app.record import ExchangeRecord, new_record_id

ROOT = Path(__file__).resolve().parent.parent

# Request parts many tests send.
CHAT = [{"role": "user", "content": "Why is the sky blue?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


class ProxyProcess:
    """``ollama-metrics proxy`` started exactly as a user would, in its own process."""

    def __init__(
        self,
        upstream: str,
        *,
        env: Mapping[str, str] | None = None,
        args: list[str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstream = upstream
        # Each proxy keeps its analytics in its own temporary folder.
        self.workdir = Path(tempfile.mkdtemp(prefix="ollama-metrics-test-"))
        self.env = {
            **os.environ,
            "LOG_LEVEL": "warning",
            "ANALYTICS_DIR": str(self.workdir),
            **(env or {}),
        }
        self.args = args or []
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ProxyProcess:
        command = [sys.executable, "-m", "app", "proxy", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--upstream", self.upstream, *self.args]
        if self.log_path is None:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
            )
        else:
            # The child keeps its own copy of the descriptor; ours can close at once.
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
                )
        wait_until_listening(self.port, self.process)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> int:
        assert self.process is not None
        self.process.terminate()
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.cleanup()

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


ARTIFACTS = ROOT / "test-artifacts"


def logged_proxy(upstream: str, env: dict[str, str], log_name: str) -> ProxyProcess:
    """A started proxy for fault tests: no poller, no retention, its log kept in
    ``test-artifacts/<log_name>`` for after the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / log_name
    log_path.unlink(missing_ok=True)
    settings = {"PS_POLL_INTERVAL": "0", "ANALYTICS_RETENTION_DAYS": "0", **env}
    return ProxyProcess(upstream, env=settings, log_path=log_path).start()


def sample_record(**changes: object) -> ExchangeRecord:
    """A finished record as the proxy makes them, with a fresh id; ``changes`` override."""
    stamp = float(changes.pop("timestamp", time.time()))  # type: ignore[arg-type]
    base = ExchangeRecord(
        id=new_record_id(stamp),
        timestamp=stamp,
        method="POST",
        path="/api/chat",
        endpoint="/api/chat",
        operation="chat",
        model="llama3.2:latest",
        category="question",
        client="127.0.0.1",
        user_agent="t",
        status=200,
        streamed=True,
        prompt="Why?",
        request_body="{}",
        response="Because.",
        thinking="",
        duration_s=2.0,
        ttft_s=0.5,
        ollama_total_s=1.9,
        ollama_load_s=0.1,
        ollama_prompt_eval_s=0.2,
        ollama_eval_s=1.5,
        prompt_tokens=20,
        completion_tokens=30,
        node="gpu-1",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


class RecordingSink:
    """An ``app.exchange.Sink`` that keeps what it is told, in order."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, str, str]] = []  # (request id, endpoint, model)
        self.records: list[ExchangeRecord] = []

    def started(self, request_id: str, endpoint: str, model: str) -> None:
        self.starts.append((request_id, endpoint, model))

    def finished(self, record: ExchangeRecord) -> None:
        self.records.append(record)


def sample_row(**overrides: object) -> dict[str, object]:
    """The analytics row of ``sample_record()``; ``overrides`` replace row fields."""
    row: dict[str, object] = to_row(sample_record(), store_prompts=True, max_text_bytes=1 << 20)
    row.update(overrides)
    return row


# The SQL stores an analytics suite runs on (a parametrised fixture's ``params``): the
# PostgreSQL half is marked, so that ``-m "not postgres"`` keeps the SQLite half.
SQL_STORES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]

# Three days of analytics rows, one a minute and ending at NOW (``analytics_rows``).
NOW = time.time()
MODELS = ["llama3.2:latest", "qwen3:latest", "gemma:2b"]
NODES = ["node-a", "node-b"]  # a fleet of two machines on one store
WORDS = ["sky", "blue", "ocean", "python", "recipe", "river", "garden", "matrix"]


def analytics_row(i: int, rng: random.Random) -> dict[str, Any]:
    """The i-th of ``analytics_rows()``: random but reproducible values from ``rng``."""
    stamp = NOW - 3 * 86400 + i * 60  # one record a minute, ending now
    status = rng.choice([200] * 8 + [404, 500])
    return {
        "id": new_record_id(stamp),
        "timestamp": stamp,
        "method": "POST",
        "path": "/api/chat",
        "endpoint": rng.choice(["/api/chat", "/api/generate", "/v1/chat/completions"]),
        "model": rng.choice(MODELS),
        "category": rng.choice(["question", "code", "other"]),
        "client": rng.choice(["10.0.0.1", "10.0.0.2", "127.0.0.1"]),
        "user_agent": "test",
        "status": status,
        "streamed": bool(i % 2),
        "prompt": " ".join(rng.sample(WORDS, 3)) + f" number{i}",
        "request_body": "{}",
        "response": " ".join(rng.sample(WORDS, 2)),
        "thinking": "",
        "tool_calls": "",
        "error": "" if status == 200 else "boom",
        "upstream_error": None,
        "done_reason": "stop",
        "cancelled": False,
        "truncated": False,
        "duration_s": round(rng.uniform(0.05, 30), 3),
        "ttft_s": round(rng.uniform(0.01, 2), 3) if i % 2 else None,
        "ollama_total_s": None,
        "ollama_load_s": None,
        "ollama_prompt_eval_s": None,
        "ollama_eval_s": None,
        "prompt_tokens": rng.randint(5, 500),
        "completion_tokens": rng.randint(1, 900),
        "tokens_per_second": round(rng.uniform(5, 120), 2),
        "request_bytes": 100,
        "response_bytes": 1000,
        "client_app": rng.choice(["ollama-python", "openai-python", "curl"]),
        "queue_wait_s": round(rng.uniform(0, 3), 3) if i % 3 else None,
        "max_gap_s": round(rng.uniform(0.01, 1), 3) if i % 2 else None,
        "context_tokens": rng.choice([None, 4096, 8192]),
        "truncation": rng.choice([None, None, None, "prompt", "output"]),
        **_diagnostics(rng),
        "node": NODES[i % len(NODES)],
    }


def _diagnostics(rng: random.Random) -> dict[str, Any]:
    """Cold starts and placement for ``analytics_row``: one request in eight is cold."""
    cause = rng.choice([None] * 7 + ["first_load", "evicted", "options", "expired"])
    placement = rng.choice([None, "gpu", "gpu", "gpu", "mixed", "cpu"])
    share = {None: None, "gpu": 1.0, "cpu": 0.0}.get(placement, round(rng.uniform(0.1, 0.9), 2))
    return {
        "cold_cause": cause,
        "cold_detail": "num_ctx 8192 ≠ loaded 4096" if cause == "options" else None,
        "placement": placement,
        "gpu_share": share,
        "requests_ahead": rng.randint(0, 3),
        "diagnosis": f"cold start of a model ({cause})" if cause else None,
    }


@functools.cache
def analytics_rows() -> list[dict[str, Any]]:
    """The rows the ``loaded_store`` fixture holds (made once; do not change them)."""
    return [analytics_row(i, random.Random(i)) for i in range(3 * 24 * 60)]


def newest_first(**filters: Any) -> list[dict[str, Any]]:
    """The ``analytics_rows()`` whose fields equal ``filters``, newest first: what a search
    of the ``loaded_store`` must find."""

    def keep(row: dict[str, Any]) -> bool:
        return all(row[key] == value for key, value in filters.items())

    rows = (r for r in analytics_rows() if keep(r))
    return sorted(rows, key=lambda r: r["id"], reverse=True)


# (method, path, headers with lower-case names, body) -> (status, content type or None, body)
Respond = Callable[[str, str, dict[str, str], bytes], tuple[int, str | None, bytes]]


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps the test output free of access lines."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ThreadedHttpServer:
    """A ``ThreadingHTTPServer`` on a free loopback port with ``handler``, served from a
    thread while inside ``with``: the base of the HTTP peers that tests stand up themselves."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class LocalHttpServer(ThreadedHttpServer):
    """A threaded HTTP server on a free loopback port; ``respond`` answers every request.
    Stands in for the HTTP peers this project has no binary of (Loki, odd Ollamas)."""

    def __init__(self, respond: Respond) -> None:
        class Handler(QuietHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, content_type, answer = respond(self.command, self.path, headers, body)
                try:
                    self.send_response(status)
                    if content_type is not None:
                        self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except ConnectionError:  # the client gave up waiting (timeout tests)
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        super().__init__(Handler)


@contextlib.contextmanager
def prometheus_with(config: str, work: Path, *flags: str) -> Iterator[str]:
    """The Debian Prometheus running ``config`` (prometheus.yml text) with ``flags``, its data
    and log in ``work``; yields its URL."""
    binary = shutil.which("prometheus")
    assert binary, "the Debian package prometheus is not installed (scripts/setup.sh --dev)"
    path = work / "prometheus.yml"
    path.write_text(config)
    port = free_port()
    with open(work / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={path}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                *flags,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_listening(port, process, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def prometheus_scraping_nodes(
    targets: dict[str, str], work: Path
) -> contextlib.AbstractContextManager[str]:
    """The Debian Prometheus scraping every ``targets`` value (host:port) twice a second,
    each with its key as the `node` label (as a fleet's targets file gives it); yields its
    URL."""
    statics = "".join(
        f"      - targets: ['{target}']\n        labels: {{node: '{node}'}}\n"
        for node, target in targets.items()
    )
    return prometheus_with(
        "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n"
        "scrape_configs:\n"
        "  - job_name: ollama-metrics\n"
        f"    static_configs:\n{statics}",
        work,
    )


def running_prometheus(
    target_port: int, work: Path, *flags: str
) -> contextlib.AbstractContextManager[str]:
    """The Debian Prometheus scraping 127.0.0.1:``target_port`` every second; yields its URL."""
    config = (
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: ollama-metrics\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
    )
    return prometheus_with(config, work, *flags)


# -- the ollama-metrics command as a user runs it, beside the stand-in ollama ------------------

FAKE_OLLAMA_DIR = ROOT / "tests" / "fake_ollama"
SCRIPT = str(Path(sys.executable).parent / "ollama-metrics")


def wrapper_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a user whose PATH finds the stand-in ``ollama`` (tests/fake_ollama),
    with free ports for the proxy and its upstream; ``extra`` overrides."""
    env = {
        **os.environ,
        "PATH": f"{FAKE_OLLAMA_DIR}{os.pathsep}{os.environ['PATH']}",
        "FAKE_OLLAMA_PYTHON": sys.executable,
        "FAKE_OLLAMA_PIDFILE": str(tmp_path / "ollama.pids"),
        "ANALYTICS_DIR": str(tmp_path),
        "PROXY_PORT": str(free_port()),
        "OLLAMA_UPSTREAM": f"http://127.0.0.1:{free_port()}",
        # What a user's shell may carry: serve must override it for its child.
        "OLLAMA_HOST": "0.0.0.0",
        "PS_POLL_INTERVAL": "0",
        **extra,
    }
    env.pop("OLLAMA_BIN", None)
    return env


def wrapper(
    env: dict[str, str], *args: str, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``ollama-metrics ARGS`` as a user types it, output captured."""
    return subprocess.run(
        [SCRIPT, *args], env=env, input=input, capture_output=True, text=True, timeout=timeout
    )

"""Security as an attacker meets it: real proxy processes, real clients, raw sockets.

Bind address, API keys (``ollama`` and ``openai`` clients), the separate tokens of
``/metrics`` and ``/analytics/*``, no open relay, no SQL injection through the search, no
CORS widening, and no secret in logs, answers or stored analytics (see SECURITY.md).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.auth import derived_name
from app.config import Settings
from tests.conftest import PostgresDatabases
from tests.emulator import EmulatorServer
from tests.support import (
    CHAT,
    ROOT,
    SQL_STORES,
    LocalHttpServer,
    ProxyProcess,
    QuietHandler,
    ThreadedHttpServer,
    free_port,
    wait_until_listening,
)

pytestmark = pytest.mark.process

ALICE = "sk-alice-" + secrets.token_hex(12)
BARE = "sk-bare-" + secrets.token_hex(12)
METRICS_TOKEN = "tok-metrics-" + secrets.token_hex(12)
ANALYTICS_TOKEN = "tok-analytics-" + secrets.token_hex(12)
AS_ALICE = {"Authorization": f"Bearer {ALICE}"}
AS_ANALYST = {"Authorization": f"Bearer {ANALYTICS_TOKEN}"}
AS_SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}


# -- helpers ---------------------------------------------------------------------------------


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` as is and read the answer until the server closes (or 10 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
    return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def header_names(entry: dict[str, Any]) -> set[str]:
    return {name.lower() for name, _ in entry["headers"]}


def sample(metrics_text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


def failures(proxy: ProxyProcess) -> dict[str, float]:
    text = httpx.get(proxy.url + "/metrics", headers=AS_SCRAPER, timeout=10).text
    name = "ollama_proxy_auth_failures_total"
    return {r: sample(text, name, reason=r) for r in ("missing", "invalid")}


def poll(condition: Callable[[], Any], timeout: float = 40) -> Any:
    """``condition()`` once it is truthy; the last value when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def search(proxy: ProxyProcess, **params: Any) -> list[dict[str, Any]]:
    answer = httpx.get(
        proxy.url + "/analytics/search",
        params={"limit": 1000, **params},
        headers=AS_ANALYST,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json()["records"])


def jsonl_text(directory: Path) -> str:
    return "".join(
        gzip.decompress(path.read_bytes()).decode() for path in directory.glob("*.jsonl.gz")
    )


def tcp_listeners(port: int) -> set[str]:
    """The local addresses with a listening TCP socket on ``port`` (Linux /proc/net)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                local, state = row.split()[1], row.split()[3]
                address, _, hex_port = local.partition(":")
                if state != "0A" or int(hex_port, 16) != port:
                    continue
                if len(address) == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    found.add("ipv6:" + address)
    return found


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[EmulatorServer]:
    """An emulator of this module's own, so its request log holds only this module's."""
    with EmulatorServer() as server:
        yield server


@pytest.fixture(scope="module")
def keyed(upstream: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    log_path = tmp_path_factory.mktemp("keyed") / "proxy.log"
    env = {
        "PROXY_API_KEYS": f"alice:{ALICE}, {BARE}",
        "METRICS_TOKEN": METRICS_TOKEN,
        "ANALYTICS_TOKEN": ANALYTICS_TOKEN,
        "ANALYTICS_BACKEND": "sqlite,jsonl",
        "PS_POLL_INTERVAL": "0",
        "LOG_LEVEL": "debug",
    }
    with ProxyProcess(upstream.url, env=env, log_path=log_path) as process:
        process.log_path = log_path
        yield process


# -- bind ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "expected"), [(None, {"127.0.0.1"}), ("0.0.0.0", {"0.0.0.0"})])
def test_the_proxy_listens_on_loopback_unless_asked(
    upstream: EmulatorServer, monkeypatch: pytest.MonkeyPatch, host: str | None, expected: set[str]
) -> None:
    monkeypatch.delenv("PROXY_HOST", raising=False)
    monkeypatch.delenv("OLLAMA_METRICS_CONFIG", raising=False)
    assert Settings().proxy_host == "127.0.0.1"
    port = free_port()
    command = [sys.executable, "-m", "app", "proxy", "--port", str(port), "--upstream"]
    command += [upstream.url, *(["--host", host] if host else [])]
    env = {k: v for k, v in os.environ.items() if k not in ("PROXY_HOST", "OLLAMA_METRICS_CONFIG")}
    env |= {"ANALYTICS_BACKEND": "none", "PS_POLL_INTERVAL": "0"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_until_listening(port, process)
        assert tcp_listeners(port) == expected
    finally:
        process.terminate()
        process.wait(timeout=30)


# -- API keys --------------------------------------------------------------------------------


def test_requests_without_a_valid_key_are_refused_and_never_forwarded(
    upstream: EmulatorServer, keyed: ProxyProcess
) -> None:
    upstream.reset()
    before = failures(keyed)
    chat = {"model": "llama3.2", "messages": CHAT, "stream": False}
    attempts: list[tuple[str, str, dict[str, str], str]] = [
        ("POST", "/api/chat", {}, "missing"),
        ("POST", "/api/chat", {"Authorization": "Bearer sk-wrong"}, "invalid"),
        ("POST", "/api/chat", {"Authorization": f"Bearer {ALICE}x"}, "invalid"),
        ("POST", "/api/chat", {"Authorization": f"Basic {ALICE}"}, "invalid"),
        ("POST", "/api/chat", {"Authorization": f"Bearer {METRICS_TOKEN}"}, "invalid"),
        ("POST", "/api/chat", {"x-api-key": "sk-wrong"}, "invalid"),
        ("GET", "/api/tags", {"Authorization": f"Bearer {ANALYTICS_TOKEN}"}, "invalid"),
        ("POST", "/v1/chat/completions", {}, "missing"),
        ("GET", "/test", {}, "missing"),
    ]
    with httpx.Client(base_url=keyed.url, timeout=10) as client:
        for method, path, headers, _ in attempts:
            answer = client.request(method, path, json=chat, headers=headers)
            assert answer.status_code == 401, (path, headers, answer.text)
            assert answer.headers["www-authenticate"].startswith("Bearer")
            body = answer.json()
            if path.startswith("/v1/"):
                assert "API key" in body["error"]["message"]
            else:
                assert "API key" in body["error"]
    # The real clients see a 401 they understand.
    with ollama.Client(host=keyed.url) as anonymous, pytest.raises(ollama.ResponseError) as no:
        anonymous.chat(model="llama3.2", messages=CHAT)
    assert no.value.status_code == 401
    with (
        ollama.Client(host=keyed.url, headers={"Authorization": "Bearer sk-nope"}) as wrong,
        pytest.raises(ollama.ResponseError),
    ):
        list(wrong.chat(model="llama3.2", messages=CHAT, stream=True))
    with (
        openai.OpenAI(api_key="sk-nope", base_url=keyed.url + "/v1", max_retries=0) as oa,
        pytest.raises(openai.AuthenticationError),
    ):
        oa.models.list()
    assert upstream.requests() == []
    after = failures(keyed)
    expected_missing = sum(1 for *_, reason in attempts if reason == "missing") + 1
    expected_invalid = sum(1 for *_, reason in attempts if reason == "invalid") + 2
    assert after["missing"] - before["missing"] == expected_missing
    assert after["invalid"] - before["invalid"] == expected_invalid


def test_valid_keys_work_with_the_real_clients_and_only_their_names_are_kept(
    upstream: EmulatorServer, keyed: ProxyProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream.reset()
    marker = f"kiwi{secrets.token_hex(4)}"
    messages = [{"role": "user", "content": f"Tell me about {marker}"}]
    with ollama.Client(host=keyed.url, headers=AS_ALICE) as client:
        assert client.chat(model="llama3.2", messages=messages).message.content
        chunks = list(client.chat(model="llama3.2", messages=messages, stream=True))
    assert chunks[-1].done
    assert "".join(c.message.content or "" for c in chunks)
    # OLLAMA_API_KEY: the ollama client sends it as a Bearer token by itself.
    monkeypatch.setenv("OLLAMA_API_KEY", BARE)
    with ollama.Client(host=keyed.url) as by_env:
        assert by_env.chat(model="llama3.2", messages=messages).message.content
    monkeypatch.delenv("OLLAMA_API_KEY")
    with openai.OpenAI(api_key=ALICE, base_url=keyed.url + "/v1", max_retries=0) as oa:
        done = oa.chat.completions.create(model="llama3.2", messages=messages)  # type: ignore[arg-type]
        assert done.choices[0].message.content
        streamed = oa.chat.completions.create(
            model="llama3.2",
            messages=messages,  # type: ignore[arg-type]
            stream=True,
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    check = httpx.get(keyed.url + "/test", headers=AS_ALICE, timeout=10)
    assert check.status_code == 200
    assert check.json()["upstream_reachable"] is True

    # Ollama never saw our credential, and saw every request.
    seen = [e for e in upstream.requests() if e["path"] != "/api/version"]
    assert [e["path"] for e in seen] == ["/api/chat"] * 3 + ["/v1/chat/completions"] * 2
    for entry in seen:
        assert not header_names(entry) & {"authorization", "x-api-key"}

    alice = poll(
        lambda: len(found := search(keyed, key="alice", prompt_search=marker)) >= 4 and found
    )
    assert len(alice) == 4
    assert {r["api_key"] for r in alice} == {"alice"}
    bare = search(keyed, key=derived_name(BARE), prompt_search=marker)
    assert len(bare) == 1
    assert bare[0]["api_key"] == derived_name(BARE)
    assert search(keyed, key="nobody", prompt_search=marker) == []
    full = httpx.get(
        keyed.url + f"/analytics/records/{alice[0]['id']}", headers=AS_ANALYST, timeout=10
    )
    assert full.json()["api_key"] == "alice"

    # The key strings are nowhere: not in the SQLite files, the JSONL files, the log, or any
    # /analytics answer.
    assert poll(lambda: marker in jsonl_text(keyed.workdir))
    assert '"api_key":"alice"' in jsonl_text(keyed.workdir)
    stored = b"".join(p.read_bytes() for p in keyed.workdir.glob("analytics.db*"))
    assert marker.encode() in stored
    answers = full.text + json.dumps(alice) + json.dumps(bare)
    answers += httpx.get(keyed.url + "/analytics/stats", headers=AS_ANALYST, timeout=10).text
    assert keyed.log_path is not None
    log_text = keyed.log_path.read_text()
    assert "/api/chat" in log_text  # the access log is there (LOG_LEVEL=debug)
    for key in (ALICE, BARE):
        assert key.encode() not in stored
        assert key not in jsonl_text(keyed.workdir)
        assert key not in log_text
        assert key not in answers


def test_authorization_passes_untouched_without_keys(upstream: EmulatorServer) -> None:
    """No keys configured: the proxy is transparent and Ollama gets the client's header."""
    env = {"PS_POLL_INTERVAL": "0", "ANALYTICS_BACKEND": "none"}
    with ProxyProcess(upstream.url, env=env) as proxy:
        upstream.reset()
        answer = httpx.get(proxy.url + "/api/tags", headers={"Authorization": "Bearer sk-theirs"})
        assert answer.status_code == 200
    (entry,) = upstream.requests()
    assert ["Authorization", "Bearer sk-theirs"] in [[n.title(), v] for n, v in entry["headers"]]


def test_the_keys_file_is_read_again_when_it_changes(
    upstream: EmulatorServer, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# who may use Ollama\nalice sk-file-a\n")
    env = {"PROXY_API_KEYS_FILE": str(keys), "PS_POLL_INTERVAL": "0", "ANALYTICS_BACKEND": "none"}
    with ProxyProcess(upstream.url, env=env) as proxy, proxy.client() as client:
        assert client.get("/api/tags", headers={"Authorization": "Bearer sk-file-a"}).is_success
        assert client.get("/api/tags", headers={"x-api-key": "sk-file-a"}).is_success
        keys.write_text("bob: sk-file-b\n")

        def swapped() -> bool:
            b = client.get("/api/tags", headers={"Authorization": "Bearer sk-file-b"})
            a = client.get("/api/tags", headers={"Authorization": "Bearer sk-file-a"})
            return b.status_code == 200 and a.status_code == 401

        assert poll(swapped, timeout=15)


def test_a_malformed_key_list_stops_the_start_without_showing_the_key(
    upstream: EmulatorServer,
) -> None:
    env = {**os.environ, "PROXY_API_KEYS": f"alice:{ALICE},bob:{ALICE}"}
    started = subprocess.run(
        [sys.executable, "-m", "app", "proxy", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2
    assert "'alice' and 'bob' are the same key" in started.stderr
    assert ALICE not in started.stderr + started.stdout


def test_metrics_and_analytics_are_guarded_separately(keyed: ProxyProcess) -> None:
    cases = [
        ("/metrics", {}, 401),
        ("/metrics", AS_ANALYST, 401),
        ("/metrics", AS_ALICE, 401),
        ("/metrics", {"Authorization": f"Bearer {METRICS_TOKEN}x"}, 401),
        ("/metrics", AS_SCRAPER, 200),
        ("/analytics/stats", {}, 401),
        ("/analytics/stats", AS_SCRAPER, 401),
        ("/analytics/stats", AS_ALICE, 401),
        ("/analytics/search", {"Authorization": ANALYTICS_TOKEN}, 401),
        ("/analytics/stats", AS_ANALYST, 200),
        ("/api/tags", AS_SCRAPER, 401),
        ("/api/tags", AS_ANALYST, 401),
        ("/api/tags", AS_ALICE, 200),
        ("/test", AS_ALICE, 200),
        ("/openapi.json", {}, 200),  # describes the endpoints, holds no data
    ]
    with keyed.client() as client:
        for path, headers, expected in cases:
            answer = client.get(path, headers=headers)
            assert answer.status_code == expected, (path, headers, answer.text)
            if expected == 401:
                assert answer.headers["www-authenticate"].startswith("Bearer")


# -- no open relay ---------------------------------------------------------------------------


class EvilServer:
    """A TCP listener that counts every connection it gets: the proxy must make none."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def __enter__(self) -> EvilServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def relay(upstream: EmulatorServer) -> Iterator[ProxyProcess]:
    env = {"PS_POLL_INTERVAL": "0", "ANALYTICS_BACKEND": "none"}
    with ProxyProcess(upstream.url, env=env) as proxy:
        yield proxy


def test_no_request_target_reaches_another_host(
    upstream: EmulatorServer, relay: ProxyProcess
) -> None:
    with EvilServer() as evil:
        there = f"127.0.0.1:{evil.port}".encode()
        targets = [
            b"GET http://" + there + b"/api/tags HTTP/1.1\r\nHost: " + there,
            b"GET http://" + there + b"/../api/tags HTTP/1.1\r\nHost: " + there,
            b"GET /api/tags HTTP/1.1\r\nHost: " + there,
            b"GET /api/tags HTTP/1.1\r\nHost: evil",
            b"GET /api/tags HTTP/1.1\r\nHost: evil\r\nHost: " + there,
            b"CONNECT " + there + b" HTTP/1.1\r\nHost: " + there,
            b"GET //" + there + b"/api/tags HTTP/1.1\r\nHost: x",
            b"GET /../api/tags HTTP/1.1\r\nHost: x",
            b"GET /api/%2e%2e/api/tags HTTP/1.1\r\nHost: x",
            b"GET /%2E%2E/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x",
            b"GET /api/..%2f..%2fetc HTTP/1.1\r\nHost: x",
            b"GET @" + there + b"/api/tags HTTP/1.1\r\nHost: x",
        ]
        for head in targets:
            request = head + b"\r\nConnection: close\r\n\r\n"
            upstream.reset()
            direct = raw_exchange(upstream.port, request)
            direct_seen = [(e["method"], e["path"], e["query"]) for e in upstream.requests()]
            upstream.reset()
            proxied = raw_exchange(relay.port, request)
            entries = upstream.requests()
            # Ollama sees the path exactly as it would directly, and only at its own address.
            assert [(e["method"], e["path"], e["query"]) for e in entries] == direct_seen, head
            assert status_of(proxied) == status_of(direct), (head, proxied[:200], direct[:200])
            for entry in entries:
                hosts = [v for n, v in entry["headers"] if n.lower() == "host"]
                assert hosts == [f"127.0.0.1:{upstream.port}"]
        assert evil.connections == 0


def test_dot_segments_cannot_leave_a_base_path(upstream: EmulatorServer) -> None:
    """Under a gateway's base path a normalising gateway would resolve /../ out of it."""
    env = {"PS_POLL_INTERVAL": "0", "ANALYTICS_BACKEND": "none"}
    with ProxyProcess(upstream.url + "/ollama", env=env) as proxy:
        upstream.reset()
        for target in (b"/../admin", b"/%2e%2e/admin", b"/api/..%2F..%2Fadmin", b"/.%2E/x"):
            answer = raw_exchange(
                proxy.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert status_of(answer) == 400, (target, answer)
            assert b"segments" in answer
        assert upstream.requests() == []
        # An ordinary path, dots in names included, goes on under the base path.
        httpx.get(proxy.url + "/v1/models/llama3.2", timeout=10)
        assert [e["path"] for e in upstream.requests()] == ["/ollama/v1/models/llama3.2"]


# -- SQL injection ---------------------------------------------------------------------------

HOSTILE = [
    "' OR '1'='1",
    "x'; DROP TABLE requests; --",
    '" OR ""="',
    "1) OR (1=1",
    "-- comment",
    "/* */ UNION SELECT * FROM requests",
    "%",
    "_",
    "%_%",
    "\\",
    "\\'",
    "*",
    "NEAR(a b) OR x:*",
    '"unbalanced',
    "é😀ß\u202e",
    "a\x00b",
    "\x00",
    "llama3.2:latest' --",
    "alice' OR api_key IS NOT NULL --",
]
PARAMETERS = [
    "model",
    "endpoint",
    "category",
    "key",
    "prompt_search",
    "status",
    "start_time",
    "end_time",
    "min_duration",
    "limit",
    "cursor",
]


@pytest.fixture(scope="module", params=SQL_STORES)
def seeded(
    request: pytest.FixtureRequest, upstream: EmulatorServer, postgres: PostgresDatabases
) -> Iterator[tuple[ProxyProcess, set[str], str | None]]:
    env = {
        "PROXY_API_KEYS": f"alice:{ALICE}",
        "ANALYTICS_TOKEN": ANALYTICS_TOKEN,
        "ANALYTICS_BACKEND": request.param,
        "PS_POLL_INTERVAL": "0",
    }
    database = None
    if request.param == "postgresql":
        database = env["ANALYTICS_DATABASE_URL"] = postgres.create()
    with ProxyProcess(upstream.url, env=env) as proxy:
        with proxy.client(headers=AS_ALICE) as client:
            for word in ("alpha", "beta", "gamma"):
                body = {"model": "llama3.2", "prompt": f"{word} 1 OR x", "stream": False}
                assert client.post("/api/generate", json=body).status_code == 200
        rows = poll(lambda: len(found := search(proxy)) >= 3 and found)
        assert len(rows) == 3
        yield proxy, {r["id"] for r in rows}, database


def stored_count(proxy: ProxyProcess, database: str | None) -> int:
    if database is None:
        with sqlite3.connect(proxy.workdir / "analytics.db") as db:
            return int(db.execute("SELECT count(*) FROM requests").fetchone()[0])
    with psycopg.connect(database) as db:
        row = db.execute("SELECT count(*) FROM requests").fetchone()
        assert row is not None
        return int(row[0])


@pytest.mark.parametrize("parameter", PARAMETERS)
def test_hostile_search_parameters_cannot_inject_sql(
    seeded: tuple[ProxyProcess, set[str], str | None], parameter: str
) -> None:
    proxy, ids, database = seeded
    with httpx.Client(base_url=proxy.url, headers=AS_ANALYST, timeout=30) as client:
        for hostile in HOSTILE:
            answer = client.get("/analytics/search", params={parameter: hostile})
            assert answer.status_code in (200, 422), (parameter, hostile, answer.text)
            if answer.status_code == 422:
                assert answer.json()["detail"], (parameter, hostile)
                continue
            found = {r["id"] for r in answer.json()["records"]}
            assert found <= ids, (parameter, hostile)
            if parameter != "prompt_search":
                # An exact filter that matches nothing real returns nothing.
                assert found == set(), (parameter, hostile)
            else:
                for record in answer.json()["records"]:
                    text = (record["prompt"] + " " + record["response"]).lower()
                    words = [w for w in hostile.lower().split() if w.isalnum()]
                    assert all(w in text for w in words), (hostile, record["prompt"])
        for hostile in HOSTILE[:6]:
            answer = client.get("/analytics/records/" + httpx.URL(hostile).raw_path.decode())
            assert answer.status_code in (404, 422), answer.text
    # The table is intact: the same rows, and the search still finds all of them.
    assert stored_count(proxy, database) == len(ids)
    assert {r["id"] for r in search(proxy)} == ids
    assert {r["id"] for r in search(proxy, key="alice")} == ids
    assert {r["id"] for r in search(proxy, prompt_search="alpha")} <= ids
    assert len(search(proxy, prompt_search="alpha")) == 1


# -- CORS ------------------------------------------------------------------------------------

ALLOWED_ORIGIN = "http://localhost:3000"


class CorsUpstream(ThreadedHttpServer):
    """Answers CORS the way Ollama does (gin-contrib/cors, see shared/ollama-api.md §6): an
    allowed origin gets Access-Control-Allow-Origin, any other Origin gets 403 and no body,
    a preflight gets 204 and the allowed methods and headers."""

    def __init__(self) -> None:
        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                origin = self.headers.get("Origin")
                if origin is not None and origin != ALLOWED_ORIGIN:
                    self.send_response(403)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                preflight = self.command == "OPTIONS" and origin is not None
                body = b"" if preflight else b'{"models":[]}'
                self.send_response(204 if preflight else 200)
                if origin is not None:
                    self.send_header("Access-Control-Allow-Origin", origin)
                    self.send_header("Vary", "Origin")
                if preflight:
                    self.send_header("Access-Control-Allow-Methods", "GET,POST,OPTIONS")
                    self.send_header("Access-Control-Allow-Headers", "Authorization,Content-Type")
                    self.send_header("Access-Control-Max-Age", "43200")
                else:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_OPTIONS = _answer

        super().__init__(Handler)


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {
        name: value
        for name, value in response.headers.items()
        if name.startswith("access-control-") or name == "vary"
    }


def test_cors_is_exactly_what_ollama_answers() -> None:
    env = {"PS_POLL_INTERVAL": "0", "ANALYTICS_BACKEND": "none"}
    preflight = {"Access-Control-Request-Method": "POST"}
    cases = [
        ("OPTIONS", "/api/chat", {"Origin": ALLOWED_ORIGIN, **preflight}),
        ("OPTIONS", "/api/chat", {"Origin": "http://evil.example", **preflight}),
        ("GET", "/api/tags", {"Origin": ALLOWED_ORIGIN}),
        ("GET", "/api/tags", {"Origin": "http://evil.example"}),
        ("POST", "/v1/chat/completions", {"Origin": "null"}),
        ("GET", "/api/tags", {}),
    ]
    with CorsUpstream() as cors, ProxyProcess(cors.url, env=env) as proxy:
        for method, path, headers in cases:
            direct = httpx.request(method, cors.url + path, headers=headers, timeout=10)
            proxied = httpx.request(method, proxy.url + path, headers=headers, timeout=10)
            assert proxied.status_code == direct.status_code, (method, path, headers)
            assert cors_headers(proxied) == cors_headers(direct), (method, path, headers)
            assert proxied.content == direct.content
        # The proxy's own endpoints allow no cross-origin reads at all.
        for path in ("/metrics", "/test", "/openapi.json", "/docs", "/analytics/stats"):
            for method, headers in (
                ("GET", {"Origin": "http://evil.example"}),
                ("OPTIONS", {"Origin": "http://evil.example", **preflight}),
            ):
                answer = httpx.request(method, proxy.url + path, headers=headers, timeout=10)
                assert not cors_headers(answer).keys() - {"vary"}, (method, path)
    # With API keys a preflight (which browsers send without credentials) still gets
    # Ollama's answer; the request itself needs the key.
    keyed_env = {**env, "PROXY_API_KEYS": f"alice:{ALICE}"}
    with CorsUpstream() as cors, ProxyProcess(cors.url, env=keyed_env) as proxy:
        for origin in (ALLOWED_ORIGIN, "http://evil.example"):
            headers = {"Origin": origin, **preflight}
            direct = httpx.options(cors.url + "/api/chat", headers=headers, timeout=10)
            proxied = httpx.options(proxy.url + "/api/chat", headers=headers, timeout=10)
            assert proxied.status_code == direct.status_code
            assert cors_headers(proxied) == cors_headers(direct)
        plain_options = httpx.options(proxy.url + "/api/chat", timeout=10)
        assert plain_options.status_code == 401
        without_key = httpx.get(proxy.url + "/api/tags", headers={"Origin": ALLOWED_ORIGIN})
        assert without_key.status_code == 401
        assert not cors_headers(without_key)
        with_key = httpx.get(
            proxy.url + "/api/tags", headers={"Origin": ALLOWED_ORIGIN, **AS_ALICE}, timeout=10
        )
        assert with_key.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


# -- secrets ---------------------------------------------------------------------------------


@pytest.mark.postgres
def test_no_secret_shows_in_logs_answers_or_stored_analytics(
    upstream: EmulatorServer, postgres: PostgresDatabases, tmp_path: Path
) -> None:
    db_password = "pw-db-" + secrets.token_hex(8)
    loki_password = "pw-loki-" + secrets.token_hex(8)
    upstream_password = "pw-up-" + secrets.token_hex(8)
    database = postgres.create().replace("postgres@", f"postgres:{db_password}@", 1)
    pushes: list[bytes] = []

    def loki(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        pushes.append(body)
        # The first push fails: the writer logs the failure and retries.
        return (500, "text/plain", b"ingester busy") if len(pushes) == 1 else (204, None, b"")

    upstream_url = upstream.url.replace("http://", f"http://up:{upstream_password}@")
    basic = base64.b64encode(f"up:{upstream_password}".encode()).decode()
    secret_values = [ALICE, METRICS_TOKEN, ANALYTICS_TOKEN, db_password, loki_password]
    secret_values += [upstream_password, basic]
    log_path = tmp_path / "proxy.log"
    with LocalHttpServer(loki) as loki_server:
        env = {
            "PROXY_API_KEYS": f"alice:{ALICE}",
            "METRICS_TOKEN": METRICS_TOKEN,
            "ANALYTICS_TOKEN": ANALYTICS_TOKEN,
            "ANALYTICS_BACKEND": "postgresql,jsonl,loki",
            "ANALYTICS_DATABASE_URL": database,
            "LOKI_URL": loki_server.url.replace("http://", f"http://loki:{loki_password}@"),
            "LOG_LEVEL": "debug",
            "PS_POLL_INTERVAL": "1",
        }
        answers: list[str] = []
        proxy = ProxyProcess(upstream_url, env=env, log_path=log_path).start()
        try:
            with proxy.client() as client:
                calls: list[tuple[str, str, dict[str, str], Any]] = [
                    ("POST", "/api/chat", AS_ALICE, {"model": "llama3.2", "messages": CHAT}),
                    ("POST", "/api/chat", AS_ALICE, {"model": "no-such-model", "messages": CHAT}),
                    ("POST", "/v1/chat/completions", AS_ALICE, {"model": "nope", "messages": []}),
                    ("POST", "/api/generate", AS_ALICE, "{not json"),
                    ("POST", "/api/chat", {"Authorization": f"Bearer {ALICE}0"}, {}),
                    ("GET", "/api/tags", AS_SCRAPER, None),
                    ("GET", "/metrics", AS_ANALYST, None),
                    ("GET", "/metrics", AS_SCRAPER, None),
                    ("GET", "/analytics/stats", AS_SCRAPER, None),
                    ("GET", "/analytics/records/not-an-id", AS_ANALYST, None),
                    ("GET", "/test", AS_ALICE, None),
                    ("GET", "/test", {}, None),
                ]
                for method, path, headers, body in calls:
                    content = body if isinstance(body, str) else None
                    payload = None if isinstance(body, str) or body is None else body
                    answer = client.request(
                        method, path, headers=headers, json=payload, content=content
                    )
                    answers.append(answer.text + json.dumps(dict(answer.headers)))
                assert client.get("/test", headers=AS_ALICE).json()["upstream_reachable"]
                records = poll(lambda: len(found := search(proxy)) >= 4 and found)
                assert len(records) >= 4
                answers.append(json.dumps(records))
                for record in records:
                    one = client.get(f"/analytics/records/{record['id']}", headers=AS_ANALYST)
                    answers.append(one.text)
                answers.append(client.get("/analytics/stats", headers=AS_ANALYST).text)
            assert poll(lambda: len(pushes) >= 2)
        finally:
            proxy.stop()
    with psycopg.connect(database) as db:
        stored = json.dumps(db.execute("SELECT * FROM requests").fetchall(), default=str)
    assert "llama3.2" in stored
    jsonl = jsonl_text(proxy.workdir)
    proxy.cleanup()
    log_text = log_path.read_text()
    assert "writing to loki failed" in log_text  # the failing path was logged
    assert "DEBUG" in log_text
    loki_bodies = b"".join(pushes).decode()
    for secret in secret_values:
        assert secret not in log_text, secret
        assert secret not in stored, secret
        assert secret not in jsonl, secret
        assert secret not in loki_bodies, secret
        for answer in answers:
            assert secret not in answer, secret

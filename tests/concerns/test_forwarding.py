"""What reaches Ollama through the proxy, and what happens when Ollama fails."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from collections.abc import Iterator

import pytest

from tests.emulator import EmulatorServer
from tests.support import ProxyProcess

pytestmark = pytest.mark.process


def last_request(emulator: EmulatorServer, path: str | None = None) -> dict[str, object]:
    log = emulator.requests()
    if path is not None:
        # Other proxies of the session poll /api/ps on this emulator every few seconds.
        log = [entry for entry in log if entry["path"] == path]
    assert log, "the emulator saw no request"
    return dict(log[-1])


def test_request_reaches_ollama_exactly(emulator: EmulatorServer, proxy: ProxyProcess) -> None:
    body = json.dumps({"model": "llama3.2", "prompt": "exact é <&>", "stream": False}).encode()
    headers = {
        "User-Agent": "ollama-python/0.6.3 (x86_64 linux) Python/3.11.7",
        "Authorization": "Bearer sk-client",
        "X-Custom": "kept",
        "Content-Type": "application/json",
    }
    with proxy.client() as client:
        answer = client.post("/api/generate?x=a%20b&y", content=body, headers=headers)
    assert answer.status_code == 200
    seen = last_request(emulator)
    assert seen["method"] == "POST"
    assert seen["path"] == "/api/generate"
    assert seen["query"] == "x=a%20b&y"
    assert seen["body_len"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    got = {}
    for name, value in seen["headers"]:
        got.setdefault(name.lower(), []).append(value)
    assert got["host"] == [f"127.0.0.1:{emulator.port}"]
    assert got["user-agent"] == [headers["User-Agent"]]
    assert got["authorization"] == ["Bearer sk-client"]
    assert got["x-custom"] == ["kept"]
    assert got["content-type"] == ["application/json"]
    assert got["content-length"] == [str(len(body))]
    # Nothing the client did not send: no invented Accept-Encoding, no proxy headers.
    sent_by_httpx = {"accept", "accept-encoding", "connection"}
    assert set(got) <= {k.lower() for k in headers} | {"host", "content-length"} | sent_by_httpx
    assert "connection" not in got


def test_absolute_form_target_cannot_reach_another_host(
    emulator: EmulatorServer, proxy: ProxyProcess
) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(
            b"GET http://example.invalid/api/version HTTP/1.1\r\nHost: example.invalid\r\n"
            b"Connection: close\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    assert b'"version"' in answer
    assert last_request(emulator)["path"] == "/api/version"


@pytest.fixture
def lone_emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


def test_upstream_down_gives_502_and_recovery(lone_emulator: EmulatorServer) -> None:
    with ProxyProcess(lone_emulator.url) as proxy, proxy.client() as client:
        assert client.get("/api/tags").status_code == 200
        lone_emulator.stop()
        native = client.post("/api/chat", json={"model": "llama3.2", "messages": []})
        assert native.status_code == 502
        assert native.headers["content-type"] == "application/json; charset=utf-8"
        assert "cannot connect to Ollama" in native.json()["error"]
        openai = client.post("/v1/chat/completions", json={"model": "llama3.2", "messages": []})
        assert openai.status_code == 502
        assert openai.json()["error"]["type"] == "api_error"
        assert "cannot connect" in openai.json()["error"]["message"]
        metrics = client.get("/metrics").text
        assert 'ollama_upstream_errors_total{reason="connect"} 2.0' in metrics
        assert "ollama_upstream_up 0.0" in metrics
        check = client.get("/test").json()
        assert check["upstream_reachable"] is False
        lone_emulator.start()
        assert client.get("/api/tags").status_code == 200
        assert "ollama_upstream_up 1.0" in client.get("/metrics").text
        check = client.get("/test").json()
        assert check["upstream_reachable"] is True
        assert check["upstream_version"] == lone_emulator.config.version
        assert check["round_trip_ms"] > 0


def test_reset_mid_stream_ends_with_an_error_line(
    emulator: EmulatorServer, proxy: ProxyProcess
) -> None:
    with proxy.client() as client:
        answer = client.post(
            "/api/generate",
            json={"model": "llama3.2", "prompt": "x"},
            headers={"X-Emulator-Fault": "reset-after-3"},
        )
        assert answer.status_code == 200
        lines = [json.loads(line) for line in answer.text.splitlines()]
        assert [line["response"] for line in lines[:3]] == [
            line["response"] for line in lines[:3] if "response" in line
        ]
        assert len(lines) == 4
        assert "error" in lines[-1]
        assert "closed the connection" in lines[-1]["error"] or "broke off" in lines[-1]["error"]
        # The proxy goes on serving.
        assert client.get("/api/version").status_code == 200


def test_credentials_in_the_upstream_url_are_never_shown(emulator: EmulatorServer) -> None:
    secret_url = emulator.url.replace("http://", "http://user:s3cret@")
    with ProxyProcess(secret_url) as proxy, proxy.client() as client:
        check = client.get("/test")
        assert check.json()["upstream_reachable"] is True
        assert "s3cret" not in check.text
        assert client.get("/api/tags", headers={"Authorization": "Bearer mine"}).status_code == 200
    headers = dict((k.lower(), v) for k, v in last_request(emulator, "/api/tags")["headers"])
    assert headers["authorization"] == "Basic " + base64.b64encode(b"user:s3cret").decode()

"""Through the proxy, every route answers exactly as Ollama (the emulator) answers directly."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from tests.emulator import EmulatorServer
from tests.support import CHAT, TOOLS, ProxyProcess

# Values that differ between two identical requests to Ollama itself: timestamps, ids and
# total_duration (measured, in Ollama as in the emulator). Everything else must be
# byte-identical.
_VOLATILE = [
    (re.compile(rb'"(created_at|expires_at)":"[^"]*"'), rb'"\1":"T"'),
    (re.compile(rb'"total_duration":\d+'), rb'"total_duration":0'),
    (re.compile(rb'"created":\d+'), rb'"created":0'),
    (re.compile(rb'"created_at":\d+'), rb'"created_at":0'),
    (re.compile(rb'"id":"(chatcmpl|cmpl|msg|resp|call|fc|rs)[-_][A-Za-z0-9]+"'), rb'"id":"\1-X"'),
    (re.compile(rb'"(request_id|item_id)":"[a-z]+_[A-Za-z0-9]+"'), rb'"\1":"X"'),
]


def normalise(body: bytes) -> bytes:
    for pattern, replacement in _VOLATILE:
        body = pattern.sub(replacement, body)
    return body


def comparable_headers(response: httpx.Response) -> list[tuple[str, str]]:
    # content-length varies with the volatile values; it is checked against the body instead.
    skip = {"date", "transfer-encoding", "connection", "keep-alive", "x-accel-buffering"}
    skip.add("content-length")
    return sorted(
        (k.lower(), v) for k, v in response.headers.multi_items() if k.lower() not in skip
    )


# (method, path, JSON body or raw bytes or None, extra headers)
CASES: list[tuple[str, str, Any, dict[str, str]]] = [
    ("GET", "/", None, {}),
    ("HEAD", "/", None, {}),
    ("GET", "/api/version", None, {}),
    ("HEAD", "/api/version", None, {}),
    ("GET", "/api/tags", None, {}),
    ("HEAD", "/api/tags", None, {}),
    ("GET", "/api/tags/", None, {}),
    ("PUT", "/api/tags", None, {}),
    ("GET", "/no/such/path?x=1", None, {}),
    ("POST", "/api/show", {"model": "llama3.2"}, {}),
    ("POST", "/api/show", {"model": "missing-model"}, {}),
    ("POST", "/api/generate", {"model": "llama3.2", "prompt": "Why is the sky blue?"}, {}),
    ("POST", "/api/generate", {"model": "llama3.2", "prompt": "Hi", "stream": False}, {}),
    (
        "POST",
        "/api/generate",
        {"model": "llama3.2", "prompt": "Count", "options": {"num_predict": 5}, "raw": True},
        {},
    ),
    ("POST", "/api/generate", {"model": "llama3.2"}, {}),
    ("POST", "/api/generate", {"model": "llama3.2", "keep_alive": 0}, {}),
    ("POST", "/api/generate", {"model": "missing-model", "prompt": "x"}, {}),
    ("POST", "/api/generate", b"", {}),
    ("POST", "/api/generate", b"{not json", {}),
    (
        "POST",
        "/api/generate",
        {"model": "llama3.2", "prompt": "x", "options": {"emulator_fail_after": 3}},
        {},
    ),
    (
        "POST",
        "/api/generate",
        {"model": "llama3.2", "prompt": "x"},
        {"X-Emulator-Fault": "status-500"},
    ),
    ("POST", "/api/chat", {"model": "llama3.2", "messages": CHAT}, {}),
    ("POST", "/api/chat", {"model": "llama3.2", "messages": CHAT, "stream": False}, {}),
    ("POST", "/api/chat", {"model": "qwen3", "messages": CHAT, "think": True}, {}),
    ("POST", "/api/chat", {"model": "llama3.2", "messages": CHAT, "tools": TOOLS}, {}),
    ("POST", "/api/chat", {"model": "gemma:2b", "messages": CHAT, "tools": TOOLS}, {}),
    ("POST", "/api/chat", {"model": "llama3.2", "messages": []}, {}),
    ("POST", "/api/embed", {"model": "nomic-embed-text", "input": ["a b", "c"]}, {}),
    ("POST", "/api/embed", {"model": "nomic-embed-text", "input": [1, 2]}, {}),
    ("POST", "/api/embeddings", {"model": "nomic-embed-text", "prompt": "hello"}, {}),
    ("POST", "/api/embeddings", {"model": "missing-model", "prompt": "hello"}, {}),
    ("POST", "/api/pull", {"model": "llama3.2"}, {}),
    ("POST", "/api/pull", {"model": "llama3.2", "stream": False}, {}),
    ("POST", "/api/pull", {"model": "no-such-model-anywhere"}, {}),
    ("POST", "/api/push", {"model": "llama3.2"}, {}),
    ("POST", "/api/create", {"model": "mine", "from": "llama3.2", "system": "be brief"}, {}),
    ("HEAD", "/api/blobs/sha256:" + "0" * 64, None, {}),
    ("GET", "/v1/models", None, {}),
    ("GET", "/v1/models/llama3.2", None, {}),
    ("POST", "/v1/chat/completions", {"model": "llama3.2", "messages": CHAT}, {}),
    ("POST", "/v1/chat/completions", {"model": "llama3.2", "messages": CHAT, "stream": True}, {}),
    (
        "POST",
        "/v1/chat/completions",
        {
            "model": "llama3.2",
            "messages": CHAT,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        {},
    ),
    ("POST", "/v1/chat/completions", {"model": "missing-model", "messages": CHAT}, {}),
    ("POST", "/v1/completions", {"model": "llama3.2", "prompt": "Once", "stream": True}, {}),
    ("POST", "/v1/completions", {"model": "llama3.2", "prompt": "Once"}, {}),
    ("POST", "/v1/embeddings", {"model": "nomic-embed-text", "input": "hello"}, {}),
    (
        "POST",
        "/v1/messages",
        {"model": "llama3.2", "max_tokens": 64, "messages": CHAT, "stream": True},
        {},
    ),
    ("POST", "/v1/messages", {"model": "llama3.2", "max_tokens": 64, "messages": CHAT}, {}),
    ("POST", "/v1/messages", {"model": "missing-model", "max_tokens": 64, "messages": CHAT}, {}),
]


def _send(
    client: httpx.Client, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    if body is None:
        return client.request(method, path, headers=headers)
    if isinstance(body, bytes):
        return client.request(method, path, content=body, headers=headers)
    return client.request(method, path, content=json.dumps(body), headers=headers)


@pytest.mark.process
@pytest.mark.parametrize(
    ("method", "path", "body", "headers"),
    CASES,
    ids=[f"{m} {p} {i}" for i, (m, p, _, _) in enumerate(CASES)],
)
def test_route_answers_the_same_through_the_proxy(
    emulator: EmulatorServer,
    proxy: ProxyProcess,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
) -> None:
    with httpx.Client(base_url=emulator.url, timeout=30) as direct:
        expected = _send(direct, method, path, body, headers)
    with proxy.client() as client:
        got = _send(client, method, path, body, headers)
    assert got.status_code == expected.status_code
    assert got.headers.get("content-type") == expected.headers.get("content-type")
    assert comparable_headers(got) == comparable_headers(expected)
    assert ("content-length" in got.headers) == ("content-length" in expected.headers)
    if method == "HEAD":
        assert got.headers.get("content-length") == expected.headers.get("content-length")
    elif "content-length" in got.headers:
        assert int(got.headers["content-length"]) == len(got.content)
    assert normalise(got.content) == normalise(expected.content)
    assert got.content or method == "HEAD" or not expected.content


def test_normalise_leaves_content_alone() -> None:
    # The comparison above is only as strong as this: content must survive normalising.
    line = b'{"model":"m","created_at":"2026-01-01T00:00:00Z","response":"The sky","done":false}'
    assert normalise(line) == b'{"model":"m","created_at":"T","response":"The sky","done":false}'
    assert normalise(line.replace(b"sky", b"sea")) != normalise(line)


@pytest.mark.process
def test_streams_are_marked_unbuffered_and_json_is_not(proxy: ProxyProcess) -> None:
    with proxy.client() as client:
        stream = client.post("/api/generate", json={"model": "llama3.2", "prompt": "Hi"})
        plain = client.get("/api/tags")
    assert stream.headers["content-type"] == "application/x-ndjson"
    assert stream.headers["x-accel-buffering"] == "no"
    assert "x-accel-buffering" not in plain.headers


@pytest.mark.process
def test_mutations_pass_through(emulator: EmulatorServer, proxy: ProxyProcess) -> None:
    with proxy.client() as client:
        copied = client.post("/api/copy", json={"source": "llama3.2", "destination": "copy-a"})
        assert (copied.status_code, copied.content) == (200, b"")
        names = [m["name"] for m in client.get("/api/tags").json()["models"]]
        assert "copy-a:latest" in names
        deleted = client.request("DELETE", "/api/delete", json={"model": "copy-a"})
        assert (deleted.status_code, deleted.content) == (200, b"")
        again = client.request("DELETE", "/api/delete", json={"model": "copy-a"})
        assert again.status_code == 404
        assert "not found" in again.json()["error"]
    with httpx.Client(base_url=emulator.url) as direct:
        names = [m["name"] for m in direct.get("/api/tags").json()["models"]]
    assert "copy-a:latest" not in names

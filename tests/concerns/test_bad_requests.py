"""Malformed requests to Ollama's routes go to Ollama unchanged, and its answer comes back.

Each request is written byte for byte on a raw socket, once through the proxy and once to
the emulator directly. The emulator's request log shows the body it received (length and
SHA-256, marked by a header of the test's own), and the two answers are compared. The proxy
then serves the next request on the same connection: nothing broke.

What the proxy itself refuses is only what HTTP framing cannot carry: a head larger than
Ollama's own limit (431, as Go's net/http answers), a URL beyond the HTTP parser's 64 KiB
(400), and framing errors the HTTP parser rejects (duplicate Content-Length and the like,
400). Request bodies have no size limit, as in Ollama: they stream through; a body past the
analytics inspection cap (``INSPECT_MAX_BYTES``) is forwarded intact, only not inspected.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import uuid
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import pytest

from app.proxy.relay import INSPECT_MAX_BYTES
from app.server import MAX_HEAD_BYTES
from tests.concerns.test_transparency import normalise
from tests.emulator import EmulatorServer
from tests.support import CHAT, ProxyProcess

pytestmark = pytest.mark.process

MARK = "x-bad-request-case"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=60)


def exchange(sock: socket.socket, request: bytes, method: str = "POST") -> Reply:
    """Send ``request`` as it is and read one whole answer from the same connection."""
    sock.sendall(request)
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    body = response.read()
    headers = {name.lower(): value for name, value in response.getheaders()}
    response.close()
    return Reply(response.status, headers, body)


def raw_request(
    method: str,
    path: str,
    body: bytes | None,
    *,
    mark: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    chunks: list[bytes] | None = None,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: localhost", f"{MARK}: {mark}".encode()]
    lines += [name + b": " + value for name, value in headers or []]
    if chunks is not None:
        lines.append(b"Transfer-Encoding: chunked")
        framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        return b"\r\n".join(lines) + b"\r\n\r\n" + framed
    if body is not None:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def logged(emulator: EmulatorServer, mark: str) -> list[dict[str, Any]]:
    return [entry for entry in emulator.requests() if [MARK, mark] in entry["headers"]]


@pytest.fixture
def chain(emulator: EmulatorServer, proxy: ProxyProcess) -> tuple[EmulatorServer, int]:
    return emulator, proxy.port


DEEP = b"[" * 5000 + b"]" * 5000
# (id, method, path, body, extra headers). Every body reaches Ollama as sent.
CASES: list[tuple[str, str, str, bytes | None, list[tuple[bytes, bytes]]]] = [
    ("invalid json", "POST", "/api/chat", b"{not json", []),
    ("truncated json", "POST", "/api/generate", b'{"model":"llama3.2","prompt":"x', []),
    ("wrong types", "POST", "/api/chat", b'{"model":5,"messages":"hello","stream":"yes"}', []),
    ("wrong nested type", "POST", "/api/chat", b'{"model":"llama3.2","messages":[{"role":1}]}', []),
    ("empty body", "POST", "/api/generate", b"", []),
    ("no body at all", "POST", "/api/chat", None, []),
    ("json array", "POST", "/api/chat", b"[1,2,3]", []),
    ("json null", "POST", "/api/generate", b"null", []),
    (
        "huge numbers",
        "POST",
        "/api/generate",
        b'{"model":"llama3.2","prompt":"x","stream":false,'
        b'"options":{"num_predict":1e400,"seed":99999999999999999999999}}',
        [],
    ),
    (
        "NaN literal",
        "POST",
        "/api/generate",
        b'{"model":"llama3.2","prompt":"x","options":{"temperature":NaN}}',
        [],
    ),
    (
        "invalid utf-8",
        "POST",
        "/api/generate",
        b'{"model":"llama3.2","prompt":"caf\xe9 \xff\xfe","stream":false}',
        [],
    ),
    (
        # (in a field the emulator does not read: it cannot hash such text, Ollama can)
        "lone surrogate",
        "POST",
        "/api/chat",
        b'{"model":"llama3.2","stream":false,"messages":[],"x":"a\\ud800"}',
        [],
    ),
    ("byte order mark", "POST", "/api/chat", b'\xef\xbb\xbf{"model":"llama3.2"}', []),
    ("deep nesting", "POST", "/api/chat", b'{"model":"llama3.2","x":' + DEEP + b"}", []),
    (
        "unknown fields",
        "POST",
        "/api/generate",
        b'{"model":"llama3.2","prompt":"hi","stream":false,"bogus":{"a":[1,2]},"x":null}',
        [],
    ),
    ("trailing data", "POST", "/api/show", b'{"model":"llama3.2"} {"model":"other"}', []),
    ("body on GET", "GET", "/api/tags", b'{"model":"llama3.2"}', []),
    ("body on DELETE", "DELETE", "/api/delete", b'{"model":"no-such-model"}', []),
    (
        "wrong content type",
        "POST",
        "/api/show",
        b'{"model":"llama3.2"}',
        [(b"Content-Type", b"text/plain; charset=latin-1")],
    ),
    (
        "deep nesting on an OpenAI stream",
        "POST",
        "/v1/chat/completions",
        b'{"model":"llama3.2","stream":true,"messages":' + DEEP + b"}",
        [],
    ),
    (
        "NaN on an OpenAI stream",
        "POST",
        "/v1/chat/completions",
        b'{"model":"llama3.2","stream":true,"temperature":NaN,"messages":[]}',
        [],
    ),
    ("not a method Ollama has", "PATCH", "/api/chat", b'{"model":"llama3.2"}', []),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "body", "headers"), CASES, ids=[c[0] for c in CASES]
)
def test_malformed_requests_reach_ollama_unchanged(
    chain: tuple[EmulatorServer, int],
    name: str,
    method: str,
    path: str,
    body: bytes | None,
    headers: list[tuple[bytes, bytes]],
) -> None:
    emulator, port = chain
    mark = uuid.uuid4().hex
    with closing(connect(emulator.port)) as direct_sock:
        direct = exchange(direct_sock, raw_request(method, path, body, mark="direct"), method)
    with closing(connect(port)) as sock:
        proxied = exchange(
            sock, raw_request(method, path, body, mark=mark, headers=headers), method
        )
        assert proxied.status == direct.status, proxied.body
        assert proxied.status < 500 or direct.status >= 500
        assert normalise(proxied.body) == normalise(direct.body)
        assert proxied.headers.get("content-type") == direct.headers.get("content-type")
        # The same connection serves the next request.
        after = exchange(sock, b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n", "GET")
        assert after.status == 200
        assert json.loads(after.body)["version"]
    [entry] = logged(emulator, mark)
    sent = body or b""
    assert entry["body_len"] == len(sent)
    assert entry["body_sha256"] == hashlib.sha256(sent).hexdigest()
    assert entry["method"] == method


def test_a_chunked_request_body_arrives_whole(chain: tuple[EmulatorServer, int]) -> None:
    emulator, port = chain
    body = json.dumps({"model": "llama3.2", "messages": CHAT, "stream": False}).encode()
    pieces = [body[:1], body[1:7], body[7:-1], b"", body[-1:]]
    pieces = [p for p in pieces if p]  # an empty chunk would end the body
    mark = uuid.uuid4().hex
    with closing(connect(port)) as sock:
        reply = exchange(sock, raw_request("POST", "/api/chat", None, mark=mark, chunks=pieces))
        assert reply.status == 200
        assert json.loads(reply.body)["message"]["content"]
        assert (
            exchange(sock, raw_request("GET", "/api/tags", None, mark="next"), "GET").status == 200
        )
    [entry] = logged(emulator, mark)
    assert entry["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert entry["body_len"] == len(body)


def test_a_chunked_upload_streams_through(chain: tuple[EmulatorServer, int]) -> None:
    """A body the proxy does not read (a blob) goes on chunked as it arrives."""
    emulator, port = chain
    data = bytes(range(256)) * 4096  # 1 MiB
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    mark = uuid.uuid4().hex
    pieces = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]
    with closing(connect(port)) as sock:
        reply = exchange(
            sock, raw_request("POST", f"/api/blobs/{digest}", None, mark=mark, chunks=pieces)
        )
    assert reply.status == 201
    [entry] = logged(emulator, mark)
    assert entry["body_sha256"] == digest.removeprefix("sha256:")


@pytest.mark.parametrize(
    ("name", "head"),
    [
        ("two different lengths", b"Content-Length: 2\r\nContent-Length: 3\r\n"),
        ("two equal lengths", b"Content-Length: 3\r\nContent-Length: 3\r\n"),
        ("length and chunked", b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"),
        ("length not a number", b"Content-Length: abc\r\n"),
        ("negative length", b"Content-Length: -1\r\n"),
        ("unknown transfer coding", b"Transfer-Encoding: gzip\r\n"),
        ("NUL in a header", b"X-A: a\x00b\r\nContent-Length: 3\r\n"),
    ],
)
def test_framing_errors_get_a_clean_400_and_go_nowhere(
    chain: tuple[EmulatorServer, int], name: str, head: bytes
) -> None:
    """The HTTP parser refuses a message whose framing is ambiguous, before any of it is
    forwarded (a proxy that guessed could be made to smuggle a second request)."""
    emulator, port = chain
    mark = uuid.uuid4().hex
    request = (
        f"POST /api/show HTTP/1.1\r\nHost: localhost\r\n{MARK}: {mark}\r\n".encode()
        + head
        + b"\r\n{}}"
    )
    with closing(connect(port)) as sock:
        reply = exchange(sock, request)
    assert reply.status == 400
    assert reply.headers.get("connection") == "close"
    assert logged(emulator, mark) == []
    _still_serving(port)


def _still_serving(port: int) -> None:
    with closing(connect(port)) as sock:
        reply = exchange(sock, b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n", "GET")
    assert reply.status == 200


def _head_of(size: int, mark: str) -> bytes:
    """A GET whose head is ``size`` bytes long, most of it one header."""
    start = f"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n{MARK}: {mark}\r\nX-Big: ".encode()
    end = b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


@pytest.mark.parametrize("piece", [None, 4096])
def test_a_head_beyond_ollamas_limit_gets_431(
    chain: tuple[EmulatorServer, int], piece: int | None
) -> None:
    emulator, port = chain
    mark = uuid.uuid4().hex
    request = _head_of(MAX_HEAD_BYTES + 10_000, mark)
    with closing(connect(port)) as sock:
        if piece is None:
            reply = exchange(sock, request, "GET")
        else:  # slowly, as a client trickling its head would
            for start in range(0, len(request) - piece, piece):
                sock.sendall(request[start : start + piece])
            reply = exchange(sock, request[start + piece :], "GET")
    assert reply.status == 431
    assert reply.body == b"431 Request Header Fields Too Large"
    assert logged(emulator, mark) == []
    _still_serving(port)


def test_a_head_within_ollamas_limit_is_forwarded(chain: tuple[EmulatorServer, int]) -> None:
    emulator, port = chain
    mark = uuid.uuid4().hex
    # Ollama's limit counts the head as the client sent it; the proxy rewrites Host, so a
    # little room is left for that.
    with closing(connect(port)) as sock:
        reply = exchange(sock, _head_of(MAX_HEAD_BYTES - 64, mark), "GET")
        assert reply.status == 200
        assert "models" in json.loads(reply.body)
        # The next request on the connection has a full limit of its own.
        assert exchange(sock, _head_of(MAX_HEAD_BYTES - 64, mark + "2"), "GET").status == 200
    assert len(logged(emulator, mark)) == 1


@pytest.mark.parametrize(("length", "status"), [(60_000, 200), (70_000, 400)])
def test_a_long_url(chain: tuple[EmulatorServer, int], length: int, status: int) -> None:
    """httptools' URL parser keeps offsets in 16 bits: a URL past 64 KiB is a clean 400.
    (Ollama's routes take no query and have short paths, so no Ollama request is refused.)"""
    emulator, port = chain
    mark = uuid.uuid4().hex
    path = "/api/tags?q=" + "a" * length
    with closing(connect(port)) as sock:
        reply = exchange(sock, raw_request("GET", path, None, mark=mark), "GET")
    assert reply.status == status
    assert len(logged(emulator, mark)) == (status == 200)
    _still_serving(port)


def test_a_body_past_the_inspection_cap_is_forwarded_intact(
    chain: tuple[EmulatorServer, int],
) -> None:
    """Ollama sets no limit on request bodies, so neither does the proxy; past
    ``INSPECT_MAX_BYTES`` the body streams through unread."""
    emulator, port = chain
    filler = "x" * (INSPECT_MAX_BYTES + 1024)
    messages = [{"role": "system", "content": filler}, *CHAT]
    body = json.dumps({"model": "llama3.2", "messages": messages, "stream": False}).encode()
    assert len(body) > INSPECT_MAX_BYTES
    mark = uuid.uuid4().hex
    with closing(connect(port)) as sock:
        reply = exchange(sock, raw_request("POST", "/api/chat", body, mark=mark))
        assert reply.status == 200
        assert json.loads(reply.body)["done"] is True
        assert (
            exchange(sock, raw_request("GET", "/api/version", None, mark="n"), "GET").status == 200
        )
    [entry] = logged(emulator, mark)
    assert entry["body_len"] == len(body)
    assert entry["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_an_openai_stream_with_a_lone_surrogate_is_answered_as_ollama_would(
    chain: tuple[EmulatorServer, int],
) -> None:
    """The proxy asks for usage on this stream (it rewrites the body); a ``\\ud800`` escape
    in it must survive the rewrite, and the client must see Ollama's stream unchanged."""
    emulator, port = chain
    body = b'{"model":"llama3.2","stream":true,"messages":%s,"user":"a\\ud800"}' % (
        json.dumps(CHAT).encode()
    )
    mark = uuid.uuid4().hex
    with closing(connect(emulator.port)) as sock:
        direct = exchange(sock, raw_request("POST", "/v1/chat/completions", body, mark="d"))
    with closing(connect(port)) as sock:
        proxied = exchange(sock, raw_request("POST", "/v1/chat/completions", body, mark=mark))
    assert direct.status == 200
    assert proxied.status == 200
    assert normalise(proxied.body) == normalise(direct.body)
    assert proxied.body.endswith(b"data: [DONE]\n\n")
    # What reached Ollama is the same JSON with include_usage added, the escape kept.
    asked = {**json.loads(body), "stream_options": {"include_usage": True}}
    rewritten = json.dumps(asked, separators=(",", ":")).encode()
    assert b"\\ud800" in rewritten
    [entry] = logged(emulator, mark)
    assert entry["body_sha256"] == hashlib.sha256(rewritten).hexdigest()

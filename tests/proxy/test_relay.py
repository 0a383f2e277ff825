"""The forwarder as an ASGI app, in this process: a scripted upstream stands in for Ollama
(the real ``Upstream`` with ``send`` replaced, so the target and the header filtering are
the real ones), and the real recorder watches, with a recording sink.

What the client receives is compared with bytes written out here; what went upstream with
the request head expected on the wire. The socket side (the pool, the parser) is
``tests/proxy/test_upstream.py``'s; streaming through real servers is
``tests/concerns/test_streaming.py``'s.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

from app.exchange import Recorder
from app.proxy.errors import UpstreamError
from app.proxy.relay import Forwarder
from app.proxy.upstream import Upstream
from app.record import ExchangeRecord
from app.types import Message
from tests.asgi import http_scope
from tests.support import RecordingSink

_END = object()  # the end of a scripted body


class ScriptedResponse:
    """Ollama's answer as ``app.proxy.connection.Response`` hands it to the forwarder: the
    head at once, then body pieces as the test lets them arrive (``arrive``, ``end``,
    ``fail``), each read as one piece."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers
        self._items: collections.deque[object] = collections.deque()
        self._changed = asyncio.Event()
        self.ended = False
        self.released: bool | None = None  # None until released; then whether drained

    # -- the test's side -------------------------------------------------------------------

    def arrive(self, *pieces: bytes) -> ScriptedResponse:
        self._items.extend(pieces)
        self._changed.set()
        return self

    def end(self) -> ScriptedResponse:
        self._items.append(_END)
        self.ended = True
        self._changed.set()
        return self

    def fail(self, error: UpstreamError) -> ScriptedResponse:
        self._items.append(error)
        self._changed.set()
        return self

    # -- what the forwarder uses -----------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self.ended

    @property
    def drained(self) -> bool:
        return bool(self._items) and self._items[0] is _END

    @property
    def content_length(self) -> int | None:
        for name, value in self.headers:
            if name.lower() == b"content-length":
                return int(value)
        return None

    @property
    def content_type(self) -> bytes:
        return next((v for k, v in self.headers if k.lower() == b"content-type"), b"")

    async def read(self) -> bytes:
        while not self._items:
            self._changed.clear()
            await self._changed.wait()
        item = self._items[0]
        if item is _END:
            return b""
        self._items.popleft()
        if isinstance(item, UpstreamError):
            raise item
        assert isinstance(item, bytes)
        return item

    async def read_all(self) -> bytes:
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        self.released = self.drained


class ScriptedUpstream(Upstream):
    """The real ``Upstream`` (target, headers) whose ``send`` answers from a script and
    keeps what it was sent; no socket is opened."""

    def __init__(self, base_url: str = "http://127.0.0.1:11435") -> None:
        super().__init__(base_url, connect_timeout=1, max_connections=0)
        self.answer: ScriptedResponse | UpstreamError = ScriptedResponse(200, [])
        self.sent: list[tuple[str, bytes, list[bytes], bool]] = []  # method, head, body, chunked

    async def send(
        self,
        method: str,
        head: bytes,
        body: bytes | AsyncIterator[bytes],
        *,
        chunked: bool = False,
    ) -> Any:
        pieces = [body] if isinstance(body, bytes) else [piece async for piece in body]
        self.sent.append((method, head, pieces, chunked))
        if isinstance(self.answer, UpstreamError):
            raise self.answer
        return self.answer


class Client:
    """One request's ASGI side: its body messages in, every message the app sends kept; a
    disconnect once the body is out and ``leave`` was called."""

    def __init__(self, *bodies: bytes) -> None:
        self.incoming: list[Message] = [
            {"type": "http.request", "body": body, "more_body": i < len(bodies) - 1}
            for i, body in enumerate(bodies or (b"",))
        ]
        self.sent: list[Message] = []
        self.gone = asyncio.Event()
        self._sent_more = asyncio.Event()

    def leave(self) -> None:
        self.gone.set()

    async def receive(self) -> Message:
        if self.incoming:
            return self.incoming.pop(0)
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        self._sent_more.set()

    async def received(self, count: int) -> None:
        """Wait until ``count`` body messages have arrived."""
        while len(self.bodies) < count:
            self._sent_more.clear()
            await self._sent_more.wait()

    @property
    def start(self) -> Message:
        (start,) = [m for m in self.sent if m["type"] == "http.response.start"]
        return start

    @property
    def status(self) -> int:
        return int(self.start["status"])

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.start["headers"])

    @property
    def bodies(self) -> list[Message]:
        return [m for m in self.sent if m["type"] == "http.response.body"]

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.bodies)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))


def forwarder(upstream: ScriptedUpstream, sink: RecordingSink, **options: Any) -> Forwarder:
    recorder = Recorder(sinks=[sink], categorise=lambda prompt: "question", **options)
    return Forwarder(upstream, recorder)


async def call(
    app: Forwarder,
    client: Client,
    path: str,
    *,
    method: str = "POST",
    headers: list[tuple[bytes, bytes]] | None = None,
    query: bytes = b"",
) -> None:
    scope = http_scope(path, method=method, headers=headers)
    scope["query_string"] = query
    await app(scope, client.receive, client.send)


def record_of(sink: RecordingSink) -> ExchangeRecord:
    (record,) = sink.records
    return record


NDJSON = (b"Content-Type", b"application/x-ndjson")
CHAT = json.dumps(
    {"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
).encode()
LINES = [
    b'{"model":"llama3.2","message":{"role":"assistant","content":"Blue"},"done":false}\n',
    b'{"model":"llama3.2","message":{"role":"assistant","content":" light"},"done":false}\n',
    b'{"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,'
    b'"done_reason":"stop","prompt_eval_count":15,"eval_count":2,"eval_duration":500000000}\n',
]


@pytest.fixture
def upstream() -> ScriptedUpstream:
    return ScriptedUpstream("http://ollama.internal:11435/base")


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


# -- what goes upstream ----------------------------------------------------------------------


def test_the_request_goes_up_as_the_client_sent_it_with_hop_headers_dropped(
    upstream: ScriptedUpstream, sink: RecordingSink
) -> None:
    upstream.answer = ScriptedResponse(200, [(b"Content-Length", b"2")]).arrive(b"{}").end()
    client = Client(CHAT)
    headers = [
        (b"host", b"proxy.example:11434"),
        (b"connection", b"keep-alive, x-trace"),
        (b"keep-alive", b"timeout=5"),
        (b"x-trace", b"named by Connection, so hop-by-hop"),
        (b"te", b"trailers"),
        (b"user-agent", b"ollama-python/0.6.3"),
        (b"x-custom", b"caf\xc3\xa9"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(CHAT)).encode()),
        (b"x-custom", b"second"),
    ]
    run(call(forwarder(upstream, sink), client, "/api/chat", headers=headers, query=b"a=1&b"))
    ((method, head, body, chunked),) = upstream.sent
    assert (method, body, chunked) == ("POST", [CHAT], False)
    assert head == (
        b"POST /base/api/chat?a=1&b HTTP/1.1\r\n"
        b"Host: ollama.internal:11435\r\n"
        b"user-agent: ollama-python/0.6.3\r\n"
        b"x-custom: caf\xc3\xa9\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(CHAT)).encode() + b"\r\n"
        b"x-custom: second\r\n"
        b"\r\n"
    )
    assert (client.status, client.body) == (200, b"{}")


def test_a_rewritten_body_goes_up_with_its_own_length(
    upstream: ScriptedUpstream, sink: RecordingSink
) -> None:
    asked = json.dumps({"model": "llama3.2", "stream": True, "messages": []}).encode()
    upstream.answer = ScriptedResponse(200, [(b"Content-Type", b"text/event-stream")])
    upstream.answer.arrive(b"data: [DONE]\n\n").end()
    headers = [(b"content-length", str(len(asked)).encode())]
    run(call(forwarder(upstream, sink), Client(asked), "/v1/chat/completions", headers=headers))
    ((_, head, (body,), _),) = upstream.sent
    assert json.loads(body)["stream_options"] == {"include_usage": True}
    assert head.endswith(b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    assert b"content-length: " + str(len(asked)).encode() not in head
    assert record_of(sink).usage_injected is True


def test_an_upload_is_streamed_up_piece_by_piece_never_read(
    upstream: ScriptedUpstream, sink: RecordingSink
) -> None:
    upstream.answer = ScriptedResponse(201, [(b"Content-Length", b"0")]).end()
    parts = [b"\x00\x01blob", b"", b"\xff" * 70_000, b"tail"]
    path = "/api/blobs/sha256:" + "0" * 64
    run(call(forwarder(upstream, sink), Client(*parts), path))
    ((method, head, body, chunked),) = upstream.sent
    assert (method, chunked) == ("POST", True)
    assert body == [b"\x00\x01blob", b"\xff" * 70_000, b"tail"]  # as they came, empty skipped
    assert head.endswith(b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    record = record_of(sink)
    assert (record.status, record.endpoint, record.request_body) == (201, "/api/blobs/:digest", "")
    assert record.request_bytes == sum(map(len, parts))


def test_a_body_in_several_messages_is_read_whole_when_worth_reading(
    upstream: ScriptedUpstream, sink: RecordingSink
) -> None:
    upstream.answer = ScriptedResponse(200, [NDJSON]).arrive(*LINES).end()
    halves = CHAT[:20], CHAT[20:]
    run(call(forwarder(upstream, sink), Client(*halves), "/api/chat"))
    ((_, head, body, chunked),) = upstream.sent
    assert (body, chunked) == ([CHAT], False)
    assert b"\r\nContent-Length: " + str(len(CHAT)).encode() + b"\r\n" in head
    assert record_of(sink).prompt == "Why is the sky blue?"


# -- what comes back -------------------------------------------------------------------------


def test_a_stream_is_relayed_chunk_by_chunk_as_it_arrives(
    upstream: ScriptedUpstream, sink: RecordingSink
) -> None:
    answer = upstream.answer = ScriptedResponse(200, [NDJSON, (b"Date", b"Fri, 27 Nov 2026")])
    client = Client(CHAT)

    async def scenario() -> None:
        relay = asyncio.create_task(call(forwarder(upstream, sink), client, "/api/chat"))
        for expected, piece in enumerate(LINES, start=1):
            answer.arrive(piece)
            await client.received(expected)  # before the next piece exists upstream
            assert client.bodies[-1] == {
                "type": "http.response.body",
                "body": piece,
                "more_body": True,
            }
        answer.end()
        await relay

    run(scenario())
    assert client.headers == [
        (b"Content-Type", b"application/x-ndjson"),
        (b"Date", b"Fri, 27 Nov 2026"),
        (b"X-Accel-Buffering", b"no"),
    ]
    assert client.bodies[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert client.body == b"".join(LINES)
    assert answer.released is True  # complete: the connection may be reused
    record = record_of(sink)
    assert (record.response, record.prompt_tokens, record.completion_tokens) == (
        "Blue light",
        15,
        2,
    )
    assert record.response_bytes == sum(map(len, LINES))


def test_the_last_piece_and_the_end_go_out_in_one_message(
    upstream: ScriptedUpstream, sink: RecordingSink
) -> None:
    answer = upstream.answer = ScriptedResponse(200, [NDJSON]).arrive(LINES[0])
    client = Client(CHAT)

    async def scenario() -> None:
        relay = asyncio.create_task(call(forwarder(upstream, sink), client, "/api/chat"))
        await client.received(1)
        answer.arrive(LINES[1], LINES[2]).end()
        await relay

    run(scenario())
    assert [m["body"] for m in client.bodies] == LINES
    assert [m["more_body"] for m in client.bodies] == [True, True, False]


def test_an_answer_whole_by_the_time_its_head_is_read_goes_out_in_one_write(
    upstream: ScriptedUpstream, sink: RecordingSink
) -> None:
    upstream.answer = ScriptedResponse(200, [NDJSON]).arrive(*LINES).end()
    client = Client(CHAT)
    run(call(forwarder(upstream, sink), client, "/api/chat"))
    assert client.bodies == [
        {"type": "http.response.body", "body": b"".join(LINES), "more_body": False}
    ]
    assert record_of(sink).completion_tokens == 2


def test_bytes_pass_unchanged_whatever_they_are(
    upstream: ScriptedUpstream, sink: RecordingSink
) -> None:
    odd = [b"\xff\xfe not UTF-8\n", b"<html>502</html>", b"\r\n\r\n", b"\x00" * 3]
    headers = [(b"Content-Type", b"application/octet-stream"), (b"Content-Encoding", b"gzip")]
    upstream.answer = ScriptedResponse(200, headers).arrive(*odd).end()
    client = Client()
    run(call(forwarder(upstream, sink), client, "/api/version", method="GET"))
    assert client.body == b"".join(odd)
    assert (b"Content-Encoding", b"gzip") in client.headers


def test_a_small_answer_is_sent_in_one_write(
    upstream: ScriptedUpstream, sink: RecordingSink
) -> None:
    body = b'{"models":[{"name":"llama3.2:latest"}]}'
    headers = [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode())]
    upstream.answer = ScriptedResponse(200, headers).arrive(body[:10], body[10:]).end()
    client = Client()
    run(call(forwarder(upstream, sink), client, "/api/tags", method="GET"))
    assert client.bodies == [{"type": "http.response.body", "body": body, "more_body": False}]
    assert client.headers == headers  # a JSON answer with a length is not marked streaming


def test_response_hop_headers_stay_behind(upstream: ScriptedUpstream, sink: RecordingSink) -> None:
    headers = [
        (b"Content-Type", b"application/json; charset=utf-8"),
        (b"Connection", b"close, X-Internal"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Internal", b"hop"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Vary", b"Origin"),
    ]
    upstream.answer = ScriptedResponse(200, headers).arrive(b'{"version":"0.12.3"}').end()
    client = Client()
    run(call(forwarder(upstream, sink), client, "/api/version", method="GET"))
    assert client.headers == [
        (b"Content-Type", b"application/json; charset=utf-8"),
        (b"Vary", b"Origin"),
        (b"X-Accel-Buffering", b"no"),  # no length: it may be long
    ]


# -- when Ollama fails -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/chat", {"error": "cannot connect to Ollama"}),
        (
            "/v1/chat/completions",
            {
                "error": {
                    "message": "cannot connect to Ollama",
                    "type": "api_error",
                    "param": None,
                    "code": None,
                }
            },
        ),
        (
            "/v1/messages",
            {
                "type": "error",
                "error": {"type": "api_error", "message": "cannot connect to Ollama"},
            },
        ),
    ],
)
def test_an_unreachable_ollama_is_a_502_in_the_shape_the_client_parses(
    path: str, expected: dict[str, Any], upstream: ScriptedUpstream, sink: RecordingSink
) -> None:
    upstream.answer = UpstreamError("connect", "cannot connect to Ollama")
    client = Client(CHAT)
    run(call(forwarder(upstream, sink), client, path))
    assert client.status == 502
    headers = dict(client.headers)
    assert headers[b"content-type"] == b"application/json; charset=utf-8"
    assert int(headers[b"content-length"]) == len(client.body)
    answer = json.loads(client.body)
    answer.pop("request_id", None)  # Anthropic's, random
    assert answer == expected
    record = record_of(sink)
    assert (record.status, record.upstream_error, record.error) == (
        502,
        "connect",
        "cannot connect to Ollama",
    )


def test_a_stream_broken_off_ends_with_an_error_line_of_its_own(
    upstream: ScriptedUpstream, sink: RecordingSink
) -> None:
    message = "Ollama at http://ollama.internal:11435/base broke off the response unfinished"
    upstream.answer = ScriptedResponse(200, [NDJSON]).arrive(LINES[0], LINES[1][:12])
    upstream.answer.fail(UpstreamError("reset", message))
    client = Client(CHAT)
    run(call(forwarder(upstream, sink), client, "/api/chat"))
    # The cut line is ended first, so that the error stands on a line of its own.
    assert client.body == LINES[0] + LINES[1][:12] + b'\n{"error": "' + message.encode() + b'"}\n'
    assert client.bodies[-1]["more_body"] is False
    assert upstream.answer.released is False  # not reusable: the connection is dropped
    record = record_of(sink)
    assert (record.status, record.upstream_error, record.error) == (200, "reset", message)


def test_an_event_stream_broken_off_ends_with_an_error_event(
    upstream: ScriptedUpstream, sink: RecordingSink
) -> None:
    event = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    upstream.answer = ScriptedResponse(200, [(b"Content-Type", b"text/event-stream")])
    upstream.answer.arrive(event).fail(UpstreamError("reset", "gone"))
    client = Client(b'{"model":"llama3.2","stream":true,"stream_options":{"include_usage":true}}')
    run(call(forwarder(upstream, sink), client, "/v1/chat/completions"))
    error = {"error": {"message": "gone", "type": "api_error", "param": None, "code": None}}
    assert client.body == event + b"data: " + json.dumps(error).encode() + b"\n\n"


def test_a_small_answer_broken_off_is_a_clean_502(
    upstream: ScriptedUpstream, sink: RecordingSink
) -> None:
    headers = [(b"Content-Type", b"application/json"), (b"Content-Length", b"100")]
    upstream.answer = ScriptedResponse(200, headers).arrive(b'{"model":"ll')
    upstream.answer.fail(UpstreamError("reset", "Ollama broke off"))
    client = Client(b'{"model":"llama3.2","prompt":"hi","stream":false}')
    run(call(forwarder(upstream, sink), client, "/api/generate"))
    assert client.status == 502
    assert json.loads(client.body) == {"error": "Ollama broke off"}  # nothing of the cut body
    assert record_of(sink).status == 502


def test_a_body_without_a_way_to_say_the_error_is_left_unfinished(
    upstream: ScriptedUpstream, sink: RecordingSink
) -> None:
    upstream.answer = ScriptedResponse(200, [(b"Content-Type", b"application/octet-stream")])
    upstream.answer.arrive(b"part").fail(UpstreamError("reset", "gone"))
    client = Client()
    run(call(forwarder(upstream, sink), client, "/api/blobs/sha256:" + "1" * 64, method="GET"))
    # No last message: the server drops the connection and the client sees a cut body.
    assert [m["more_body"] for m in client.bodies] == [True]
    assert client.body == b"part"


# -- when the client leaves --------------------------------------------------------------------


def test_a_client_leaving_mid_stream_releases_the_upstream_unfinished(
    upstream: ScriptedUpstream, sink: RecordingSink
) -> None:
    answer = upstream.answer = ScriptedResponse(200, [NDJSON])
    client = Client(CHAT)

    async def scenario() -> None:
        relay = asyncio.create_task(call(forwarder(upstream, sink), client, "/api/chat"))
        answer.arrive(LINES[0])
        await client.received(1)
        client.leave()
        await relay  # ends without raising: the cancellation was the forwarder's own

    run(scenario())
    assert answer.released is False  # mid-answer: closing the connection stops Ollama
    assert client.body == LINES[0]
    record = record_of(sink)
    assert (record.cancelled, record.status, record.upstream_error) == (True, 200, None)
    assert record.response == "Blue"


def test_a_client_leaving_while_its_body_is_read_sends_nothing_up(
    upstream: ScriptedUpstream, sink: RecordingSink
) -> None:
    client = Client(CHAT[:10])
    client.incoming[0]["more_body"] = True  # more was announced, then the client left
    client.leave()
    run(call(forwarder(upstream, sink), client, "/api/chat"))
    assert upstream.sent == []
    assert client.sent == []
    record = record_of(sink)
    assert (record.status, record.cancelled) == (499, True)


def test_a_websocket_is_refused_as_ollama_refuses_it(
    upstream: ScriptedUpstream, sink: RecordingSink
) -> None:
    client = Client()
    scope = http_scope("/api/chat", kind="websocket")
    run(forwarder(upstream, sink)(scope, client.receive, client.send))
    assert client.sent == [{"type": "websocket.close", "code": 1008}]
    assert upstream.sent == []
    assert sink.records == []

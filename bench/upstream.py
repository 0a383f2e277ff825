"""The generator upstream: an Ollama stand-in that costs next to nothing per chunk.

``python -m bench.upstream --port P`` serves, on one uvloop thread with a raw
``asyncio.Protocol`` and httptools' C parser, answers rendered once at start:

- ``POST /api/generate`` and ``/api/chat`` (``"stream":false`` absent): an NDJSON stream of
  ``num_predict`` token lines (default 1,000) and Ollama's final metrics line;
  ``"x_bench_token_bytes":N`` makes each token N bytes long (the 2 GB stream);
  ``"x_bench_burst":N`` writes up to N lines (each its own HTTP chunk) per ``write``;
  ``"x_bench_interval_ms":N`` paces the stream: one line every N ms, as a model generates
  (so a reader sees one line per read, not lines merged by TCP);
- ``POST /v1/chat/completions``: the OpenAI SSE stream, with the usage chunk only when the
  request asks for it (``"include_usage":true``), as Ollama does;
- non-streamed generate/chat and ``GET`` anything: a small canned JSON answer;
- any other ``POST`` (``/api/blobs/...``): the body is read and thrown away, then ``201``.

Streams go out as Ollama writes them: the headers with the first token at once, then one
HTTP chunk per NDJSON line or SSE event, one ``write`` per line (or per ``x_bench_burst``
lines, which is what TCP makes of them anyway once the reader lags), one write per stream
per event-loop turn (so concurrent streams interleave), and none while the socket's buffer
is full.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import Callable
from typing import cast

import httptools

MAX_BODY_KEPT = 64 * 1024
_NUM_PREDICT = re.compile(rb'"num_predict"\s*:\s*(\d+)')
_TOKEN_BYTES = re.compile(rb'"x_bench_token_bytes"\s*:\s*(\d+)')
_NOT_STREAMED = re.compile(rb'"stream"\s*:\s*false')
_MAX_TOKENS = re.compile(rb'"max_tokens"\s*:\s*(\d+)')
_BURST = re.compile(rb'"x_bench_burst"\s*:\s*(\d+)')
_INTERVAL = re.compile(rb'"x_bench_interval_ms"\s*:\s*(\d+)')
_INCLUDE_USAGE = re.compile(rb'"include_usage"\s*:\s*true')
STAMP = "2026-08-21T10:00:00.501Z"

TAGS = json.dumps(
    {
        "models": [
            {
                "name": "llama3.2:latest",
                "model": "llama3.2:latest",
                "modified_at": "2025-05-04T17:37:44.706015396-07:00",
                "size": 2019393189,
                "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": "llama",
                    "families": ["llama"],
                    "parameter_size": "3.2B",
                    "quantization_level": "Q4_K_M",
                },
            }
        ]
    },
    separators=(",", ":"),
)
GENERATED = json.dumps(
    {
        "model": "llama3.2",
        "created_at": STAMP,
        "response": "The sky is blue because of Rayleigh scattering.",
        "done": True,
        "done_reason": "stop",
        "total_duration": 2612000000,
        "load_duration": 41295167,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 130079000,
        "eval_count": 10,
        "eval_duration": 2105000000,
    },
    separators=(",", ":"),
)


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def head(status: str, content_type: str, *, length: int | None = None) -> bytes:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Date: Fri, 21 Aug 2026 10:00:00 GMT\r\n{framing}\r\n\r\n"
    ).encode()


def whole(status: str, content_type: str, body: bytes) -> bytes:
    return head(status, content_type, length=len(body)) + body


def ndjson_parts(operation: str, tokens: int, token_bytes: int) -> tuple[bytes, bytes]:
    """(one token chunk, the final chunk) of a native stream."""
    text = " tok" if token_bytes <= 4 else " " + "x" * (token_bytes - 1)
    if operation == "chat":
        body = {"message": {"role": "assistant", "content": text}}
        last = {"message": {"role": "assistant", "content": ""}}
    else:
        body, last = {"response": text}, {"response": ""}
    line = {"model": "llama3.2", "created_at": STAMP, **body, "done": False}
    final = {"model": "llama3.2", "created_at": STAMP, **last, "done": True}
    final |= {"done_reason": "stop", "total_duration": 2612000000, "load_duration": 41295167}
    final |= {"prompt_eval_count": 26, "prompt_eval_duration": 130079000}
    final |= {"eval_count": tokens, "eval_duration": 2105000000}
    render = lambda value: json.dumps(value, separators=(",", ":")).encode() + b"\n"  # noqa: E731
    return chunk(render(line)), chunk(render(final))


def sse_parts(tokens: int, usage: bool) -> tuple[bytes, bytes, bytes]:
    """(first chunk, one token chunk, the closing chunks) of an OpenAI stream."""
    top = '{"id":"chatcmpl-417","object":"chat.completion.chunk","created":1755770402,'
    top += '"model":"llama3.2","system_fingerprint":"fp_ollama",'

    def event(choices: str, extra: str = "") -> bytes:
        return chunk(f'data: {top}{extra}"choices":[{choices}]}}\n\n'.encode())

    first = event('{"index":0,"delta":{"role":"assistant","content":"The"},"finish_reason":null}')
    token = event('{"index":0,"delta":{"content":" tok"},"finish_reason":null}')
    closing = event('{"index":0,"delta":{},"finish_reason":"stop"}')
    if usage:
        counts = f'"usage":{{"prompt_tokens":26,"completion_tokens":{tokens},'
        counts += f'"total_tokens":{26 + tokens}}},'
        closing += event("", counts)
    return first, token, closing + chunk(b"data: [DONE]\n\n")


class Connection(asyncio.Protocol):
    """One client connection: parse a request, answer it, keep the connection open."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body = bytearray()
        self.paused = False
        # The stream being written: the chunk to repeat, how often, then what ends it.
        self.repeat = b""
        self.left = 0
        self.tail = b""
        self.burst = 1
        self.bursts = b""
        self.interval = 0.0
        self.scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body.clear()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        if len(self.body) < MAX_BODY_KEPT:
            self.body += body[: MAX_BODY_KEPT - len(self.body)]

    def on_message_complete(self) -> None:
        assert self.transport is not None
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        body = bytes(self.body)
        if method == b"POST" and path in (b"/api/generate", b"/api/chat"):
            self.native(path, body)
        elif method == b"POST" and path == b"/v1/chat/completions":
            self.openai(body)
        elif method == b"POST" and not path.startswith(b"/api/"):
            self.transport.write(whole("200 OK", "application/json", b"{}"))
        elif method == b"POST" and path.startswith(b"/api/blobs/"):
            self.transport.write(head("201 Created", "text/plain", length=0))
        elif path == b"/api/tags":
            self.transport.write(whole("200 OK", "application/json; charset=utf-8", TAGS_BYTES))
        else:
            self.transport.write(whole("200 OK", "application/json; charset=utf-8", b"{}"))
        if not self.parser.should_keep_alive():
            self.close()

    def native(self, path: bytes, body: bytes) -> None:
        assert self.transport is not None
        if _NOT_STREAMED.search(body):
            answer = whole("200 OK", "application/json; charset=utf-8", GENERATED_BYTES)
            self.transport.write(answer)
            return
        tokens = _number(_NUM_PREDICT, body, 1000)
        token_bytes = _number(_TOKEN_BYTES, body, 0)
        operation = "chat" if path == b"/api/chat" else "generate"
        line, final = _cached(("ndjson", operation, tokens, token_bytes), ndjson_parts)
        self.transport.write(head("200 OK", "application/x-ndjson") + line)
        self.stream(line, tokens - 1, final + b"0\r\n\r\n", _number(_BURST, body, 1), body)

    def openai(self, body: bytes) -> None:
        assert self.transport is not None
        tokens = _number(_MAX_TOKENS, body, 1000)
        usage = bool(_INCLUDE_USAGE.search(body))
        first, token, closing = _cached(("sse", tokens, usage), lambda *_: sse_parts(tokens, usage))
        self.transport.write(head("200 OK", "text/event-stream") + first)
        self.stream(token, tokens - 1, closing + b"0\r\n\r\n", _number(_BURST, body, 1), body)

    def stream(self, repeat: bytes, count: int, tail: bytes, burst: int, body: bytes) -> None:
        self.repeat, self.left, self.tail = repeat, count, tail
        self.interval = _number(_INTERVAL, body, 0) / 1000
        self.burst = 1 if self.interval else max(1, burst)
        self.bursts = repeat * self.burst
        self.schedule()

    def schedule(self) -> None:
        if not self.scheduled and not self.paused:
            self.scheduled = True
            loop = asyncio.get_running_loop()
            if self.interval:
                loop.call_later(self.interval, self.step)
            else:
                loop.call_soon(self.step)

    def step(self) -> None:
        self.scheduled = False
        transport = self.transport
        if transport is None or self.paused:
            return
        if self.left >= self.burst:
            self.left -= self.burst
            transport.write(self.bursts)
            self.schedule()
        elif self.left > 0:
            transport.write(self.repeat * self.left)
            self.left = 0
            self.schedule()
        elif self.tail:
            transport.write(self.tail)
            self.tail = b""

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.left > 0 or self.tail:
            self.schedule()


TAGS_BYTES = TAGS.encode()
GENERATED_BYTES = GENERATED.encode()
_CACHE: dict[tuple[object, ...], tuple[bytes, ...]] = {}


def _number(pattern: re.Pattern[bytes], body: bytes, default: int) -> int:
    found = pattern.search(body)
    return int(found.group(1)) if found else default


def _cached(key: tuple[object, ...], make: Callable[..., tuple[bytes, ...]]) -> tuple[bytes, ...]:
    parts = _CACHE.get(key)
    if parts is None:
        parts = _CACHE[key] = make(*key[1:])
    return parts


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Connection, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="the benchmark's generator upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of uvicorn[standard]
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

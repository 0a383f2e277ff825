"""The load client for streams, uploads and request series: raw asyncio + httptools.

One ``Connection`` is one keep-alive HTTP/1.1 connection driven by a C parser. For each
response it records when the request was written, when the first body bytes arrived
(time to first token: the upstream sends the first token with its headers), when the
response ended, the body bytes and how many times a marker occurs in the decoded body
(``\\n`` ends an NDJSON line, ``\\n\\n`` an SSE event), plus whether a watched string
(``"usage"``) appeared.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import httptools

_TAIL = 16


@dataclass
class Result:
    status: int = 0
    sent: float = 0.0
    first: float | None = None
    done: float = 0.0
    body_bytes: int = 0
    events: int = 0
    watched: int = 0
    # Body pieces the parser handed over: HTTP chunks as they arrived, after any merging.
    pieces: int = 0

    @property
    def ttft(self) -> float:
        return (self.first if self.first is not None else self.done) - self.sent


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run on uvloop when it is there, as the servers do."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _spanning(tail: bytes, body: bytes, pattern: bytes) -> int:
    """Occurrences of ``pattern`` that start in ``tail`` and end in ``body``."""
    if len(pattern) < 2:
        return 0
    return (tail[-(len(pattern) - 1) :] + body[: len(pattern) - 1]).count(pattern)


class Connection(asyncio.Protocol):
    def __init__(self, marker: bytes, watch: bytes | None) -> None:
        self.marker = marker
        self.watch = watch
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Result] | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.result = Result()
        self.tail = b""

    @classmethod
    async def open(cls, port: int, marker: bytes = b"\n", watch: bytes | None = None) -> Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: cls(marker, watch), "127.0.0.1", port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.writable.set()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc}"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(exc)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def on_body(self, body: bytes) -> None:
        result = self.result
        if result.first is None:
            result.first = time.perf_counter()
        result.body_bytes += len(body)
        result.pieces += 1
        tail = self.tail
        result.events += body.count(self.marker) + _spanning(tail, body, self.marker)
        if self.watch is not None:
            result.watched += body.count(self.watch) + _spanning(tail, body, self.watch)
        self.tail = body[-_TAIL:]

    def on_message_complete(self) -> None:
        self.result.done = time.perf_counter()
        self.result.status = self.parser.get_status_code()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.result)

    async def request(self, head: bytes, body: bytes = b"", *, upload: int = 0) -> Result:
        """Send ``head`` + ``body``, then ``upload`` more bytes of zeros; await the answer."""
        assert self.transport is not None, "connection closed"
        self.waiter = asyncio.get_running_loop().create_future()
        self.result = Result(sent=time.perf_counter())
        self.tail = b""
        self.transport.write(head + body)
        block = bytes(1 << 20)
        left = upload
        while left > 0:
            await self.writable.wait()
            if self.transport is None:
                break
            self.transport.write(block[: min(left, len(block))])
            left -= min(left, len(block))
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def post(path: str, body: bytes, *, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n"
        f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    ).encode()


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n\r\n".encode()


@dataclass
class Batch:
    """The results of many requests on ``concurrency`` connections, and the wall time."""

    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0


async def many(
    port: int,
    head: bytes,
    body: bytes,
    *,
    concurrency: int,
    total: int,
    marker: bytes = b"\n",
    watch: bytes | None = None,
    every: int = 0,
    on_every: Callable[[int], Awaitable[None]] | None = None,
) -> Batch:
    """``total`` requests over ``concurrency`` keep-alive connections; ``on_every(n)`` is
    awaited after each ``every`` completed requests (the RSS series)."""
    connections = [await Connection.open(port, marker, watch) for _ in range(concurrency)]
    batch = Batch()
    issued = 0
    checkpoint = asyncio.Lock()

    async def worker(connection: Connection) -> None:
        nonlocal issued
        while issued < total:
            issued += 1
            result = await connection.request(head, body)
            batch.results.append(result)
            if every and on_every is not None and len(batch.results) % every == 0:
                async with checkpoint:
                    await on_every(len(batch.results))

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(connection) for connection in connections))
    finally:
        batch.seconds = time.perf_counter() - started
        for connection in connections:
            connection.close()
    return batch

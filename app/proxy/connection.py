"""One HTTP/1.1 connection to Ollama: an asyncio protocol with httptools' response parser.

A connection carries one exchange at a time. The forwarder writes the request head and
body (``write``, ``drain``) and reads the answer from the ``Response`` it got back from
``begin``: the status and raw headers once they are complete, then the body as it arrives,
every piece the parser produced since the last read joined into one. Nothing is decoded
or decompressed.

Flow control runs both ways: a client that reads slowly pauses the reading from Ollama
(``_HIGH_WATER``), and an upload waits while Ollama's socket buffer is full, so neither a
long answer nor a multi-GB upload is ever held in memory.

Errors are turned into ``UpstreamError`` here, where they happen.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

import httptools

from app.proxy.errors import UpstreamError

# Unread response bytes above which reading from Ollama pauses until the client catches up.
_HIGH_WATER = 1 << 20
# Request bodies up to this size go out in the same write as the head.
_JOIN_MAX = 64 * 1024


class Pool(Protocol):
    """Where a connection goes when its exchange is over (``app.proxy.upstream.Upstream``)."""

    def checkin(self, conn: UpstreamConnection) -> None: ...

    def forget(self, conn: UpstreamConnection) -> None: ...


class _HeadOnly(Exception):
    """Stops the parser after the head of an answer to HEAD (httptools cannot skip a body)."""


class _Unexpected(Exception):
    """Stops the parser at bytes that follow a complete answer."""


class Response:
    """Ollama's answer as it arrives: ``status`` and ``headers`` once ``begin`` returns."""

    __slots__ = (
        "_conn",
        "_waiter",
        "buffered",
        "chunks",
        "complete",
        "error",
        "got_bytes",
        "head_done",
        "head_only",
        "headers",
        "informational",
        "keep_alive",
        "status",
    )

    def __init__(self, conn: UpstreamConnection, *, head_only: bool) -> None:
        self._conn = conn
        self._waiter: asyncio.Future[None] | None = None
        self.head_only = head_only
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.head_done = False
        self.informational = False
        self.complete = False
        self.keep_alive = False
        self.got_bytes = False
        self.error: UpstreamError | None = None

    @property
    def content_length(self) -> int | None:
        for name, value in self.headers:
            if name.lower() == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    @property
    def content_type(self) -> bytes:
        return next((v for k, v in self.headers if k.lower() == b"content-type"), b"")

    async def head(self) -> None:
        """Wait for the status line and headers."""
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._wait()

    async def read(self) -> bytes:
        """The body bytes that arrived since the last read; ``b""`` once the body is over."""
        while not self.chunks:
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait()
        return self.take()

    async def read_all(self) -> bytes:
        """The whole body (only for bodies known to be small)."""
        while not self.complete:
            if self.error is not None:
                raise self.error
            await self._wait()
        return self.take()

    def take(self) -> bytes:
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if self.buffered > _HIGH_WATER:
            self._conn.resume_reading()
        self.buffered = 0
        return body

    @property
    def drained(self) -> bool:
        """True when the answer is complete and everything in it was read."""
        return self.complete and not self.chunks

    def release(self) -> None:
        """Hand the connection back: kept for reuse only after a complete, kept-alive answer."""
        self._conn.finish(self)

    async def _wait(self) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class UpstreamConnection(asyncio.Protocol):
    """The protocol object of one connection; ``begin`` starts an exchange on it."""

    def __init__(self, upstream: str, pool: Pool) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.closed = False
        # Served an exchange before: a failure before any answer may be a stale keep-alive.
        self.reused = False
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._response: Response | None = None
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- the forwarder's side ------------------------------------------------------------

    def begin(self, head: bytes, body: bytes, *, head_only: bool) -> Response:
        """Send a request head, and the body with it when it is at hand."""
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            raise self._lost_error()
        response = self._response = Response(self, head_only=head_only)
        if len(body) <= _JOIN_MAX:
            # One write, so one segment, for the usual small request.
            transport.write(head + body if body else head)
        else:
            transport.write(head)
            transport.write(body)
        return response

    def write(self, data: bytes) -> None:
        """A piece of a streamed request body (dropped once the connection is closed)."""
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while Ollama's side of the connection cannot take more (or it closed)."""
        if self.closed or not self._write_paused:
            return
        waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
        await waiter

    def finish(self, response: Response) -> None:
        self._response = None
        if not (response.complete and response.keep_alive) or self.closed:
            # Mid-answer (the client left, or Ollama broke off): closing the connection is
            # how Ollama learns of it and stops generating.
            self.close()
            return
        self.reused = True
        self._pool.checkin(self)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not derive from asyncio.Transport, but behave as one.)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        response = self._response
        if response is None or response.complete:
            # Bytes nobody asked for: this connection cannot be trusted with another request.
            if response is not None:
                response.keep_alive = False
            self.close()
            return
        response.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if response.head_only and response.head_done:
                # The parser expects the body that a HEAD answer announces but never sends:
                # a fresh one reads the next answer, if nothing followed the head.
                self._parser = httptools.HttpResponseParser(self)
                if not data.endswith(b"\r\n\r\n"):
                    response.keep_alive = False
            else:
                response.error = UpstreamError(
                    "protocol", f"invalid response from Ollama at {self.upstream}: {exc}"
                )
                self.close()
        response.wake()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self._response
        if response is not None and not response.complete and response.error is None:
            if response.head_done and not _framed(response):
                # A body without length or chunking ends where the connection ends.
                response.complete = True
                response.keep_alive = False
            else:
                response.error = self._lost_error()
            response.wake()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._pool.forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        response = self._response
        assert response is not None
        if response.complete:
            # A second answer to one request: stop here, and never reuse this connection.
            response.keep_alive = False
            raise _Unexpected

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._response is not None
        self._response.headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None
        status = self._parser.get_status_code()
        if status < 200:
            # 1xx informational answers (103 Early Hints) precede the real one.
            response.informational = True
            response.headers = []
            return
        response.status = status
        response.keep_alive = self._parser.should_keep_alive()
        response.head_done = True
        if response.head_only or status in (204, 304):
            response.complete = True
            if response.head_only:
                raise _HeadOnly

    def on_body(self, body: bytes) -> None:
        response = self._response
        assert response is not None
        response.chunks.append(body)
        response.buffered += len(body)
        if response.buffered > _HIGH_WATER and not self._reading_paused:
            assert self.transport is not None
            self._reading_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        response = self._response
        assert response is not None
        if response.informational:
            response.informational = False
            return
        response.complete = True

    # --------------------------------------------------------------------------------------

    def _lost_error(self) -> UpstreamError:
        response = self._response
        if response is not None and response.head_done:
            return UpstreamError(
                "reset", f"Ollama at {self.upstream} broke off the response unfinished"
            )
        return UpstreamError("reset", f"Ollama at {self.upstream} closed the connection")


def _framed(response: Response) -> bool:
    """Whether the answer says where its body ends (a length, or chunked encoding)."""
    for name, value in response.headers:
        lname = name.lower()
        if lname == b"content-length" or (
            lname == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            return True
    return False

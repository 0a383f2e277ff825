"""The forwarder: a bare ASGI app that relays one request to Ollama and its answer back.

It is deliberately not a FastAPI route: routing, request objects and an httpx pool cost
more per request than the whole relay (see the note on issue 2 and ``bench/``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from app.proxy.connection import Response
from app.proxy.errors import UpstreamError, error_body, send_error_answer, stream_error_event
from app.proxy.headers import client_response_headers, request_head
from app.proxy.upstream import Upstream
from app.types import Receive, Scope, Send

log = logging.getLogger(__name__)

# Bodies up to this size that carry a Content-Length are read whole and sent in one write:
# one ASGI send instead of two for the common small JSON answer.
_SMALL_BODY = 64 * 1024
# How long a request runs before the proxy starts watching for its client to leave.
_WATCH_AFTER = 0.05


class Tap(Protocol):
    """What watches one exchange (``app.exchange.ExchangeTap``); the forwarder only feeds it.

    ``begin`` and ``response_chunk`` may change the bytes (usage injection); every other
    method only observes. A tap never raises.
    """

    request_bytes: int

    @property
    def inspect_request(self) -> bool: ...

    def begin(self, body: bytes | None) -> bytes | None: ...

    def response_start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    def response_chunk(self, chunk: bytes) -> bytes: ...

    def response_end(self) -> bytes: ...

    def close(self, *, client_gone: bool, error_reason: str | None, error: str | None) -> None: ...


class Taps(Protocol):
    def open(self, scope: Scope) -> Tap: ...


class _ClientGone(Exception):
    """The client went away while its request body was still being read."""


class _Exchange:
    """The per-request state that the disconnect watcher and the relay share.

    Watching for a disconnect takes a task that waits on ``receive()``; creating and
    cancelling it halves the proxy's throughput on small requests. So the watch starts only
    once a request has run for ``_WATCH_AFTER`` seconds: the quick ones, which are most, never
    pay for it, and a client leaving a long generation is noticed within that delay.
    """

    __slots__ = (
        "client_gone",
        "error",
        "error_reason",
        "finished",
        "last_sent",
        "relay_task",
        "timer",
        "watcher",
    )

    def __init__(self) -> None:
        self.client_gone = False
        self.error_reason: str | None = None
        self.error: str | None = None
        self.finished = False
        # The last body piece sent to the client: whether an error event needs a line break.
        self.last_sent = b""
        self.relay_task = asyncio.current_task()
        self.timer: asyncio.TimerHandle | None = None
        self.watcher: asyncio.Task[None] | None = None

    def watch(self, receive: Receive) -> None:
        """Once the request body is read, arrange to notice the client leaving."""
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(_WATCH_AFTER, self._start_watcher, receive)

    def _start_watcher(self, receive: Receive) -> None:
        self.timer = None
        if not self.finished:
            self.watcher = asyncio.create_task(self._watch(receive), name="proxy-disconnect-watch")

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self.finished and self.relay_task is not None:
                    self.client_gone = True
                    self.relay_task.cancel()
                return

    def stop_watching(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()


class Forwarder:
    def __init__(self, upstream: Upstream, taps: Taps) -> None:
        self.upstream = upstream
        self.taps = taps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            # Ollama speaks no WebSocket; refuse the upgrade as it would.
            await send({"type": "websocket.close", "code": 1008})
            return
        tap = self.taps.open(scope)
        exchange = _Exchange()
        try:
            await self._forward(scope, receive, send, tap, exchange)
        except asyncio.CancelledError:
            if not exchange.client_gone:
                raise
            # Our own watcher cancelled us; the request ends here and nothing above should
            # see a cancellation.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.uncancel()
        finally:
            exchange.stop_watching()
            tap.close(
                client_gone=exchange.client_gone,
                error_reason=exchange.error_reason,
                error=exchange.error,
            )

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, tap: Tap, exchange: _Exchange
    ) -> None:
        upstream = self.upstream
        target = upstream.target(
            scope.get("raw_path") or scope["path"].encode(), scope["query_string"]
        )
        headers = upstream.headers(scope["headers"])
        first = await receive()
        if first["type"] == "http.disconnect":
            exchange.client_gone = True
            return
        body: bytes = first.get("body", b"")
        more: bool = first.get("more_body", False)
        if more and tap.inspect_request:
            body, more = await _read_for_inspection(body, receive, exchange)
        method: str = scope["method"]
        if more:
            # Too large to inspect, or not worth it (blob uploads): stream it as it comes.
            tap.begin(None)
            head, chunked = request_head(method, target, headers, body_length=None)
            data: bytes | AsyncIterator[bytes] = _stream_body(body, receive, exchange, tap)
        else:
            sent = tap.begin(body) if tap.inspect_request else tap.begin(None)
            if sent is not None:
                body = sent  # possibly rewritten (usage injection); the length follows it
            tap.request_bytes = tap.request_bytes or len(body)
            head, chunked = request_head(method, target, headers, body_length=len(body))
            data = body
            exchange.watch(receive)
        await self._relay(method, head, data, chunked, scope["path"], send, tap, exchange)

    async def _relay(
        self,
        method: str,
        head: bytes,
        data: bytes | AsyncIterator[bytes],
        chunked: bool,
        path: str,
        send: Send,
        tap: Tap,
        exchange: _Exchange,
    ) -> None:
        try:
            response = await self.upstream.send(method, head, data, chunked=chunked)
        except _ClientGone:
            raise asyncio.CancelledError from None
        except UpstreamError as error:
            if exchange.client_gone:
                raise asyncio.CancelledError from error
            exchange.error_reason, exchange.error = error.reason, error.message
            log.warning("%s %s: %s", method, path, error.message)
            await _send_error(send, path, error)
            return
        try:
            await self._relay_response(response, path, send, tap, exchange)
        finally:
            # Kept for reuse only after a complete answer; otherwise closing the connection
            # is how Ollama learns the client is gone: it stops generating.
            response.release()

    async def _relay_response(
        self, response: Response, path: str, send: Send, tap: Tap, exchange: _Exchange
    ) -> None:
        status = response.status
        headers = client_response_headers(response.headers)
        tap.response_start(status, headers)
        start = {"type": "http.response.start", "status": status, "headers": headers}
        started = False
        try:
            if not response.complete:
                length = response.content_length
                if length is None or length > _SMALL_BODY:
                    started = True
                    await send(start)
                    await self._relay_body(response, send, tap, exchange)
                    return
            # A small answer, or one that is already here whole: one write for the body.
            body = tap.response_chunk(await response.read_all()) + tap.response_end()
            exchange.finished = True
            started = True
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})
        except UpstreamError as error:
            exchange.error_reason, exchange.error = error.reason, error.message
            exchange.finished = True
            if not started:
                # Ollama broke off a small answer that was being read whole: nothing of it
                # reached the client, which gets a clean error instead of a cut body.
                log.warning("%s: %s", path, error.message)
                tap.response_start(502, _ERROR_HEADERS)
                await _send_error(send, path, error)
                return
            log.warning("%s: %s (mid-response)", path, error.message)
            held = tap.response_end()
            after = (exchange.last_sent[-2:] + held)[-2:]
            tail = stream_error_event(path, response.content_type, error.message, after=after)
            if tail is not None:
                await send({"type": "http.response.body", "body": held + tail, "more_body": False})
            # Otherwise there is no way to say it in this body: return without completing it,
            # so uvicorn drops the connection and the client sees a truncated response, as it
            # would directly.

    async def _relay_body(
        self, response: Response, send: Send, tap: Tap, exchange: _Exchange
    ) -> None:
        """A streamed or large body, passed on piece by piece as it arrives."""
        while chunk := await response.read():
            out = tap.response_chunk(chunk)
            if response.drained:
                # The last piece: the end of the body goes out in the same write.
                exchange.finished = True
                out += tap.response_end()
                await send({"type": "http.response.body", "body": out, "more_body": False})
                return
            if out:
                exchange.last_sent = out
                await send({"type": "http.response.body", "body": out, "more_body": True})
        exchange.finished = True
        await send({"type": "http.response.body", "body": tap.response_end(), "more_body": False})


# The most of a request body that is read whole to learn its model and prompt; larger
# bodies (images, blobs) are streamed unread.
INSPECT_MAX_BYTES = 32 * 1024 * 1024


async def _read_for_inspection(
    first: bytes, receive: Receive, exchange: _Exchange
) -> tuple[bytes, bool]:
    """Read the body whole if it fits ``INSPECT_MAX_BYTES``; returns (bytes so far, more)."""
    parts = [first]
    size = len(first)
    while size <= INSPECT_MAX_BYTES:
        message = await receive()
        if message["type"] == "http.disconnect":
            exchange.client_gone = True
            raise asyncio.CancelledError
        chunk = message.get("body", b"")
        parts.append(chunk)
        size += len(chunk)
        if not message.get("more_body"):
            return b"".join(parts), False
    return b"".join(parts), True


async def _stream_body(
    first: bytes, receive: Receive, exchange: _Exchange, tap: Tap
) -> AsyncIterator[bytes]:
    """The client's request body, passed on chunk by chunk and never held whole."""
    if first:
        tap.request_bytes += len(first)
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            exchange.client_gone = True
            raise _ClientGone
        chunk = message.get("body", b"")
        if chunk:
            tap.request_bytes += len(chunk)
            yield chunk
        if not message.get("more_body"):
            break
    exchange.watch(receive)


_ERROR_HEADERS = [(b"content-type", b"application/json; charset=utf-8")]


async def _send_error(send: Send, path: str, error: UpstreamError) -> None:
    await send_error_answer(send, 502, error_body(path, error.message))

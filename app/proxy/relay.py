"""The forwarder: a bare ASGI app that relays one request to Ollama and its answer back.

It is deliberately not a FastAPI route: routing, request objects and an httpx pool cost
more per request than the whole relay (see the note on issue 2 and ``bench/``).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import AsyncIterator
from typing import Protocol

import aiohttp
from yarl import URL

from app.proxy.errors import UpstreamError, classify, error_body, stream_error_event
from app.proxy.headers import client_response_headers, upstream_request_headers
from app.proxy.upstream import Upstream
from app.types import Receive, Scope, Send

log = logging.getLogger(__name__)

# Bodies up to this size that carry a Content-Length are read whole and sent in one write:
# one ASGI send instead of two for the common small JSON answer.
_SMALL_BODY = 64 * 1024
# How long a request runs before the proxy starts watching for its client to leave.
_WATCH_AFTER = 0.05


class Observer(Protocol):
    """What the forwarder reports; the app wiring turns it into metrics."""

    def upstream_reached(self) -> None: ...

    def upstream_failed(self, reason: str) -> None: ...


class _ClientGone(Exception):
    """The client went away while its request body was still being read."""


class _Exchange:
    """The per-request state that the disconnect watcher and the relay share.

    Watching for a disconnect takes a task that waits on ``receive()``; creating and
    cancelling it halves the proxy's throughput on small requests. So the watch starts only
    once a request has run for ``_WATCH_AFTER`` seconds: the quick ones, which are most, never
    pay for it, and a client leaving a long generation is noticed within that delay.
    """

    __slots__ = ("client_gone", "finished", "relay_task", "timer", "watcher")

    def __init__(self) -> None:
        self.client_gone = False
        self.finished = False
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
    def __init__(self, upstream: Upstream, observer: Observer) -> None:
        self.upstream = upstream
        self.observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            # Ollama speaks no WebSocket; refuse the upgrade as it would.
            await send({"type": "websocket.close", "code": 1008})
            return
        started = time.perf_counter()
        method: str = scope["method"]
        path: str = scope["path"]
        url = self.upstream.url_for(scope.get("raw_path") or path.encode(), scope["query_string"])
        headers = upstream_request_headers(
            scope["headers"], self.upstream.host_header, self.upstream.authorization
        )

        first = await receive()
        if first["type"] == "http.disconnect":
            return
        exchange = _Exchange()
        body: bytes = first.get("body", b"")
        data: bytes | AsyncIterator[bytes] | None
        if first.get("more_body"):
            data = _stream_body(body, receive, exchange)
        else:
            data = body or None
            exchange.watch(receive)

        status = 0
        try:
            status = await self._relay(method, url, headers, data, path, send, exchange)
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
        log.info(
            "%s %s %s %.1fms%s",
            method,
            path,
            status or "-",
            (time.perf_counter() - started) * 1000,
            " (client disconnected)" if exchange.client_gone else "",
        )

    async def _relay(
        self,
        method: str,
        url: URL,
        headers: list[tuple[str, str]],
        data: bytes | AsyncIterator[bytes] | None,
        path: str,
        send: Send,
        exchange: _Exchange,
    ) -> int:
        try:
            response = await self.upstream.session.request(
                method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if exchange.client_gone:
                raise asyncio.CancelledError from exc
            error = classify(exc, self.upstream.public_url)
            self.observer.upstream_failed(error.reason)
            log.warning("%s %s: %s", method, path, error.message)
            await _send_error(send, path, error)
            return 502
        self.observer.upstream_reached()
        try:
            await self._relay_response(response, path, send, exchange)
        finally:
            if exchange.finished:
                response.release()
            else:
                # Closing the connection is how Ollama learns the client is gone: it cancels
                # the request context and stops generating.
                response.close()
        return response.status

    async def _relay_response(
        self, response: aiohttp.ClientResponse, path: str, send: Send, exchange: _Exchange
    ) -> None:
        headers = client_response_headers(response.raw_headers)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        length = response.content_length
        try:
            if length is not None and length <= _SMALL_BODY:
                body = await response.read()
                exchange.finished = True
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, OSError) as exc:
            error = classify(exc, self.upstream.public_url)
            self.observer.upstream_failed(error.reason)
            log.warning("%s: %s (mid-response)", path, error.message)
            tail = stream_error_event(
                path, response.headers.get("Content-Type", "").encode("latin-1"), error.message
            )
            exchange.finished = True
            if tail is not None:
                await send({"type": "http.response.body", "body": tail, "more_body": False})
            # Otherwise there is no way to say it in this body: return without completing it,
            # so uvicorn drops the connection and the client sees a truncated response, as it
            # would directly.
            return
        exchange.finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _stream_body(first: bytes, receive: Receive, exchange: _Exchange) -> AsyncIterator[bytes]:
    """The client's request body, passed on chunk by chunk and never held whole."""
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            exchange.client_gone = True
            raise _ClientGone
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body"):
            break
    exchange.watch(receive)


async def _send_error(send: Send, path: str, error: UpstreamError) -> None:
    body = error_body(path, error.message)
    await send(
        {
            "type": "http.response.start",
            "status": 502,
            "headers": [
                (b"content-type", b"application/json; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"date", email.utils.formatdate(usegmt=True).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})

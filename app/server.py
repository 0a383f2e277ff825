"""Running the app under uvicorn with the settings a transparent proxy needs."""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings
from app.main import create_app
from app.service.ports import describe_port_owner

log = logging.getLogger(__name__)


class _HeadHoldingTransport:
    """The client connection's transport, except that a response head waits for its body.

    uvicorn writes the head of a response when the app sends ``http.response.start`` and the
    body on ``http.response.body``: two writes, two syscalls and two TCP segments for every
    small JSON answer, which the forwarder sends back to back. Here the head is held until
    the next write (which takes it along) or the end of the event-loop step, whichever is
    first: one write for a whole small answer, and a stream's head leaves at once.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 1"):
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# Ollama (Go's net/http) answers a request head beyond 1 MiB (+4 KiB slack) with 431;
# httptools has no limit at all, so a client could make the proxy hold any amount.
MAX_HEAD_BYTES = (1 << 20) + 4096
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8"
    b"\r\ncontent-length: 35\r\nconnection: close\r\n\r\n431 Request Header Fields Too Large"
)


class ProxyHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a ``_HeadHoldingTransport``, with Ollama's limit on
    the size of a request head."""

    # Bytes of the request head read so far; -1 within a body, -2 once a head is refused.
    _head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_HeadHoldingTransport(transport, self.loop))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self._head_bytes < 0:
            if self._head_bytes == -1:
                super().data_received(data)
            return
        room = MAX_HEAD_BYTES - self._head_bytes
        self._head_bytes += len(data)
        if len(data) <= room:
            super().data_received(data)
            return
        super().data_received(data[:room])
        if self.transport.is_closing():
            return
        if self._head_bytes > MAX_HEAD_BYTES:  # no callback reset it: the head goes on
            self._head_bytes = -2
            # Answered as Go does: the answer, then a while for the client to read it
            # before the connection closes (closing on unread data would reset it).
            self.transport.write(_TOO_LARGE)
            self.transport.write_eof()
            self.loop.call_later(1.0, self.transport.close)
        else:  # the head ended within the limit: the rest is its body or the next request
            self.data_received(data[room:])

    def _unsupported_upgrade_warning(self) -> None:
        """Not a warning here: with ``ws="none"`` a request asking for an upgrade has been
        served as HTTP, which is what Ollama does with it."""

    def on_headers_complete(self) -> None:
        self._head_bytes = -1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._head_bytes = 0
        super().on_message_complete()


def uvicorn_config(settings: Settings, *, ollama_binary: str | None = None) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings, ollama_binary=ollama_binary),
        host=settings.proxy_host,
        port=settings.proxy_port,
        # httptools (under ProxyHttpProtocol) + uvloop: the fastest parser and loop uvicorn
        # has (uvloop is absent on Windows, where "auto" falls back to asyncio).
        loop="auto",
        http=ProxyHttpProtocol,
        # Ollama speaks no WebSocket: an upgrade request is an HTTP request to it, answered
        # as such (Go's net/http ignores Upgrade), and so it is here. Loading no WebSocket
        # protocol also keeps the websockets package out of the proxy (~0.6 MB at start).
        ws="none",
        lifespan="on",
        # Ollama sends neither; the upstream's own Date header is passed through.
        server_header=False,
        date_header=False,
        access_log=False,
        # The client address is the socket peer; X-Forwarded-* is not trusted by default.
        proxy_headers=False,
        log_config=None,
        # As given: int() turned 0.5 into 0 and `or None` made 0 mean "wait forever".
        # uvicorn hands it to asyncio.wait_for, which takes any float (0: cut at once).
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,  # type: ignore[arg-type]
        # Ollama's clients keep connections open between turns.
        timeout_keep_alive=75,
    )


class StartError(Exception):
    """The proxy cannot start; the message says why and what to do, ``code`` is the exit
    status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def prepare_server(settings: Settings, *, ollama_binary: str | None = None) -> uvicorn.Server:
    """A uvicorn server for the proxy (and, for `serve`, Ollama under it), not yet running.

    Raises StartError when a port it needs is taken or the configuration is unusable."""
    ports = [(settings.proxy_host, settings.proxy_port)]
    if ollama_binary is not None:
        parts = urlsplit(settings.ollama_upstream)
        ports.append((parts.hostname or "127.0.0.1", parts.port or 80))
    for host, port in ports:
        owner = describe_port_owner(host, port)
        if owner is not None:
            raise StartError(owner, 1)
    try:
        config = uvicorn_config(settings, ollama_binary=ollama_binary)
    except ValueError as exc:
        # A bad rules file and the like: the message names the file and what is wrong.
        raise StartError(str(exc), 2) from exc
    return uvicorn.Server(config)


def serve_until_stopped(server: uvicorn.Server, settings: Settings) -> int:
    """Run until SIGTERM/Ctrl-C (or ``server.should_exit``); 0 if it started and stopped."""
    log.info(
        "ollama-metrics proxy listening on http://%s:%s -> %s",
        settings.proxy_host,
        settings.proxy_port,
        settings.ollama_upstream.split("@")[-1],
    )
    try:
        server.run()
    except SystemExit as stop:
        # uvicorn ends a failed start (lifespan startup failed, bind failed) in sys.exit(3),
        # raised while it handles the bind's OSError, which it has logged.
        failure = stop.__context__
        if isinstance(failure, OSError) and failure.errno == errno.EADDRINUSE:
            log.error("port %s is already in use", settings.proxy_port)
        return 1
    return 0 if server.started else 1


def run_proxy(settings: Settings, *, ollama_binary: str | None = None) -> int:
    """Run the proxy (and, for `serve`, Ollama under it) until SIGTERM/Ctrl-C."""
    try:
        server = prepare_server(settings, ollama_binary=ollama_binary)
    except StartError as exc:
        log.error("%s", exc)
        return exc.code
    return serve_until_stopped(server, settings)

"""Where Ollama lives, and the keep-alive pool of connections that reach it.

``Upstream.send`` takes a request head already in wire form and its body (bytes, or an
async iterator for a streamed upload) and returns Ollama's ``Response`` once its head has
arrived. Connections come from a LIFO pool of idle keep-alive connections, and go back to
it only after a complete answer that Ollama did not mark ``Connection: close``.

A pooled connection that Ollama closed while it sat idle fails the next request before any
answer: such a request is sent again, once, on a new connection when that is harmless (an
idempotent method whose body is still at hand); otherwise the client gets a 502.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import ssl
from collections.abc import AsyncIterator
from urllib.parse import unquote, urlsplit

from app.proxy.connection import Response, UpstreamConnection
from app.proxy.errors import UpstreamError, classify
from app.proxy.headers import request_head, upstream_request_headers

# RFC 9110 §9.2.2: methods a server must treat as idempotent, so that a request lost with a
# stale keep-alive connection may be sent again.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# The most of an /api/version answer read, and how long it may take (/test).
VERSION_LIMIT = 64 * 1024
VERSION_TIMEOUT = 10.0


class Upstream:
    """The upstream URL's parts and the pool; ``open()`` and ``close()`` run in the lifespan."""

    def __init__(self, base_url: str, *, connect_timeout: float, max_connections: int) -> None:
        parts = urlsplit(base_url)
        self.host_header = parts.netloc.rpartition("@")[2]
        # Requests, logs, errors and /test use the URL without the credentials it may carry;
        # those travel as an Authorization header instead (e.g. an auth proxy before Ollama).
        self.public_url = base_url.replace(parts.netloc, self.host_header, 1)
        self.authorization: str | None = None
        if parts.username is not None:
            user = unquote(parts.username)
            password = unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.authorization = "Basic " + token
        self._host_value = self.host_header.encode("latin-1")
        self._authorization_value = (
            None if self.authorization is None else self.authorization.encode("latin-1")
        )
        self.base_path = parts.path.rstrip("/").encode("latin-1")
        self.host = parts.hostname or "127.0.0.1"
        https = parts.scheme == "https"
        self.port = parts.port or (443 if https else 80)
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if https else None
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._idle: list[UpstreamConnection] = []
        self._open: set[UpstreamConnection] = set()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closing = False

    async def start(self) -> None:
        self._closing = False

    async def stop(self) -> None:
        """Close the idle connections; those in use close when their exchange ends."""
        self._closing = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    def headers(self, raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The client's request headers as they go to Ollama (see ``upstream_request_headers``)."""
        return upstream_request_headers(raw, self._host_value, self._authorization_value)

    def target(self, raw_path: bytes, query_string: bytes) -> bytes:
        """The request target upstream: the client's, exactly as sent, under the base path."""
        if query_string:
            return self.base_path + raw_path + b"?" + query_string
        return self.base_path + raw_path

    async def send(
        self,
        method: str,
        head: bytes,
        body: bytes | AsyncIterator[bytes],
        *,
        chunked: bool = False,
    ) -> Response:
        """Send one request; return the answer once its status and headers are in.

        ``head`` is the request line and headers; ``body`` the whole body (sent in the same
        write as the head) or an iterator of its pieces, framed as chunks if ``chunked``.
        """
        head_only = method == "HEAD"
        replayable = isinstance(body, bytes) and method in IDEMPOTENT
        while True:
            conn = await self._acquire()
            response: Response | None = None
            try:
                if isinstance(body, bytes):
                    response = conn.begin(head, body, head_only=head_only)
                else:
                    response = conn.begin(head, b"", head_only=head_only)
                    await _send_stream(conn, body, chunked=chunked)
                await response.head()
            except UpstreamError:
                conn.close()
                # A connection that served before and failed before any answer: most likely
                # Ollama closed it while it sat idle, and the request never reached it.
                stale = conn.reused and (response is None or not response.got_bytes)
                if stale and replayable:
                    replayable = False
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            return response

    async def get(self, path: str, *, limit: int) -> tuple[int, bytes]:
        """GET ``path`` (``/api/ps``) for the proxy's own use: the status and the whole body.
        Raises ``ConnectionError`` saying why when Ollama cannot be reached, breaks off, or
        answers more than ``limit`` bytes: a stdlib type, so that packages that must not
        import ``app.proxy`` (the /api/ps poller) can be handed this method. The caller sets
        the deadline; a connection left mid-answer is closed, not reused."""
        headers = self.headers([(b"accept", b"application/json")])
        target = self.target(path.encode("latin-1"), b"")
        head, _ = request_head("GET", target, headers, body_length=0)
        try:
            response = await self.send("GET", head, b"")
            try:
                body = bytearray()
                while chunk := await response.read():
                    body += chunk
                    if len(body) > limit:
                        raise ConnectionError(f"answer larger than {limit} bytes")
                return response.status, bytes(body)
            finally:
                response.release()
        except UpstreamError as exc:
            raise ConnectionError(str(exc)) from exc

    async def version(self) -> str | None:
        """Ollama's version from ``/api/version`` (None when it names none); raises
        ``ValueError`` saying why there is no good answer within ``VERSION_TIMEOUT``."""
        timeout = VERSION_TIMEOUT
        try:
            async with asyncio.timeout(timeout):
                status, body = await self.get("/api/version", limit=VERSION_LIMIT)
        except TimeoutError:
            raise ValueError(f"no answer within {timeout:g} s") from None
        except ConnectionError as exc:
            raise ValueError(str(exc)) from None
        if not 200 <= status < 300:
            raise ValueError(f"Ollama answered HTTP {status}")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise ValueError("Ollama's answer is not JSON") from None
        if not isinstance(document, dict):
            raise ValueError("Ollama's answer is not a JSON object")
        version = document.get("version")
        return None if version is None else str(version)

    # -- the pool --------------------------------------------------------------------------

    async def _acquire(self) -> UpstreamConnection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        try:
            async with asyncio.timeout(self._connect_timeout):
                while self._max_connections and len(self._open) >= self._max_connections:
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        if waiter in self._waiters:
                            self._waiters.remove(waiter)
                    while self._idle:
                        conn = self._idle.pop()
                        if not conn.closed:
                            return conn
                return await self._connect()
        except TimeoutError as exc:
            raise UpstreamError(
                "timeout", f"timed out connecting to Ollama at {self.public_url}"
            ) from exc

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        conn = UpstreamConnection(self.public_url, self)
        self._open.add(conn)
        try:
            await loop.create_connection(
                lambda: conn,
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self._ssl is not None else None,
            )
        except OSError as exc:
            self.forget(conn)
            raise classify(exc, self.public_url) from exc
        except BaseException:
            self.forget(conn)
            raise
        return conn

    def checkin(self, conn: UpstreamConnection) -> None:
        """A connection whose exchange ended cleanly: keep it for the next request."""
        if self._closing:
            conn.close()
            return
        self._idle.append(conn)
        self._wake_one()

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection that closed (either side), or never opened."""
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


async def _send_stream(
    conn: UpstreamConnection, body: AsyncIterator[bytes], *, chunked: bool
) -> None:
    """Pass a streamed request body on as it comes, waiting whenever Ollama's buffer is full."""
    async for piece in body:
        if conn.closed:
            break  # Ollama closed early; its answer (if any) says why
        if chunked:
            conn.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        else:
            conn.write(piece)
        await conn.drain()
    else:
        if chunked and not conn.closed:
            conn.write(b"0\r\n\r\n")

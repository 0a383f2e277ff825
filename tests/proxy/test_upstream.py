"""The connection pool (app.proxy.upstream) against scripted asyncio servers, each playing one
Ollama behaviour byte for byte: reuse, stale connections, uploads, the cap, refusals."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest

from app.proxy.connection import Response
from app.proxy.errors import UpstreamError
from app.proxy.headers import request_head
from app.proxy.upstream import Upstream

Handler = Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Server:
    """A scripted upstream; counts connections and keeps every request it read."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
        """One request: its head and its body (de-chunked); None at EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lower = head.lower()
        body = b""
        if b"transfer-encoding: chunked" in lower:
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                body += await reader.readexactly(size)
                await reader.readexactly(2)
            await reader.readexactly(2)
        elif b"content-length: " in lower:
            length = int(lower.split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
        self.requests.append((head, body))
        return head, body


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))


def upstream(url: str, *, max_connections: int = 0, connect_timeout: float = 5) -> Upstream:
    return Upstream(url, connect_timeout=connect_timeout, max_connections=max_connections)


@contextlib.asynccontextmanager
async def serving(
    handler: Handler, *, max_connections: int = 0, connect_timeout: float = 5
) -> AsyncIterator[tuple[Server, Upstream]]:
    """A scripted server and a pool to it, closed in that order."""
    async with Server(handler) as server:
        pool = upstream(
            server.url, max_connections=max_connections, connect_timeout=connect_timeout
        )
        try:
            yield server, pool
        finally:
            await pool.stop()


def head_for(method: str, path: bytes, body_length: int | None = 0) -> bytes:
    return request_head(method, path, [(b"Host", b"u")], body_length=body_length)[0]


async def body_of(response: Response) -> bytes:
    parts = []
    while chunk := await response.read():
        parts.append(chunk)
    response.release()
    return b"".join(parts)


async def get(pool: Upstream, path: bytes = b"/api/tags", method: str = "GET") -> bytes:
    response = await pool.send(method, head_for(method, path), b"")
    return await body_of(response)


def keep_alive(answer: bytes = OK) -> Handler:
    async def handler(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await server.read(reader) is not None:
            writer.write(answer)
            await writer.drain()

    return handler


@pytest.mark.process
def test_connections_are_reused_after_complete_answers() -> None:
    async def main() -> None:
        async with serving(keep_alive()) as (server, pool):
            assert [await get(pool) for _ in range(3)] == [b"{}"] * 3
        assert server.connections == 1
        assert len(server.requests) == 3

    run(main())


def _closes_idle_connections() -> Handler:
    """Answers the first request of each connection, then closes it when the next arrives
    (the race of a keep-alive timeout: the request was sent, nothing comes back)."""

    async def handler(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read(reader)
        writer.write(OK)
        await writer.drain()
        await server.read(reader)

    return handler


@pytest.mark.process
def test_idempotent_request_on_a_stale_connection_is_sent_again() -> None:
    async def main() -> None:
        async with serving(_closes_idle_connections()) as (server, pool):
            assert await get(pool) == b"{}"
            assert await get(pool) == b"{}"
        assert server.connections == 2

    run(main())


@pytest.mark.process
def test_post_on_a_stale_connection_is_a_clear_error_not_a_retry() -> None:
    async def main() -> None:
        async with serving(_closes_idle_connections()) as (server, pool):
            assert await get(pool) == b"{}"
            body = b'{"model":"m"}'
            with pytest.raises(UpstreamError) as caught:
                await pool.send("POST", head_for("POST", b"/api/generate", len(body)), body)
        assert caught.value.reason == "reset"
        assert caught.value.message == f"Ollama at {server.url} closed the connection"
        assert server.connections == 1

    run(main())


async def _pieces(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        await asyncio.sleep(0)
        yield piece


@pytest.mark.process
def test_streamed_bodies_go_chunked_without_a_length_and_raw_with_one() -> None:
    async def main() -> None:
        async with serving(keep_alive()) as (server, pool):
            head, chunked = request_head("POST", b"/api/blobs/x", [], body_length=None)
            assert chunked
            response = await pool.send("POST", head, _pieces(b"abc", b"defg"), chunked=True)
            await body_of(response)
            head, chunked = request_head(
                "POST", b"/api/blobs/x", [(b"content-length", b"7")], body_length=None
            )
            assert not chunked
            response = await pool.send("POST", head, _pieces(b"abc", b"defg"))
            await body_of(response)
        (first_head, first_body), (second_head, second_body) = server.requests
        assert b"Transfer-Encoding: chunked\r\n" in first_head
        assert first_body == second_body == b"abcdefg"
        assert b"content-length: 7\r\n" in second_head
        assert b"Transfer-Encoding" not in second_head

    run(main())


@pytest.mark.process
def test_an_early_answer_to_an_upload_is_relayed() -> None:
    async def handler(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 18\r\nConnection: close\r\n\r\n"
            b'{"error":"digest"}'
        )
        await writer.drain()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0.01)
            yield b"x" * 65536

    async def main() -> None:
        async with serving(handler) as (_server, pool):
            head, _ = request_head("POST", b"/api/blobs/x", [], body_length=None)
            response = await pool.send("POST", head, endless(), chunked=True)
            assert response.status == 400
            assert await body_of(response) == b'{"error":"digest"}'

    run(main())


@pytest.mark.process
def test_the_connection_cap_queues_requests() -> None:
    async def main() -> None:
        async with serving(keep_alive(), max_connections=1) as (server, pool):
            assert await asyncio.gather(*(get(pool) for _ in range(5))) == [b"{}"] * 5
        assert server.connections == 1

    run(main())


@pytest.mark.process
def test_waiting_for_a_capped_pool_times_out_like_a_connect() -> None:
    async def hang(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read()

    async def main() -> None:
        async with serving(hang, max_connections=1, connect_timeout=0.2) as (_server, pool):
            first = asyncio.ensure_future(pool.send("GET", head_for("GET", b"/"), b""))
            await asyncio.sleep(0.05)
            with pytest.raises(UpstreamError) as caught:
                await get(pool)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
        assert caught.value.reason == "timeout"

    run(main())


@pytest.mark.process
def test_refused_connection_is_a_connect_error() -> None:
    async def main() -> None:
        async with Server(keep_alive()) as server:
            url = server.url
        pool = upstream(url)
        with pytest.raises(UpstreamError) as caught:
            await get(pool)
        assert caught.value.reason == "connect"
        assert caught.value.message.startswith(f"cannot connect to Ollama at {url} (")

    run(main())


@pytest.mark.parametrize(
    ("method", "headers", "length", "expected"),
    [
        ("GET", [], 0, b"GET /p HTTP/1.1\r\nHost: u\r\n\r\n"),
        ("POST", [], 0, b"POST /p HTTP/1.1\r\nHost: u\r\nContent-Length: 0\r\n\r\n"),
        (
            "POST",
            [(b"content-length", b"3")],
            3,
            b"POST /p HTTP/1.1\r\nHost: u\r\ncontent-length: 3\r\n\r\n",
        ),
        # A rewritten body (usage injection): the client's length gives way to the new one.
        (
            "POST",
            [(b"content-length", b"3"), (b"x-a", b"1")],
            5,
            b"POST /p HTTP/1.1\r\nHost: u\r\nx-a: 1\r\nContent-Length: 5\r\n\r\n",
        ),
        # A chunked client body that was read whole goes with its length.
        ("POST", [], 4, b"POST /p HTTP/1.1\r\nHost: u\r\nContent-Length: 4\r\n\r\n"),
        (
            "PUT",
            [],
            None,
            b"PUT /p HTTP/1.1\r\nHost: u\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
    ],
)
def test_request_head(
    method: str, headers: list[tuple[bytes, bytes]], length: int | None, expected: bytes
) -> None:
    head, chunked = request_head(method, b"/p", [(b"Host", b"u"), *headers], body_length=length)
    assert head == expected
    assert chunked == (length is None)


def test_upstream_url_parts() -> None:
    pool = Upstream(
        "https://user:p%40ss@ollama.example:8443/base/", connect_timeout=1, max_connections=0
    )
    assert pool.public_url == "https://ollama.example:8443/base/"
    assert (pool.host, pool.port) == ("ollama.example", 8443)
    assert pool.target(b"/api/tags", b"a=1") == b"/base/api/tags?a=1"
    assert pool.authorization == "Basic dXNlcjpwQHNz"
    assert pool.headers([(b"authorization", b"Bearer x"), (b"host", b"proxy")]) == [
        (b"Host", b"ollama.example:8443"),
        (b"Authorization", b"Basic dXNlcjpwQHNz"),
    ]

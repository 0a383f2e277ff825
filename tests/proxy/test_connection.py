"""One connection to Ollama (app.proxy.connection): answers parsed as they arrive, reuse, flow
control, errors; driven over a real socket pair, its far end playing Ollama byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

import pytest

from app.proxy.connection import _HIGH_WATER, Response, UpstreamConnection
from app.proxy.errors import UpstreamError

URL = "http://127.0.0.1:11434"
GET = b"GET /api/tags HTTP/1.1\r\nHost: u\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Pool:
    """The pool a connection reports to (``Upstream``'s role), keeping what it was told."""

    def __init__(self) -> None:
        self.checked_in: list[UpstreamConnection] = []
        self.forgotten: list[UpstreamConnection] = []
        self.told_closed = asyncio.Event()

    def checkin(self, conn: UpstreamConnection) -> None:
        self.checked_in.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self.forgotten.append(conn)
        self.told_closed.set()


class Peer:
    """Ollama's end of the socket pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self) -> bytes:
        """One request as it arrived: its head and its ``Content-Length`` body."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return head + await self.reader.readexactly(length)

    async def send(self, *pieces: bytes) -> None:
        for piece in pieces:
            self.writer.write(piece)
            await self.writer.drain()

    async def eof(self) -> bytes:
        """What else arrives until the proxy's side closes."""
        return await self.reader.read()


async def gone(conn: UpstreamConnection, pool: Pool) -> None:
    """Until the connection has closed and told its pool so."""
    await pool.told_closed.wait()
    assert pool.forgotten == [conn]


Script = Callable[[UpstreamConnection, Pool, Peer], Awaitable[None]]


def exchange(script: Script) -> None:
    """Run ``script`` with a connection whose far end it plays."""

    async def main() -> None:
        ours, theirs = socket.socketpair()
        pool = Pool()
        conn = UpstreamConnection(URL, pool)
        await asyncio.get_running_loop().create_connection(lambda: conn, sock=ours)
        reader, writer = await asyncio.open_connection(sock=theirs)
        try:
            await script(conn, pool, Peer(reader, writer))
        finally:
            conn.close()
            writer.close()
            await gone(conn, pool)
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    asyncio.run(main())


async def body_of(response: Response) -> bytes:
    parts = []
    while chunk := await response.read():
        parts.append(chunk)
    return b"".join(parts)


async def get_ok(conn: UpstreamConnection, peer: Peer) -> bytes:
    """A plain exchange on ``conn``: the body of Ollama's OK."""
    response = conn.begin(GET, b"", head_only=False)
    assert await peer.request() == GET
    await peer.send(OK)
    body = await response.read_all()
    response.release()
    return body


# --- answers, and when the connection is used again --------------------------------------


def test_a_complete_kept_alive_answer_returns_the_connection_to_its_pool() -> None:
    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        response = conn.begin(GET, b"", head_only=False)
        assert await peer.request() == GET
        await peer.send(OK)
        await response.head()
        assert response.status == 200
        assert response.headers == [
            (b"Content-Type", b"application/json"),
            (b"Content-Length", b"2"),
        ]
        assert await response.read_all() == b"{}"
        assert response.drained
        assert response.keep_alive
        assert not conn.reused
        response.release()
        assert pool.checked_in == [conn]
        assert (conn.reused, conn.closed) == (True, False)
        assert await get_ok(conn, peer) == b"{}"  # the next exchange, on the same connection
        assert pool.checked_in == [conn, conn]

    exchange(script)


@pytest.mark.parametrize("size", [0, 10, 64 * 1024, 64 * 1024 + 1, 300_000])
def test_request_bodies_reach_ollama_whole(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    head = b"POST /api/blobs/x HTTP/1.1\r\nHost: u\r\nContent-Length: %d\r\n\r\n" % size

    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        response = conn.begin(head, body, head_only=False)
        assert await peer.request() == head + body
        await peer.send(OK)
        assert await response.read_all() == b"{}"

    exchange(script)


def test_connection_close_answer_is_read_whole_and_not_reused() -> None:
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"

    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        response = conn.begin(GET, b"", head_only=False)
        await peer.request()
        await peer.send(answer)
        assert await body_of(response) == b"hello"
        assert response.complete
        assert not response.keep_alive
        response.release()
        assert pool.checked_in == []
        assert conn.closed
        assert await peer.eof() == b""

    exchange(script)


def test_head_answers_end_with_their_head_and_keep_the_connection() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 295\r\n\r\n"

    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        head = GET.replace(b"GET", b"HEAD", 1)
        response = conn.begin(head, b"", head_only=True)
        assert await peer.request() == head
        await peer.send(answer)
        await response.head()
        assert response.complete
        assert response.content_length == 295
        assert await body_of(response) == b""
        response.release()
        assert pool.checked_in == [conn]
        assert await get_ok(conn, peer) == b"{}"  # the next answer is read as one

    exchange(script)


def test_a_head_answer_followed_by_more_bytes_is_not_reused() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        response = conn.begin(GET.replace(b"GET", b"HEAD", 1), b"", head_only=True)
        await peer.request()
        await peer.send(answer)  # a body HEAD must not get: what follows cannot be trusted
        await response.head()
        assert await body_of(response) == b""
        response.release()
        assert pool.checked_in == []
        assert conn.closed

    exchange(script)


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
def test_answers_without_body(status: bytes) -> None:
    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        response = conn.begin(GET, b"", head_only=False)
        await peer.request()
        await peer.send(b"HTTP/1.1 " + status + b"\r\nDate: x\r\n\r\n")
        await response.head()
        assert response.status == int(status[:3])
        assert response.complete
        assert await body_of(response) == b""
        response.release()
        assert pool.checked_in == [conn]
        assert await get_ok(conn, peer) == b"{}"

    exchange(script)


def test_informational_answers_precede_the_real_one() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"

    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        response = conn.begin(GET, b"", head_only=False)
        await peer.request()
        await peer.send(early, OK)
        await response.head()
        assert response.status == 200
        assert [name for name, _ in response.headers] == [b"Content-Type", b"Content-Length"]
        assert await response.read_all() == b"{}"
        response.release()
        assert pool.checked_in == [conn]

    exchange(script)


def test_body_without_length_ends_with_the_connection() -> None:
    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        response = conn.begin(GET, b"", head_only=False)
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await peer.send(b"part two")
        peer.writer.close()
        assert await body_of(response) == b"part one, part two"
        assert response.complete
        assert not response.keep_alive
        response.release()
        assert pool.checked_in == []
        assert pool.forgotten == [conn]

    exchange(script)


def test_answer_split_at_every_byte_arrives_whole() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b'6\r\n{"a":1\r\n2\r\n}\n\r\n7\r\n{"b":2}\r\n1\r\n\n\r\n0\r\n\r\n'
    )

    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        response = conn.begin(GET, b"", head_only=False)
        await peer.request()
        for i in range(len(answer)):
            await peer.send(answer[i : i + 1])
            await asyncio.sleep(0)  # lets each byte arrive on its own
        await response.head()
        assert response.status == 200
        assert (b"Transfer-Encoding", b"chunked") in response.headers
        assert await body_of(response) == b'{"a":1}\n{"b":2}\n'  # de-chunked, nothing else
        response.release()
        assert pool.checked_in == [conn]

    exchange(script)


# --- errors ----------------------------------------------------------------------------


def test_a_close_before_any_answer_is_a_reset() -> None:
    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        response = conn.begin(GET, b"", head_only=False)
        await peer.request()
        peer.writer.close()
        with pytest.raises(UpstreamError) as caught:
            await response.head()
        assert caught.value.reason == "reset"
        assert caught.value.message == f"Ollama at {URL} closed the connection"
        # Nothing came back: the pool may take the request as never received.
        assert not response.got_bytes

    exchange(script)


def test_answer_cut_mid_body_is_a_reset() -> None:
    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        response = conn.begin(GET, b"", head_only=False)
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        peer.writer.close()
        assert await response.read() == b"only this"
        with pytest.raises(UpstreamError) as caught:
            await response.read()
        response.release()
        assert caught.value.reason == "reset"
        assert caught.value.message == f"Ollama at {URL} broke off the response unfinished"
        assert pool.checked_in == []

    exchange(script)


def test_garbage_is_a_protocol_error() -> None:
    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        response = conn.begin(GET, b"", head_only=False)
        await peer.request()
        await peer.send(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        with pytest.raises(UpstreamError) as caught:
            await response.head()
        assert caught.value.reason == "protocol"
        assert caught.value.message.startswith(f"invalid response from Ollama at {URL}: ")
        assert response.got_bytes
        assert conn.closed
        assert await peer.eof() == b""

    exchange(script)


def test_abandoned_exchange_closes_the_connection() -> None:
    """A client that leaves mid-answer: the connection is closed, which Ollama sees."""

    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        response = conn.begin(GET, b"", head_only=False)
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        assert await response.read() == b"abc"
        response.release()
        assert await peer.eof() == b""  # EOF: the proxy closed its side
        assert pool.checked_in == []

    exchange(script)


def test_bytes_after_a_complete_answer_retire_the_connection() -> None:
    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        response = conn.begin(GET, b"", head_only=False)
        await peer.request()
        await peer.send(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert await response.read_all() == b"{}"
        await gone(conn, pool)
        response.release()
        assert pool.checked_in == []

    exchange(script)


def test_bytes_on_an_idle_connection_close_it() -> None:
    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        assert await get_ok(conn, peer) == b"{}"
        assert pool.checked_in == [conn]
        await peer.send(OK)  # an answer nobody asked for
        await gone(conn, pool)
        assert conn.closed
        with pytest.raises(UpstreamError) as caught:
            conn.begin(GET, b"", head_only=False)
        assert caught.value.reason == "reset"

    exchange(script)


# --- flow control ----------------------------------------------------------------------


def test_a_slow_reader_pauses_reading_from_ollama() -> None:
    size = 4 * _HIGH_WATER

    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        response = conn.begin(GET, b"", head_only=False)
        await peer.request()
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
        sending = asyncio.ensure_future(peer.send(head, b"z" * size))
        await response.head()
        assert conn.transport is not None
        # The transport tells nobody when it pauses: look at each turn of the loop.
        while conn.transport.is_reading() and response.buffered < size:  # noqa: ASYNC110
            await asyncio.sleep(0)
        assert not conn.transport.is_reading()
        held = response.buffered
        assert _HIGH_WATER < held < size
        for _ in range(20):
            await asyncio.sleep(0)
        assert response.buffered == held  # nothing more is read until the client reads
        assert not sending.done()  # so Ollama waits too
        first = await response.read()
        assert len(first) == held
        assert conn.transport.is_reading()
        rest = await body_of(response)
        assert len(first) + len(rest) == size
        await sending
        response.release()
        assert pool.checked_in == [conn]

    exchange(script)


def upload_head(size: int) -> bytes:
    return b"PUT /api/blobs/x HTTP/1.1\r\nHost: u\r\nContent-Length: %d\r\n\r\n" % size


def test_an_upload_waits_while_ollama_takes_no_more() -> None:
    piece, count = b"u" * 65536, 128

    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        head = upload_head(len(piece) * count)
        response = conn.begin(head, b"", head_only=False)
        for _ in range(count):
            conn.write(piece)  # far more than the socket buffers hold; Ollama reads nothing
        draining = asyncio.ensure_future(conn.drain())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not draining.done()
        assert await peer.request() == head + piece * count
        await draining
        await peer.send(OK)
        assert await response.read_all() == b"{}"

    exchange(script)


def test_a_closed_connection_stops_a_waiting_upload() -> None:
    async def script(conn: UpstreamConnection, pool: Pool, peer: Peer) -> None:
        conn.begin(upload_head(1 << 30), b"", head_only=False)
        for _ in range(128):
            conn.write(b"u" * 65536)
        draining = asyncio.ensure_future(conn.drain())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not draining.done()
        peer.writer.transport.abort()  # Ollama goes away mid-upload
        await draining
        await gone(conn, pool)
        assert conn.closed
        conn.write(b"dropped")  # no error: the rest of the body goes nowhere
        await conn.drain()

    exchange(script)


# --- without a socket ------------------------------------------------------------------


def test_a_connection_never_opened_refuses_an_exchange() -> None:
    conn = UpstreamConnection(URL, Pool())
    with pytest.raises(UpstreamError) as caught:
        conn.begin(GET, b"", head_only=False)
    assert caught.value.reason == "reset"
    assert caught.value.message == f"Ollama at {URL} closed the connection"


@pytest.mark.parametrize(
    ("headers", "length", "content_type"),
    [
        ([(b"Content-Length", b"12"), (b"Content-Type", b"text/plain")], 12, b"text/plain"),
        ([(b"content-LENGTH", b"0"), (b"CONTENT-TYPE", b"a/b")], 0, b"a/b"),
        ([(b"Content-Length", b"twelve")], None, b""),
        ([], None, b""),
    ],
)
def test_length_and_type_are_read_from_the_raw_headers(
    headers: list[tuple[bytes, bytes]], length: int | None, content_type: bytes
) -> None:
    response = Response(UpstreamConnection(URL, Pool()), head_only=False)
    response.headers = headers
    assert response.content_length == length
    assert response.content_type == content_type

"""A raw HTTP/1.1 server that answers like Ollama's ``/api/generate``, with a chosen defect.

The emulator (``tests.emulator``) is a FastAPI app: it cannot send invalid UTF-8 inside a
chunk, break the chunked framing, go silent before its headers, or be SIGKILLed. This server
writes every byte itself. The defect is named per request by the ``X-Fault`` header, which
the proxy passes on unchanged:

* ``ok`` (or no header): a normal stream, ``TOKENS`` lines and the ``done`` line.
* ``reset-after-N``: N lines, then a TCP reset (``SO_LINGER`` 0).
* ``stall-after-N``: N lines, then nothing until the peer closes the connection.
* ``stall-head``: not even a status line until the peer closes.
* ``pause-after-N-S``: N lines, S seconds of silence, then the rest of the stream.
* ``non-json``, ``invalid-utf8``: lines Ollama never sends, among normal ones.
* ``huge-line``: a token line of ``HUGE_LINE_BYTES`` bytes among normal ones.
* ``truncated-chunk``: two lines, then a chunk that ends early, then the connection closes.
* ``bad-chunk-size``: two lines, then a chunk size that is not hexadecimal.
* ``not-http``: an SSH banner instead of an HTTP answer.
* ``sse-cut``: an OpenAI-compatible event stream that stops in the middle of an event.
* ``short-json``: a non-streamed answer that ends before its ``Content-Length``.

``GET`` requests (the proxy's ``/api/ps`` poll, ``/api/version``) get Ollama's JSON answers.

Run in a thread (``FaultyUpstream``) the test sees what was sent on each exchange and when
its peer closed; run as a process (``python -m tests.faulty_upstream --port N``) it can be
killed mid-stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import re
import socket
import struct
import threading
from collections.abc import Iterator

FAULT_HEADER = "X-Fault"
TOKENS = 5
MODEL = "llama3.2:latest"
HUGE_LINE_BYTES = 50 * 1024 * 1024

_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/x-ndjson\r\n"
    b"Date: Fri, 27 Nov 2026 12:00:00 GMT\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
_GET_ANSWERS = {b"/api/version": b'{"version":"0.12.3"}', b"/api/ps": b'{"models":[]}'}
_SSE_HEAD = _HEAD.replace(b"application/x-ndjson", b"text/event-stream")


def token_line(i: int) -> bytes:
    """The i-th generated chunk, as Ollama writes it."""
    obj = {
        "model": MODEL,
        "created_at": "2026-11-27T12:00:00Z",
        "response": f"t{i} ",
        "done": False,
    }
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def done_line(tokens: int = TOKENS) -> bytes:
    obj = {
        "model": MODEL,
        "created_at": "2026-11-27T12:00:01Z",
        "response": "",
        "done": True,
        "done_reason": "stop",
        "total_duration": 2_000_000_000,
        "load_duration": 100_000_000,
        "prompt_eval_count": 7,
        "prompt_eval_duration": 200_000_000,
        "eval_count": tokens,
        "eval_duration": 1_000_000_000,
    }
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def text_of(count: int) -> str:
    """The response text of the first ``count`` token lines."""
    return "".join(f"t{i} " for i in range(count))


def sse_event(i: int) -> bytes:
    """The i-th chunk of an OpenAI-compatible chat stream."""
    delta = {"role": "assistant", "content": f"t{i} "}
    choice = {"index": 0, "delta": delta, "finish_reason": None}
    obj = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [choice],
    }
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def normal_lines() -> list[bytes]:
    return [token_line(i) for i in range(TOKENS)] + [done_line()]


# Lines no Ollama sends: the proxy must pass them on untouched and read past them.
NON_JSON_LINES = [b"<html>502 Bad Gateway</html>\n", b"[1, 2\n", b"not json at all\n", b"\n"]
INVALID_UTF8_LINES = [
    b'{"model":"m","response":"\xff\xfe\xc3(","done":false}\n',
    b"\x80\x81\x82 raw bytes\n",
    b'{"model":"m","response":"\\ud800 lone surrogate","done":false}\n',
]


def huge_line() -> bytes:
    head = b'{"model":"' + MODEL.encode() + b'","response":"'
    tail = b'","done":false}\n'
    return head + b"y" * (HUGE_LINE_BYTES - len(head) - len(tail)) + tail


# A step of an answer: ("chunk", payload) one chunk of the body; ("raw", wire bytes, payload)
# bytes written as they are, of which ``payload`` reaches the client; ("pause", seconds);
# ("stall",) wait for the peer to close; ("reset",); ("close",); ("end",) the last chunk.
Step = tuple[object, ...]


def plan(fault: str) -> list[Step]:
    """What the server does for a fault, step by step."""
    steps: list[Step]
    if fault in ("", "ok"):
        return [("head",), *(("chunk", line) for line in normal_lines()), ("end",)]
    if match := re.fullmatch(r"(reset|stall)-after-(\d+)", fault):
        sent = [("chunk", token_line(i)) for i in range(int(match[2]))]
        return [("head",), *sent, ("reset",) if match[1] == "reset" else ("stall",)]
    if fault == "stall-head":
        return [("stall",)]
    if match := re.fullmatch(r"pause-after-(\d+)-([\d.]+)", fault):
        lines = normal_lines()
        first, rest = lines[: int(match[1])], lines[int(match[1]) :]
        steps = [("head",), *(("chunk", line) for line in first), ("pause", float(match[2]))]
        return [*steps, *(("chunk", line) for line in rest), ("end",)]
    if fault in ("non-json", "invalid-utf8", "huge-line"):
        odd = {
            "non-json": NON_JSON_LINES,
            "invalid-utf8": INVALID_UTF8_LINES,
            "huge-line": [huge_line()],
        }[fault]
        lines = [token_line(0), *odd, *(token_line(i) for i in range(1, TOKENS)), done_line()]
        return [("head",), *(("chunk", line) for line in lines), ("end",)]
    if fault == "truncated-chunk":
        cut = token_line(2)[:20]
        size = b"%x\r\n" % len(token_line(2))
        steps = [("head",), ("chunk", token_line(0)), ("chunk", token_line(1))]
        return [*steps, ("raw", size + cut, cut), ("close",)]
    if fault == "bad-chunk-size":
        steps = [("head",), ("chunk", token_line(0)), ("chunk", token_line(1))]
        return [*steps, ("raw", b"zz\r\n" + token_line(2) + b"\r\n", b""), ("stall",)]
    if fault == "sse-cut":
        cut = sse_event(2)[:30]
        steps = [("sse-head",), ("chunk", sse_event(0)), ("chunk", sse_event(1))]
        return [*steps, ("chunk", cut), ("close",)]
    if fault == "short-json":
        whole = done_line()[:-1]
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        head += b"Content-Length: %d\r\n\r\n" % len(whole)
        return [("raw", head + whole[:40], whole[:40]), ("close",)]
    if fault == "not-http":
        return [("raw", b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", b""), ("close",)]
    raise ValueError(f"unknown fault {fault!r}")


def payload_of(fault: str) -> bytes:
    """The body bytes a client of this fault's answer receives (before any proxy error)."""
    parts = []
    for step in plan(fault):
        if step[0] == "chunk":
            parts.append(step[1])
        elif step[0] == "raw":
            parts.append(step[2])
    return b"".join(parts)  # type: ignore[arg-type]


@dataclasses.dataclass
class Exchange:
    """One request the server answered, as the server saw it."""

    fault: str
    body: bytes
    sent: bytearray = dataclasses.field(default_factory=bytearray)  # payload bytes written
    finished: bool = False  # the plan ran to its end
    peer_closed: bool = False  # the proxy closed the connection while this exchange ran


class FaultyUpstream:
    """The server on ``127.0.0.1:port`` in a thread of its own (``with`` starts and stops)."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.exchanges: list[Exchange] = []
        self.open_connections = 0
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultyUpstream:
        self._thread = threading.Thread(target=self._run, name="faulty-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the faulty upstream did not start")
        return self

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FaultyUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._serve_tracked, "127.0.0.1", self.port)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stopping.wait()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve_tracked(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.serve(reader, writer)
        except asyncio.CancelledError:
            pass  # the server stops; ending quietly spares asyncio's "task cancelled" log
        finally:
            self._tasks.discard(task)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_connections -= 1
            writer.transport.abort()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False once the connection is over."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        headers = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in head.decode().split("\r\n")[1:])
        )
        body = await reader.readexactly(int(headers.get("content-length") or 0))
        method, path = head.split(b" ", 2)[:2]
        if method == b"GET":
            self.exchanges.append(Exchange(f"get {path.decode()}", b""))
            answer = _GET_ANSWERS.get(path, b'{"error":"404 page not found"}')
            status = b"200 OK" if path in _GET_ANSWERS else b"404 Not Found"
            writer.write(
                b"HTTP/1.1 %b\r\nContent-Type: application/json; charset=utf-8\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (status, len(answer), answer)
            )
            await writer.drain()
            return True
        exchange = Exchange(headers.get(FAULT_HEADER.lower(), "ok"), body)
        self.exchanges.append(exchange)
        return await self._answer(exchange, reader, writer)

    async def _answer(
        self, exchange: Exchange, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        for step in plan(exchange.fault):
            kind = step[0]
            if kind == "head":
                writer.write(_HEAD)
            elif kind == "sse-head":
                writer.write(_SSE_HEAD)
            elif kind == "chunk":
                data = step[1]
                assert isinstance(data, bytes)
                writer.write(b"%x\r\n" % len(data))
                for piece in _pieces(data):
                    writer.write(piece)
                    await writer.drain()
                    exchange.sent += piece
                writer.write(b"\r\n")
            elif kind == "raw":
                wire, payload = step[1], step[2]
                assert isinstance(wire, bytes)
                assert isinstance(payload, bytes)
                writer.write(wire)
                exchange.sent += payload
            elif kind == "end":
                writer.write(b"0\r\n\r\n")
            await writer.drain()
            # The proxy sends nothing until an answer is over: while it is silent, a read
            # that returns means the proxy closed the connection.
            if kind == "pause":
                assert isinstance(step[1], float)
                peer = asyncio.ensure_future(reader.read(1))
                await asyncio.wait([peer], timeout=step[1])
                if peer.done():
                    exchange.peer_closed = True
                    return False
                peer.cancel()
                await asyncio.gather(peer, return_exceptions=True)
            elif kind == "stall":
                with contextlib.suppress(ConnectionError):
                    await reader.read(1)
                exchange.peer_closed = True
                return False
            elif kind == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                exchange.finished = True
                return False
            elif kind == "close":
                writer.close()
                exchange.finished = True
                return False
        exchange.finished = True
        return True


def _pieces(data: bytes, size: int = 1 << 16) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port

    async def serve() -> None:
        upstream = FaultyUpstream(port)
        server = await asyncio.start_server(upstream.serve, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()

"""ASGI responses that behave like Go's net/http + gin on the wire.

* Small bodies get Content-Length, bodies over 2 KB go chunked (Go's chunking buffer).
* A stream's status line and headers leave only together with its first line, so an
  error before the first token is still an ordinary JSON error response.
* Streams and slow non-streamed generations stop as soon as the client disconnects,
  as Ollama cancels the request context.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from starlette.types import Receive, Scope, Send

from tests.emulator import gojson

__all__ = [
    "ARRIVAL",
    "JSON",
    "JSON_PLAIN",
    "NDJSON",
    "SSE",
    "SSE_HEADERS",
    "TEXT",
    "ApiError",
    "CollectedResponse",
    "EmulatedReset",
    "Failure",
    "Framer",
    "GoResponse",
    "Item",
    "StreamResponse",
    "arrival_of",
    "encoder_json",
    "go_json",
    "run_until_disconnect",
    "sse_data",
    "sse_event",
    "wait_for_disconnect",
]

JSON = "application/json; charset=utf-8"  # gin c.JSON
JSON_PLAIN = "application/json"  # handlers that set the header themselves
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
TEXT = "text/plain; charset=utf-8"
# What the Anthropic and Responses middlewares set on their event streams.
SSE_HEADERS: Sequence[tuple[str, str]] = (
    ("Cache-Control", "no-cache"),
    ("Connection", "keep-alive"),
)
_CHUNKING_THRESHOLD = 2048
ARRIVAL = "emulator.arrival_ns"  # scope key: time.monotonic_ns() when the request arrived


def arrival_of(scope: Mapping[str, Any]) -> int:
    """When the request arrived (set by the app first thing); now if it was not set."""
    value = scope.get(ARRIVAL)
    return int(value) if isinstance(value, int) else time.monotonic_ns()


class ApiError(Exception):
    """An error answered before any output, with Ollama's status and message."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


class EmulatedReset(Exception):
    """Raised to make uvicorn drop the connection mid-response (fault injection)."""


@dataclass(frozen=True)
class Failure:
    """A runner error after generation started (Ollama's `gin.H{"error": ...}` on the channel).

    llm/llama_server.go Completion/Chat: a llama-server stream cut short ends in "an error
    was encountered while running the model: <detail>", the detail being the last error
    line llama-server logged or, as here, the read error."""

    message: str = "an error was encountered while running the model: unexpected EOF"
    status: int = 500


class GoResponse:
    def __init__(
        self,
        body: bytes = b"",
        status: int = 200,
        content_type: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.body = body
        self.status = status
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers]
        if content_type is not None:
            self.headers.insert(0, (b"content-type", content_type.encode()))
        if len(body) <= _CHUNKING_THRESHOLD:
            self.headers.append((b"content-length", str(len(body)).encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


def go_json(
    value: Any, status: int = 200, *, content_type: str = JSON, newline: bool = False
) -> GoResponse:
    return GoResponse(gojson.dumps_bytes(value, newline=newline), status, content_type)


def encoder_json(value: Any, status: int = 200) -> GoResponse:
    """A body the compat middlewares write with json.Encoder: no charset, trailing newline."""
    return go_json(value, status, content_type=JSON_PLAIN, newline=True)


def sse_data(value: Any) -> bytes:
    """One `data: <json>` server-sent event."""
    return b"data: " + gojson.dumps_bytes(value) + b"\n\n"


def sse_event(name: str, value: Any) -> bytes:
    """One named `event: <name>` + `data: <json>` server-sent event."""
    return f"event: {name}\ndata: ".encode() + gojson.dumps_bytes(value) + b"\n\n"


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def run_until_disconnect(receive: Receive, work: Callable[[], Awaitable[None]]) -> None:
    """Run `work`, cancelling it if the client goes away; its own errors propagate unwrapped."""
    errors: list[Exception] = []
    async with anyio.create_task_group() as group:

        async def listen() -> None:
            await wait_for_disconnect(receive)
            group.cancel_scope.cancel()

        group.start_soon(listen)
        try:
            await work()
        except Exception as exc:  # re-raised below, outside the task group's wrapping
            errors.append(exc)
        group.cancel_scope.cancel()
    if errors:
        raise errors[0]


Item = dict[str, Any] | Failure


class Framer(Protocol):
    """Turns native response objects into one wire dialect (NDJSON, OpenAI SSE, ...)."""

    media_type: str
    headers: Sequence[tuple[str, str]]

    def frames(self, item: dict[str, Any]) -> list[bytes]: ...

    def failure_frames(self, failure: Failure) -> list[bytes]: ...

    def failure_response(self, failure: Failure) -> GoResponse: ...


async def _close(items: AsyncIterator[Item]) -> None:
    close = getattr(items, "aclose", None)
    if close is not None:
        with anyio.CancelScope(shield=True):
            await close()


async def _start_chunked(send: Send, media_type: str, headers: Sequence[tuple[str, str]]) -> None:
    raw = [(b"content-type", media_type.encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": 200, "headers": raw})


class StreamResponse:
    def __init__(self, items: AsyncIterator[Item], framer: Framer) -> None:
        self.items = items
        self.framer = framer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def work() -> None:
            try:
                await self._stream(scope, receive, send)
            finally:
                await _close(self.items)  # frees the model's slot at once

        await run_until_disconnect(receive, work)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False
        try:
            async for item in self.items:
                if isinstance(item, Failure):
                    if not started:
                        await self.framer.failure_response(item)(scope, receive, send)
                        return
                    frames = self.framer.failure_frames(item)
                else:
                    frames = self.framer.frames(item)
                if not frames:
                    continue
                if not started:
                    await _start_chunked(send, self.framer.media_type, self.framer.headers)
                    started = True
                await send(
                    {"type": "http.response.body", "body": b"".join(frames), "more_body": True}
                )
                if isinstance(item, Failure):
                    break
        except EmulatedReset:
            if not started:
                await _start_chunked(send, self.framer.media_type, self.framer.headers)
            raise
        if not started:
            await _start_chunked(send, self.framer.media_type, self.framer.headers)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class CollectedResponse:
    """Non-streamed generation: run the whole stream, then answer once (Ollama's stream:false)."""

    def __init__(
        self,
        items: AsyncIterator[Item],
        finish: Callable[[list[dict[str, Any]]], GoResponse],
        on_failure: Callable[[Failure], GoResponse],
        *,
        on_late_failure: Callable[[Failure], GoResponse] | None = None,
    ) -> None:
        self.items = items
        self.finish = finish
        self.on_failure = on_failure
        self.on_late_failure = on_late_failure or on_failure  # after at least one item

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def work() -> None:
            try:
                await self._collect(scope, receive, send)
            finally:
                await _close(self.items)

        await run_until_disconnect(receive, work)

    async def _collect(self, scope: Scope, receive: Receive, send: Send) -> None:
        collected: list[dict[str, Any]] = []
        response: GoResponse | None = None
        try:
            async for item in self.items:
                if isinstance(item, Failure):
                    late = self.on_late_failure if collected else self.on_failure
                    response = late(item)
                    break
                collected.append(item)
        except EmulatedReset:
            await _start_chunked(send, JSON, ())
            raise
        await (response or self.finish(collected))(scope, receive, send)

"""Driving an ASGI app in-process: one request in, every message it sends out.

For the wrappers and dispatchers that need no socket (``app.middleware``, ``app.main``'s
routing); anything that streams is tested against a real server instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from app.types import ASGIApp, Message, Scope


def http_scope(
    path: str,
    *,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    raw_path: bytes | None = None,
    kind: str = "http",
) -> Scope:
    return {
        "type": kind,
        "method": method,
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode(),
        "query_string": b"",
        "headers": headers or [],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 11434),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
    }


@dataclass
class Exchange:
    """What the app sent for one request."""

    messages: list[Message] = field(default_factory=list)

    @property
    def status(self) -> int:
        return int(next(m["status"] for m in self.messages if m["type"] == "http.response.start"))

    @property
    def headers(self) -> dict[bytes, bytes]:
        start = next(m for m in self.messages if m["type"] == "http.response.start")
        return {name.lower(): value for name, value in start["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(
            m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"
        )

    def json(self) -> Any:
        return json.loads(self.body)


async def call(app: ASGIApp, scope: Scope, body: bytes = b"") -> Exchange:
    """Send one request (``body`` in one message) to ``app``; collect what it answers."""
    exchange = Exchange()
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        exchange.messages.append(message)

    await app(scope, receive, send)
    return exchange


class Recording:
    """An ASGI app that answers 200 ``forwarded`` and keeps every scope it was given: the
    stand-in for the forwarder, to see what would have gone upstream."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.scopes.append(dict(scope))
        if scope["type"] != "http":
            await send({"type": "websocket.accept"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"forwarded", "more_body": False})

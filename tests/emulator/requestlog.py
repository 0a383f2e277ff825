"""Record of every request the emulator received, for tests to inspect.

Bodies are hashed as they stream through `receive`, never stored, so a 1 GB blob
upload costs no memory here.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Message, Receive, Scope, Send

__all__ = ["LoggedRequest", "RequestLog"]


@dataclass
class LoggedRequest:
    seq: int
    method: str
    path: str
    query: str
    headers: list[list[str]]
    body_len: int = 0
    body_done: bool = False
    status: int | None = None
    chunks_sent: int = 0  # non-empty body writes: one per stream line / SSE batch
    bytes_sent: int = 0
    completed: bool = False
    cancelled: bool = False
    aborted: bool = False
    _hasher: Any = field(default_factory=hashlib.sha256, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body_len": self.body_len,
            "body_sha256": self._hasher.hexdigest(),
            "status": self.status,
            "chunks_sent": self.chunks_sent,
            "bytes_sent": self.bytes_sent,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "aborted": self.aborted,
        }

    def wrap(self, receive: Receive, send: Send) -> tuple[Receive, Send]:
        """Instrumented receive/send that keep this entry up to date."""

        async def logged_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                self.body_len += len(body)
                self._hasher.update(body)
                if not message.get("more_body", False):
                    self.body_done = True
            elif message["type"] == "http.disconnect" and not self.completed:
                self.cancelled = True
            return message

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = int(message["status"])
            await send(message)
            if message["type"] != "http.response.body":
                return
            if message.get("body"):
                self.chunks_sent += 1
                self.bytes_sent += len(message["body"])
            if not message.get("more_body", False):
                self.completed = not self.cancelled

        return logged_receive, logged_send


class RequestLog:
    """Entries in arrival order; `seq` keeps counting across `clear()`.

    Bounded so a long benchmark against the emulator cannot exhaust memory: beyond
    `max_entries` the oldest entries are dropped.
    """

    def __init__(self, max_entries: int = 50_000) -> None:
        self._entries: deque[LoggedRequest] = deque(maxlen=max_entries)
        self._seq = 0

    def open(self, scope: Scope) -> LoggedRequest:
        self._seq += 1
        entry = LoggedRequest(
            seq=self._seq,
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=[[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        )
        self._entries.append(entry)
        return entry

    def clear(self) -> None:
        self._entries.clear()

    def snapshot(self) -> list[dict[str, Any]]:
        return [entry.as_json() for entry in self._entries]

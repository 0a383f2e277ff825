"""Dot segments refused: under an upstream base path (``http://gw/ollama``) a target such
as ``/../x`` would leave Ollama's API on a gateway that normalises paths. At the root it
cannot, so the app factory wraps the forwarder in this guard only under a base path."""

from __future__ import annotations

from app.proxy.errors import error_body, send_error_answer
from app.types import ASGIApp, Receive, Scope, Send


class DotSegmentGuard:
    """400, in the path's error shape, for an HTTP target with a ``.`` or ``..`` segment."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if has_dot_segment(scope.get("raw_path") or path.encode()):
                message = "the path must not contain . or .. segments"
                await send_error_answer(send, 400, error_body(path, message))
                return
        await self.app(scope, receive, send)


def has_dot_segment(raw_path: bytes) -> bool:
    """Whether a request target holds a ``.`` or ``..`` segment, percent-encoded or not
    (and counting ``\\`` as a separator, as some servers do)."""
    path = raw_path.partition(b"?")[0].lower()
    if b"." not in path and b"%2e" not in path:
        return False
    path = path.replace(b"%2e", b".").replace(b"%2f", b"/").replace(b"%5c", b"/")
    path = path.replace(b"\\", b"/")
    return any(segment in (b".", b"..") for segment in path.split(b"/"))

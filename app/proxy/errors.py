"""Upstream failures, translated once into the error shape the client's API speaks."""

from __future__ import annotations

import email.utils
import json
import os
import secrets
import socket
import ssl

from app.ollama.endpoints import api_of
from app.types import Send


class UpstreamError(Exception):
    """Ollama could not be reached, or broke off the exchange.

    ``reason`` is a fixed, low-cardinality word (connect, timeout, reset, protocol) fit for a
    metric label; the message is for people.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def classify(exc: BaseException, upstream: str) -> UpstreamError:
    """Map an OS or connection exception to an ``UpstreamError`` (the only place that knows
    them; the upstream client raises ``UpstreamError`` itself for what it detects)."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, TimeoutError):
        return UpstreamError("timeout", f"timed out connecting to Ollama at {upstream}")
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return UpstreamError("reset", f"Ollama at {upstream} closed the connection")
    if isinstance(exc, OSError):
        # Refused, unreachable, unknown host, TLS failures: Ollama cannot be reached.
        if isinstance(exc, socket.gaierror | ssl.SSLError) or not exc.errno:
            why = str(exc.strerror or exc)
        else:
            why = os.strerror(exc.errno).lower()
        return UpstreamError(
            "connect", f"cannot connect to Ollama at {upstream} ({why}): is it running?"
        )
    return UpstreamError("protocol", f"invalid response from Ollama at {upstream}: {exc}")


def error_payload(path: str, message: str) -> dict[str, object]:
    """The JSON error object that the path's clients parse."""
    flavour = api_of(path)
    if flavour == "openai":
        return {"error": {"message": message, "type": "api_error", "param": None, "code": None}}
    if flavour == "anthropic":
        return {
            "type": "error",
            "error": {"type": "api_error", "message": message},
            "request_id": "req_" + secrets.token_hex(12),
        }
    return {"error": message}


def error_body(path: str, message: str) -> bytes:
    """A complete JSON error response body in the shape the path's clients parse."""
    return json.dumps(error_payload(path, message), separators=(",", ":")).encode()


def stream_error_event(
    path: str, content_type: bytes, message: str, *, after: bytes = b""
) -> bytes | None:
    """The last event to send when Ollama breaks off a stream that has already begun.

    Ollama itself reports a failure mid-stream as one more NDJSON line ``{"error": ...}``, and
    every Ollama client handles that; OpenAI clients raise on a ``data:`` event carrying
    ``error``, Anthropic clients on an ``error`` event. For any other body there is no honest
    way to say it, so the caller drops the connection instead.

    ``after`` is the end of what the client already got (its last two bytes): when Ollama
    broke off in the middle of a line or event, that one is ended first, so that the error
    stands on a line (event) of its own instead of being glued to a fragment.
    """
    ctype = content_type.lower()
    if ctype.startswith(b"application/x-ndjson"):
        ended = not after or after.endswith(b"\n")
        return (b"" if ended else b"\n") + json.dumps({"error": message}).encode() + b"\n"
    if not ctype.startswith(b"text/event-stream"):
        return None
    data = json.dumps(error_payload(path, message)).encode()
    if not after or after.endswith(b"\n\n"):
        start = b""
    else:
        start = b"\n" if after.endswith(b"\n") else b"\n\n"
    if api_of(path) == "anthropic":
        return start + b"event: error\ndata: " + data + b"\n\n"
    return start + b"data: " + data + b"\n\n"


async def send_error_answer(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A whole JSON error answer from the proxy itself (``body`` from ``error_body``)."""
    headers = [
        (b"content-type", b"application/json; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
        (b"date", email.utils.formatdate(usegmt=True).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})

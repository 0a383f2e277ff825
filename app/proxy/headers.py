"""Which headers cross the proxy, in each direction."""

from __future__ import annotations

from collections.abc import Iterable

# RFC 9110 §7.6.1 connection-specific fields, plus the legacy ones still seen in the wild.
# `expect` is answered by our own server (100-continue), so it must not travel upstream.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)

STREAM_CONTENT_TYPES = (b"application/x-ndjson", b"text/event-stream")


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names that a `Connection:` header declares hop-by-hop for this message."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def upstream_request_headers(
    raw: Iterable[tuple[bytes, bytes]], upstream_host: bytes, authorization: bytes | None = None
) -> list[tuple[bytes, bytes]]:
    """The client's request headers as they go to Ollama (names lower-case, as ASGI has them).

    ``Host`` is replaced by the upstream's own address: Ollama bound to loopback refuses
    foreign Host values with 403 (DNS-rebinding protection). When the upstream URL carries
    credentials, they replace the client's ``Authorization``.
    """
    raw = list(raw)
    extra = _connection_tokens(raw)
    out = [(b"Host", upstream_host)]
    if authorization is not None:
        out.append((b"Authorization", authorization))
    for name, value in raw:
        if name == b"host" or name in HOP_BY_HOP or name in extra:
            continue
        if authorization is not None and name == b"authorization":
            continue
        out.append((name, value))
    return out


# Methods that carry no body by convention: no ``Content-Length: 0`` is added for them.
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def request_head(
    method: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    body_length: int | None,
) -> tuple[bytes, bool]:
    """The request line and headers in wire form, and whether the body goes chunked.

    ``body_length`` is the length of a body sent whole (it replaces the client's
    ``Content-Length`` if that differs: a rewritten body), or None for a body streamed as it
    arrives, which keeps the client's length or, without one, is sent chunked.
    """
    lines = [method.encode("latin-1"), b" ", target, b" HTTP/1.1\r\n"]
    length: bytes | None = None
    for name, value in headers:
        if name == b"content-length":
            if body_length is not None and value != str(body_length).encode():
                continue
            length = value
        lines += (name, b": ", value, b"\r\n")
    chunked = False
    if length is None:
        if body_length is None:
            lines.append(b"Transfer-Encoding: chunked\r\n")
            chunked = True
        elif body_length or method not in _BODILESS:
            lines += (b"Content-Length: ", str(body_length).encode(), b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines), chunked


def client_response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Ollama's response headers as they go to the client.

    A streamed body (NDJSON, SSE, or any body without a length) is marked
    ``X-Accel-Buffering: no`` so that a reverse proxy in front of us does not hold it back.
    """
    raw = list(raw)
    extra = _connection_tokens(raw)
    out: list[tuple[bytes, bytes]] = []
    has_length = False
    streaming = False
    for name, value in raw:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in extra:
            continue
        if lname == b"content-length":
            has_length = True
        elif lname == b"content-type":
            streaming = value.lower().startswith(STREAM_CONTENT_TYPES)
        out.append((name, value))
    if streaming or not has_length:
        out.append((b"X-Accel-Buffering", b"no"))
    return out

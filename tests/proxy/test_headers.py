from __future__ import annotations

import pytest

from app.proxy.headers import client_response_headers, upstream_request_headers


def test_host_is_rewritten_to_the_upstream() -> None:
    out = upstream_request_headers(
        [(b"host", b"proxy.example.com"), (b"user-agent", b"ollama-python/0.6")], b"127.0.0.1:11435"
    )
    assert out == [(b"Host", b"127.0.0.1:11435"), (b"user-agent", b"ollama-python/0.6")]


@pytest.mark.parametrize(
    "name",
    [b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"expect", b"trailer"],
)
def test_hop_by_hop_request_headers_stay_behind(name: bytes) -> None:
    out = upstream_request_headers([(name, b"x"), (b"x-kept", b"1")], b"u:1")
    assert [n for n, _ in out] == [b"Host", b"x-kept"]


def test_headers_named_by_connection_stay_behind() -> None:
    raw = [
        (b"connection", b"close, X-Secret"),
        (b"x-secret", b"s"),
        (b"authorization", b"Bearer k"),
    ]
    out = upstream_request_headers(raw, b"u:1")
    assert out == [(b"Host", b"u:1"), (b"authorization", b"Bearer k")]


def test_repeated_and_non_ascii_headers_pass_in_order() -> None:
    raw = [(b"x-a", b"1"), (b"x-a", b"2"), (b"x-b", "é".encode("latin-1"))]
    out = upstream_request_headers(raw, b"u:1")
    assert out[1:] == [(b"x-a", b"1"), (b"x-a", b"2"), (b"x-b", "é".encode("latin-1"))]


def test_json_response_keeps_its_headers_and_is_not_marked_streaming() -> None:
    raw = [
        (b"Content-Type", b"application/json; charset=utf-8"),
        (b"Date", b"Fri, 27 Nov 2026 08:00:00 GMT"),
        (b"Content-Length", b"12"),
    ]
    assert client_response_headers(raw) == raw


@pytest.mark.parametrize("ctype", [b"application/x-ndjson", b"text/event-stream; charset=utf-8"])
def test_streams_are_marked_unbuffered(ctype: bytes) -> None:
    raw = [(b"Content-Type", ctype), (b"Transfer-Encoding", b"chunked")]
    out = client_response_headers(raw)
    assert out == [(b"Content-Type", ctype), (b"X-Accel-Buffering", b"no")]


def test_a_body_without_length_counts_as_streaming() -> None:
    out = client_response_headers([(b"Content-Type", b"application/json")])
    assert (b"X-Accel-Buffering", b"no") in out


def test_upstream_credentials_replace_the_clients_authorization() -> None:
    raw = [(b"authorization", b"Bearer client"), (b"x-a", b"1")]
    out = upstream_request_headers(raw, b"u:1", b"Basic dTpw")
    assert out == [(b"Host", b"u:1"), (b"Authorization", b"Basic dTpw"), (b"x-a", b"1")]

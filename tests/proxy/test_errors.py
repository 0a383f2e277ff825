from __future__ import annotations

import json
import socket
import ssl

import pytest

from app.proxy.errors import classify, error_body, stream_error_event


@pytest.mark.parametrize(
    ("path", "check"),
    [
        ("/api/chat", lambda body: body == {"error": "boom"}),
        (
            "/v1/chat/completions",
            lambda body: (
                body["error"]["message"] == "boom" and body["error"]["type"] == "api_error"
            ),
        ),
        (
            "/v1/messages",
            lambda body: (
                body["type"] == "error"
                and body["error"]["message"] == "boom"
                and body["request_id"].startswith("req_")
            ),
        ),
    ],
)
def test_error_body_speaks_the_paths_api(path: str, check: object) -> None:
    body = json.loads(error_body(path, "boom"))
    assert check(body)


def test_ndjson_stream_error_is_one_more_ollama_line() -> None:
    event = stream_error_event("/api/generate", b"application/x-ndjson", "gone")
    assert event == b'{"error": "gone"}\n'


def test_sse_stream_errors_are_events_the_clients_raise_on() -> None:
    openai = stream_error_event("/v1/chat/completions", b"text/event-stream", "gone")
    assert openai is not None
    assert openai.startswith(b"data: ")
    assert openai.endswith(b"\n\n")
    assert json.loads(openai[6:])["error"]["message"] == "gone"
    anthropic = stream_error_event("/v1/messages", b"text/event-stream", "gone")
    assert anthropic is not None
    assert anthropic.startswith(b"event: error\ndata: ")


def test_other_bodies_have_no_stream_error_event() -> None:
    assert stream_error_event("/api/tags", b"application/json", "gone") is None


def test_classify_gives_fixed_reasons() -> None:
    assert classify(ConnectionResetError(), "u").reason == "reset"
    assert classify(BrokenPipeError(), "u").reason == "reset"
    assert classify(TimeoutError(), "u").reason == "timeout"
    assert classify(ValueError("x"), "u").reason == "protocol"


@pytest.mark.parametrize(
    ("exc", "why"),
    [
        (ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)"), "connection refused"),
        (socket.gaierror(-2, "Name or service not known"), "Name or service not known"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), "certificate verify failed"),
        (OSError("Multiple exceptions: a, b"), "Multiple exceptions: a, b"),
    ],
)
def test_unreachable_ollama_is_a_connect_error_that_says_why(exc: OSError, why: str) -> None:
    error = classify(exc, "http://h:1")
    assert error.reason == "connect"
    assert error.message == f"cannot connect to Ollama at http://h:1 ({why}): is it running?"

"""The tap on one exchange, fed by hand as the forwarder feeds it: a request body, the
response head, the body in awkward pieces, the end; then the record the sinks receive.

Every expected value is written out from the wire bytes below, never taken from the code
under test. Time is a fake clock, so durations and time to first token are exact.
"""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

import pytest

from app import exchange
from app.auth import SCOPE_KEY
from app.exchange import ExchangeTap, Recorder
from app.ollama.residency import LoadedModel, Residency
from app.record import ExchangeRecord, ulid_ms
from tests.asgi import http_scope
from tests.support import RecordingSink

NDJSON = [(b"content-type", b"application/x-ndjson")]
SSE = [(b"content-type", b"text/event-stream")]
JSON = [(b"content-type", b"application/json; charset=utf-8")]

CHAT_REQUEST = {
    "model": "llama3.2",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why is the sky blue?"},
    ],
}


def line(obj: dict[str, Any]) -> bytes:
    """One NDJSON line as Ollama's Go encoder writes it (compact, UTF-8 unescaped)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def chat_chunk(content: str) -> bytes:
    return line(
        {
            "model": "llama3.2",
            "created_at": "2026-11-27T12:00:00.5Z",
            "message": {"role": "assistant", "content": content},
            "done": False,
        }
    )


CHAT_DONE = line(
    {
        "model": "llama3.2",
        "created_at": "2026-11-27T12:00:02Z",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "total_duration": 2_000_000_000,
        "load_duration": 100_000_000,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 200_000_000,
        "eval_count": 3,
        "eval_duration": 1_500_000_000,
    }
)
CHAT_STREAM = chat_chunk("The ") + chat_chunk("sky é ") + chat_chunk("scatters 🌈") + CHAT_DONE
CHAT_TEXT = "The sky é scatters 🌈"


def sse(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return b"data: " + data.encode() + b"\n\n"


def openai_chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return sse(
        {
            "id": "chatcmpl-7",
            "object": "chat.completion.chunk",
            "created": 1796212800,
            "model": "llama3.2",
            "system_fingerprint": "fp_ollama",
            "choices": [choice],
        }
    )


# What Ollama streams for /v1/chat/completions; the usage chunk only with include_usage.
OPENAI_EVENTS = [
    openai_chunk({"role": "assistant", "content": "Rayleigh"}),
    openai_chunk({"role": "assistant", "content": " scattering."}),
    openai_chunk({"role": "assistant", "content": ""}, finish="stop"),
]
OPENAI_USAGE = sse(
    {
        "id": "chatcmpl-7",
        "object": "chat.completion.chunk",
        "created": 1796212800,
        "model": "llama3.2",
        "system_fingerprint": "fp_ollama",
        "choices": [],
        "usage": {"prompt_tokens": 31, "completion_tokens": 2, "total_tokens": 33},
    }
)
OPENAI_DONE = sse("[DONE]")


class Clock:
    """Stands in for the ``time`` module in ``app.exchange``: moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_796_212_800.0 + self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(exchange, "time", fake)
    return fake


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


def recorder(sink: RecordingSink, seen: list[str] | None = None, **options: Any) -> Recorder:
    """A recorder as the app builds one, whose categoriser says ``science`` and notes what
    it was asked."""

    def categorise(prompt: str) -> str:
        if seen is not None:
            seen.append(prompt)
        return "science"

    return Recorder(sinks=[sink], categorise=categorise, **options)


def open_tap(rec: Recorder, path: str, *, method: str = "POST") -> ExchangeTap:
    return rec.open(http_scope(path, method=method))


def pieces(body: bytes, *cuts: int) -> list[bytes]:
    """``body`` cut at the offsets ``cuts`` (sorted, each inside the body)."""
    bounds = [0, *sorted(cuts), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds)]


def inside(body: bytes, part: bytes, offset: int = 1) -> int:
    """An offset ``offset`` bytes into the first ``part`` of ``body``."""
    return body.index(part) + offset


def exchange_of(
    tap: ExchangeTap,
    request: bytes | None,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body_pieces: list[bytes],
    *,
    clock: Clock | None = None,
    step: float = 0.0,
) -> tuple[bytes | None, bytes]:
    """Feed a whole exchange the way the forwarder does; return the body sent upstream and
    everything the client received. With a clock, each piece comes ``step`` seconds later."""
    sent = tap.begin(request)
    tap.response_start(status, headers)
    out = b""
    for piece in body_pieces:
        if clock is not None:
            clock.now += step
        out += tap.response_chunk(piece)
    out += tap.response_end()
    return sent, out


def finished(sink: RecordingSink) -> ExchangeRecord:
    (record,) = sink.records
    return record


# -- a native chat stream ------------------------------------------------------------------


def test_a_native_chat_stream_becomes_one_exact_record(clock: Clock, sink: RecordingSink) -> None:
    seen: list[str] = []
    rec = recorder(sink, seen)
    request = json.dumps(CHAT_REQUEST).encode()
    headers = [(b"user-agent", b"ollama-python/0.6.3"), (b"content-type", b"application/json")]
    scope = http_scope("/api/chat", method="POST", headers=headers)
    scope["client"] = ("10.1.2.3", 50123)
    scope[SCOPE_KEY] = "alice"
    tap = rec.open(scope)
    # Cut inside the first line and right after it, inside the two bytes of "é", inside
    # the four of "🌈", inside the last line: the first token counts once its line is whole.
    cut = pieces(
        CHAT_STREAM,
        10,
        CHAT_STREAM.index(b"\n") + 1,
        inside(CHAT_STREAM, "é".encode()),
        inside(CHAT_STREAM, "🌈".encode(), 3),
        inside(CHAT_STREAM, b'"done":true', 4),
    )
    sent = tap.begin(request)
    clock.now = 100.25
    tap.response_start(200, NDJSON)
    out = tap.response_chunk(cut[0])  # the start of the first line, at 100.25
    clock.now = 100.5  # its end: the first token
    for piece in cut[1:]:
        out += tap.response_chunk(piece)
        clock.now += 0.25
    out += tap.response_end()
    clock.now = 103.0
    tap.close(client_gone=False, error_reason=None, error=None)

    assert sent == request  # a native request goes up untouched
    assert out == CHAT_STREAM  # and the answer comes back untouched
    record = finished(sink)
    assert seen == ["Why is the sky blue?"]  # the last user message is the prompt
    assert sink.starts == [(record.id, "/api/chat", "llama3.2:latest")]
    assert (record.method, record.path, record.endpoint) == ("POST", "/api/chat", "/api/chat")
    assert record.operation == "chat"
    assert record.model == "llama3.2:latest"
    assert record.prompt == "Why is the sky blue?"
    assert record.category == "science"
    assert (record.client, record.user_agent, record.api_key) == (
        "10.1.2.3",
        "ollama-python/0.6.3",
        "alice",
    )
    assert (record.status, record.streamed) == (200, True)
    assert record.response == CHAT_TEXT
    assert record.thinking == ""
    assert record.done_reason == "stop"
    assert (record.error, record.upstream_error, record.cancelled) == (None, None, False)
    assert (record.prompt_tokens, record.completion_tokens) == (26, 3)
    assert record.ollama_total_s == 2.0
    assert record.ollama_load_s == 0.1
    assert record.ollama_prompt_eval_s == 0.2
    assert record.ollama_eval_s == 1.5
    assert record.tokens_per_second == 2.0
    assert record.ttft_s == 0.5
    assert record.duration_s == 3.0
    assert record.timestamp == 1_796_212_900.0
    assert ulid_ms(record.id) == 1_796_212_900_000
    assert record.request_body == request.decode()
    assert (record.request_bytes, record.response_bytes) == (len(request), len(CHAT_STREAM))
    assert record.usage_injected is False
    assert record.text_truncated is False


def test_every_single_cut_of_the_stream_reads_the_same(sink: RecordingSink) -> None:
    rec = recorder(sink)
    request = json.dumps(CHAT_REQUEST).encode()
    for cut in range(1, len(CHAT_STREAM)):
        tap = open_tap(rec, "/api/chat")
        _, out = exchange_of(tap, request, 200, NDJSON, pieces(CHAT_STREAM, cut))
        tap.close(client_gone=False, error_reason=None, error=None)
        record = sink.records[-1]
        assert out == CHAT_STREAM, cut
        assert (record.response, record.completion_tokens, record.upstream_error) == (
            CHAT_TEXT,
            3,
            None,
        ), cut
    assert len(sink.records) == len(CHAT_STREAM) - 1


def test_a_stream_cut_short_is_a_midstream_error(sink: RecordingSink) -> None:
    tap = open_tap(recorder(sink), "/api/chat")
    cut = chat_chunk("The ") + chat_chunk("sky")[:20]  # no done line: Ollama stopped early
    exchange_of(tap, json.dumps(CHAT_REQUEST).encode(), 200, NDJSON, [cut])
    tap.close(client_gone=False, error_reason=None, error=None)
    record = finished(sink)
    assert record.status == 200
    assert record.upstream_error == "midstream"
    assert record.error == "the stream ended before Ollama finished it"
    assert record.response == "The "
    assert (record.completion_tokens, record.done_reason) == (None, None)


def test_an_error_line_from_ollama_is_the_records_error(sink: RecordingSink) -> None:
    tap = open_tap(recorder(sink), "/api/generate")
    failure = line({"error": "an error was encountered while running the model: unexpected EOF"})
    body = line({"model": "llama3.2", "response": "Once", "done": False}) + failure
    request = json.dumps({"model": "llama3.2", "prompt": "Tell a story"}).encode()
    _, out = exchange_of(tap, request, 200, NDJSON, pieces(body, len(body) - 7))
    tap.close(client_gone=False, error_reason=None, error=None)
    record = finished(sink)
    assert out == body
    assert record.operation == "text_completion"
    assert record.prompt == "Tell a story"
    assert record.upstream_error == "midstream"
    assert record.error == "an error was encountered while running the model: unexpected EOF"
    assert record.response == "Once"


def test_the_forwarders_own_error_is_kept(sink: RecordingSink) -> None:
    tap = open_tap(recorder(sink), "/api/chat")
    exchange_of(tap, json.dumps(CHAT_REQUEST).encode(), 200, NDJSON, [chat_chunk("The ")])
    reason = "Ollama at http://127.0.0.1:11435 broke off the response unfinished"
    tap.close(client_gone=False, error_reason="reset", error=reason)
    record = finished(sink)
    assert (record.status, record.upstream_error, record.error) == (200, "reset", reason)


# -- the client leaving, Ollama unreachable ------------------------------------------------


def test_a_client_leaving_mid_stream_is_cancelled_not_an_error(sink: RecordingSink) -> None:
    tap = open_tap(recorder(sink), "/api/chat")
    exchange_of(tap, json.dumps(CHAT_REQUEST).encode(), 200, NDJSON, [chat_chunk("The ")])
    tap.close(client_gone=True, error_reason=None, error=None)
    record = finished(sink)
    assert record.cancelled is True
    assert (record.status, record.upstream_error, record.error) == (200, None, None)
    assert record.response == "The "


def test_a_client_leaving_before_any_answer_is_a_499(sink: RecordingSink) -> None:
    tap = open_tap(recorder(sink), "/api/chat")
    tap.begin(json.dumps(CHAT_REQUEST).encode())
    tap.close(client_gone=True, error_reason=None, error=None)
    record = finished(sink)
    assert (record.status, record.cancelled, record.streamed) == (499, True, False)
    assert record.model == "llama3.2:latest"
    assert record.ttft_s is None


def test_a_client_leaving_before_its_request_went_up_still_balances_in_flight(
    sink: RecordingSink,
) -> None:
    tap = open_tap(recorder(sink), "/api/chat")
    tap.close(client_gone=True, error_reason=None, error=None)
    record = finished(sink)
    # Every finished record had its start: the in-flight gauge goes up and down once.
    assert sink.starts == [(record.id, "/api/chat", "")]
    assert (record.status, record.cancelled, record.model, record.category) == (
        499,
        True,
        "",
        "none",
    )


def test_ollama_unreachable_is_a_502_with_the_reason(sink: RecordingSink) -> None:
    tap = open_tap(recorder(sink), "/api/chat")
    tap.begin(json.dumps(CHAT_REQUEST).encode())
    message = "cannot connect to Ollama at http://127.0.0.1:11435 (connection refused)"
    tap.close(client_gone=False, error_reason="connect", error=message)
    record = finished(sink)
    assert (record.status, record.upstream_error, record.error) == (502, "connect", message)
    assert record.cancelled is False


# -- OpenAI-compatible streams and usage injection -----------------------------------------


def test_usage_is_asked_for_and_stripped_so_the_client_sees_its_own_stream(
    clock: Clock, sink: RecordingSink
) -> None:
    rec = recorder(sink)
    asked = {"model": "llama3.2", "stream": True, "messages": [CHAT_REQUEST["messages"][1]]}
    request = json.dumps(asked).encode()
    stream = b"".join(OPENAI_EVENTS) + OPENAI_USAGE + OPENAI_DONE
    # Cut inside "data:", between the two newlines that end an event, inside the usage
    # chunk, and just before [DONE].
    cut = pieces(
        stream,
        2,
        inside(stream, b"\n\n"),
        inside(stream, b'"usage"', 3),
        inside(stream, OPENAI_DONE, 0),
        len(stream) - 1,
    )
    tap = open_tap(rec, "/v1/chat/completions")
    sent, out = exchange_of(tap, request, 200, SSE, cut, clock=clock, step=0.125)
    tap.close(client_gone=False, error_reason=None, error=None)

    assert json.loads(sent or b"") == {**asked, "stream_options": {"include_usage": True}}
    assert out == b"".join(OPENAI_EVENTS) + OPENAI_DONE  # the usage chunk is gone
    record = finished(sink)
    assert record.usage_injected is True
    assert record.request_body == request.decode()  # as the client sent it
    assert (record.prompt_tokens, record.completion_tokens) == (31, 2)
    assert record.response == "Rayleigh scattering."
    assert (record.done_reason, record.upstream_error) == ("stop", None)
    assert record.model == "llama3.2:latest"
    assert record.operation == "chat"
    # The first event is whole with its second newline, in the third piece (at 100.375).
    assert record.ttft_s == 0.375
    assert record.response_bytes == len(stream)


def test_a_client_that_asked_for_usage_gets_every_byte(sink: RecordingSink) -> None:
    options = {"include_usage": True}
    asked = {"model": "llama3.2", "stream": True, "stream_options": options, "messages": []}
    request = json.dumps(asked).encode()
    stream = b"".join(OPENAI_EVENTS) + OPENAI_USAGE + OPENAI_DONE
    tap = open_tap(recorder(sink), "/v1/chat/completions")
    sent, out = exchange_of(
        tap, request, 200, SSE, pieces(stream, 5, len(stream) // 2, len(stream) - 3)
    )
    tap.close(client_gone=False, error_reason=None, error=None)
    assert sent == request
    assert out == stream
    record = finished(sink)
    assert record.usage_injected is False
    assert (record.prompt_tokens, record.completion_tokens) == (31, 2)


def test_without_injection_the_body_and_stream_pass_as_they_are(sink: RecordingSink) -> None:
    asked = {"model": "llama3.2", "stream": True, "messages": [CHAT_REQUEST["messages"][1]]}
    request = json.dumps(asked).encode()
    stream = b"".join(OPENAI_EVENTS) + OPENAI_DONE
    tap = open_tap(recorder(sink, inject_usage=False), "/v1/chat/completions")
    sent, out = exchange_of(tap, request, 200, SSE, pieces(stream, 100))
    tap.close(client_gone=False, error_reason=None, error=None)
    assert (sent, out) == (request, stream)
    record = finished(sink)
    assert record.usage_injected is False
    assert (record.prompt_tokens, record.completion_tokens) == (None, None)
    assert record.response == "Rayleigh scattering."


def test_an_event_stream_without_done_is_a_midstream_error(sink: RecordingSink) -> None:
    asked = {"model": "llama3.2", "stream": True, "messages": []}
    tap = open_tap(recorder(sink, inject_usage=False), "/v1/chat/completions")
    exchange_of(tap, json.dumps(asked).encode(), 200, SSE, [OPENAI_EVENTS[0]])
    tap.close(client_gone=False, error_reason=None, error=None)
    assert finished(sink).upstream_error == "midstream"


# -- other answers -------------------------------------------------------------------------


def test_a_whole_json_answer_is_read_at_its_end(sink: RecordingSink) -> None:
    answer = {
        "model": "llama3.2",
        "response": "Blue light scatters more.",
        "done": True,
        "done_reason": "stop",
        "total_duration": 900_000_000,
        "prompt_eval_count": 12,
        "eval_count": 5,
        "eval_duration": 250_000_000,
    }
    body = json.dumps(answer).encode()
    request = json.dumps({"model": "llama3.2", "prompt": "Why?", "stream": False}).encode()
    tap = open_tap(recorder(sink), "/api/generate")
    _, out = exchange_of(tap, request, 200, JSON, pieces(body, 40))
    tap.close(client_gone=False, error_reason=None, error=None)
    assert out == body
    record = finished(sink)
    assert (record.streamed, record.ttft_s) == (False, None)  # no time to first token
    assert record.response == "Blue light scatters more."
    assert (record.prompt_tokens, record.completion_tokens) == (12, 5)
    assert record.tokens_per_second == 20.0
    assert (record.upstream_error, record.error) == (None, None)


def test_an_error_answer_keeps_ollamas_status_and_message(sink: RecordingSink) -> None:
    body = b'{"error":"model \\"nope\\" not found, try pulling it first"}'
    tap = open_tap(recorder(sink), "/api/chat")
    exchange_of(tap, b'{"model":"nope","messages":[]}', 404, JSON, [body])
    tap.close(client_gone=False, error_reason=None, error=None)
    record = finished(sink)
    # Ollama refused the name: it is kept as sent, without an added ":latest".
    assert (record.status, record.model) == (404, "nope")
    assert record.error == 'model "nope" not found, try pulling it first'
    assert record.upstream_error is None  # Ollama answered; it was not cut off


def test_requests_that_are_not_read_carry_no_facts(sink: RecordingSink) -> None:
    seen: list[str] = []
    tap = open_tap(recorder(sink, seen), "/api/tags", method="GET")
    assert tap.inspect_request is False
    exchange_of(tap, None, 200, JSON, [b'{"models":[]}'])
    tap.close(client_gone=False, error_reason=None, error=None)
    record = finished(sink)
    assert seen == []
    assert (record.model, record.prompt, record.category, record.operation) == (
        "",
        "",
        "none",
        None,
    )
    assert (record.request_body, record.response_bytes) == ("", 13)


def test_only_chat_and_completions_are_categorised(sink: RecordingSink) -> None:
    seen: list[str] = []
    tap = open_tap(recorder(sink, seen), "/api/embed")
    tap.begin(b'{"model":"nomic-embed-text","input":"why is the sky blue"}')
    tap.close(client_gone=False, error_reason=None, error=None)
    assert seen == []
    assert finished(sink).category == "none"
    assert finished(sink).prompt == "why is the sky blue"


def test_texts_are_capped_at_the_limit_and_flagged(sink: RecordingSink) -> None:
    tap = open_tap(recorder(sink, text_limit=8), "/api/chat")
    request = json.dumps(CHAT_REQUEST).encode()
    exchange_of(tap, request, 200, NDJSON, [CHAT_STREAM])
    tap.close(client_gone=False, error_reason=None, error=None)
    record = finished(sink)
    assert record.request_body == request[:8].decode()
    assert record.response == CHAT_TEXT[:8]
    assert record.text_truncated is True
    assert record.completion_tokens == 3  # the counts are read all the same


def test_an_unencodable_model_name_is_made_storable(sink: RecordingSink) -> None:
    tap = open_tap(recorder(sink), "/api/chat")
    request = b'{"model":"llama\\ud800","messages":[{"role":"user","content":"hi \\udfff"}]}'
    tap.begin(request)
    tap.close(client_gone=False, error_reason=None, error=None)
    record = finished(sink)
    assert (record.model, record.prompt) == ("llama\ufffd:latest", "hi \ufffd")
    assert sink.starts[0][2] == "llama\ufffd:latest"  # the metric label too


# -- nothing the tap does may cost the client its answer ----------------------------------


class BrokenReader:
    """A reader with a bug: it fails on its second chunk, or at the end."""

    def __init__(self, *, at_end: bool = False) -> None:
        self.at_end = at_end
        self.fed = 0

    def feed(self, chunk: bytes, now: float) -> bytes:
        self.fed += 1
        if self.fed == 2 and not self.at_end:
            raise RuntimeError("reader bug")
        return chunk

    def end(self, now: float) -> bytes:
        raise RuntimeError("reader bug at the end")


@pytest.mark.parametrize("at_end", [False, True], ids=["mid-stream", "at-the-end"])
def test_a_reader_exception_never_costs_the_client_its_bytes(
    at_end: bool,
    sink: RecordingSink,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(exchange, "reader_for", lambda *args, **kwargs: BrokenReader(at_end=at_end))
    tap = open_tap(recorder(sink), "/api/chat")
    cut = pieces(CHAT_STREAM, 50, 200, 300)
    with caplog.at_level(logging.ERROR, logger="app.exchange"):
        _, out = exchange_of(tap, json.dumps(CHAT_REQUEST).encode(), 200, NDJSON, cut)
        tap.close(client_gone=False, error_reason=None, error=None)
    assert out == CHAT_STREAM
    record = finished(sink)
    assert (record.status, record.response_bytes) == (200, len(CHAT_STREAM))
    expected = "could not read the end of the answer to" if at_end else "could not read the answer"
    assert [r.getMessage().startswith(expected) for r in caplog.records] == [True]


def test_a_failing_sink_does_not_keep_the_record_from_the_others(
    sink: RecordingSink, caplog: pytest.LogCaptureFixture
) -> None:
    class Failing(RecordingSink):
        def finished(self, record: ExchangeRecord) -> None:
            raise RuntimeError("sink bug")

    rec = Recorder(sinks=[Failing(), sink], categorise=lambda prompt: "other")
    tap = rec.open(http_scope("/api/chat", method="POST"))
    with caplog.at_level(logging.ERROR, logger="app.exchange"):
        exchange_of(tap, json.dumps(CHAT_REQUEST).encode(), 200, NDJSON, [CHAT_STREAM])
        tap.close(client_gone=False, error_reason=None, error=None)
    assert finished(sink).response == CHAT_TEXT
    assert len(caplog.records) == 1


# -- which model a record names -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "model"),
    [
        ("POST", "/api/copy", {"source": "llama3.2", "destination": "mine"}, "llama3.2:latest"),
        ("DELETE", "/api/delete", {"model": "old:7b"}, "old:7b"),
        ("DELETE", "/api/delete", {"name": "older"}, "older:latest"),
        ("POST", "/api/pull", {"name": "qwen3", "stream": False}, "qwen3:latest"),
        ("POST", "/api/push", {"model": "", "name": "me/m:1"}, "me/m:1"),
        ("POST", "/api/show", {"name": "old-client"}, "old-client:latest"),
        ("GET", "/v1/models/qwen3:8b", None, "qwen3:8b"),
        ("GET", "/v1/models/qwen3", None, "qwen3:latest"),
    ],
)
def test_every_route_that_names_a_model_records_it(
    sink: RecordingSink, method: str, path: str, body: dict[str, str] | None, model: str
) -> None:
    tap = open_tap(recorder(sink), path, method=method)
    assert tap.inspect_request is (body is not None)
    request = None if body is None else json.dumps(body).encode()
    exchange_of(tap, request, 200, JSON, [b"{}"])
    tap.close(client_gone=False, error_reason=None, error=None)
    assert finished(sink).model == model


def test_a_body_too_large_to_read_takes_its_model_and_tokens_from_the_answer(
    sink: RecordingSink,
) -> None:
    # The forwarder streams a body over its read limit on unread: begin(None).
    tap = open_tap(recorder(sink), "/api/chat")
    exchange_of(tap, None, 200, NDJSON, [chat_chunk("Hi"), CHAT_DONE])
    tap.close(client_gone=False, error_reason=None, error=None)
    record = finished(sink)
    assert [start[1:] for start in sink.starts] == [("/api/chat", "")]
    # Ollama's chunks echo the model as the request named it (server/routes.go ChatHandler).
    assert (record.model, record.prompt_tokens, record.completion_tokens) == (
        "llama3.2:latest",
        26,
        3,
    )
    assert (record.prompt, record.category, record.upstream_error) == ("", "none", None)


def test_a_pull_ollama_refused_in_its_stream_is_the_clients_error_not_midstream(
    sink: RecordingSink,
) -> None:
    tap = open_tap(recorder(sink), "/api/pull")
    refused = line({"status": "pulling manifest"}) + line(
        {"error": "pull model manifest: file does not exist"}
    )
    exchange_of(tap, b'{"model":"nope"}', 200, NDJSON, [refused])
    tap.close(client_gone=False, error_reason=None, error=None)
    record = finished(sink)
    assert (record.status, record.error) == (200, "pull model manifest: file does not exist")
    assert record.upstream_error is None


def test_an_inference_error_line_is_still_midstream(sink: RecordingSink) -> None:
    tap = open_tap(recorder(sink), "/api/chat")
    failed = line({"error": "an error was encountered while running the model: EOF"})
    exchange_of(tap, json.dumps(CHAT_REQUEST).encode(), 200, NDJSON, [chat_chunk("a"), failed])
    tap.close(client_gone=False, error_reason=None, error=None)
    assert finished(sink).upstream_error == "midstream"


def responses_event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(data).encode())


def test_a_responses_stream_becomes_an_exact_record(clock: Clock, sink: RecordingSink) -> None:
    seen: list[str] = []
    tap = open_tap(recorder(sink, seen), "/v1/responses")
    request = {
        "model": "qwen3",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
            {"type": "message", "role": "user", "content": "Why is the sky blue?"},
        ],
        "stream": True,
    }
    body = [
        responses_event("response.created", {"response": {"model": "qwen3", "usage": None}}),
        responses_event("response.output_text.delta", {"delta": "Rayleigh"}),
        responses_event("response.output_text.delta", {"delta": " scattering."}),
        responses_event(
            "response.completed",
            {
                "response": {
                    "model": "qwen3",
                    "status": "completed",
                    "error": None,
                    "usage": {"input_tokens": 17, "output_tokens": 4, "total_tokens": 21},
                }
            },
        ),
    ]
    _, out = exchange_of(tap, json.dumps(request).encode(), 200, SSE, body, clock=clock, step=0.25)
    assert out == b"".join(body)
    tap.close(client_gone=False, error_reason=None, error=None)
    record = finished(sink)
    assert seen == ["Why is the sky blue?"]
    assert (record.model, record.operation, record.category) == ("qwen3:latest", "chat", "science")
    assert (record.prompt_tokens, record.completion_tokens) == (17, 4)
    assert (record.response, record.done_reason, record.upstream_error) == (
        "Rayleigh scattering.",
        "completed",
        None,
    )
    assert record.ttft_s == pytest.approx(0.5)


# -- diagnostics -------------------------------------------------------------------------------


def test_the_queue_wait_is_what_ollamas_phases_leave_of_its_total(sink: RecordingSink) -> None:
    tap = open_tap(recorder(sink), "/api/chat")
    exchange_of(tap, json.dumps(CHAT_REQUEST).encode(), 200, NDJSON, [CHAT_STREAM])
    tap.close(client_gone=False, error_reason=None, error=None)
    # CHAT_DONE: total 2 s − load 0.1 s − prompt eval 0.2 s − eval 1.5 s.
    assert finished(sink).queue_wait_s == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("total", "expected"),
    [(1_000_000_000, 0.0), (None, None)],  # phases longer than the total; no durations
)
def test_the_queue_wait_is_never_negative_nor_guessed(
    sink: RecordingSink, total: int | None, expected: float | None
) -> None:
    done = json.loads(CHAT_DONE)
    if total is None:
        del done["total_duration"]
    else:
        done["total_duration"] = total
    tap = open_tap(recorder(sink), "/api/chat")
    exchange_of(tap, json.dumps(CHAT_REQUEST).encode(), 200, NDJSON, [line(done)])
    tap.close(client_gone=False, error_reason=None, error=None)
    assert finished(sink).queue_wait_s == expected


def test_an_embed_has_no_queue_wait(sink: RecordingSink) -> None:
    # An embed reports total and load, but no prompt-eval time: the rest is not a wait.
    tap = open_tap(recorder(sink), "/api/embed")
    answer = b'{"embeddings":[[0.1]],"total_duration":900000000,"load_duration":1000000}'
    exchange_of(tap, b'{"model":"e","input":"x"}', 200, JSON, [answer])
    tap.close(client_gone=False, error_reason=None, error=None)
    assert finished(sink).queue_wait_s is None


def test_the_longest_pause_of_a_stream_is_kept(clock: Clock, sink: RecordingSink) -> None:
    tap = open_tap(recorder(sink), "/api/chat")
    tap.begin(json.dumps(CHAT_REQUEST).encode())
    tap.response_start(200, NDJSON)
    for pause, piece in zip(
        (0.1, 0.1, 2.5, 0.3), CHAT_STREAM.splitlines(keepends=True), strict=True
    ):
        clock.now += pause
        tap.response_chunk(piece)
    tap.response_end()
    tap.close(client_gone=False, error_reason=None, error=None)
    assert finished(sink).max_gap_s == pytest.approx(2.5)


def test_a_whole_answer_has_no_stream_pause(sink: RecordingSink) -> None:
    tap = open_tap(recorder(sink), "/api/chat")
    exchange_of(tap, b'{"model":"m","stream":false}', 200, JSON, [b"{", b"}"])
    tap.close(client_gone=False, error_reason=None, error=None)
    assert finished(sink).max_gap_s is None


def test_the_client_app_is_named_from_its_headers(sink: RecordingSink) -> None:
    asked: list[tuple[str, str, str]] = []

    def client_app(user_agent: str, title: str, name: str) -> str:
        asked.append((user_agent, title, name))
        return "my-app"

    rec = recorder(sink, client_app=client_app)
    headers = [(b"user-agent", b"curl/8.5.0"), (b"x-title", b"Notes"), (b"x-client-name", b"n")]
    tap = rec.open(http_scope("/api/tags", method="GET", headers=headers))
    exchange_of(tap, None, 200, JSON, [b"{}"])
    tap.close(client_gone=False, error_reason=None, error=None)
    assert asked == [("curl/8.5.0", "Notes", "n")]
    assert finished(sink).client_app == "my-app"


def context_exchange(
    sink: RecordingSink,
    options: dict[str, Any],
    prompt_tokens: int,
    done_reason: str = "stop",
    loaded: int | None = None,
) -> ExchangeRecord:
    residency = Residency()
    residency.observe([LoadedModel("llama3.2:latest", 10, 10, loaded)], 60.0)
    rec = recorder(sink, residency=residency)
    tap = open_tap(rec, "/api/chat")
    done = {**json.loads(CHAT_DONE), "prompt_eval_count": prompt_tokens, "done_reason": done_reason}
    exchange_of(
        tap, json.dumps({**CHAT_REQUEST, "options": options}).encode(), 200, NDJSON, [line(done)]
    )
    tap.close(client_gone=False, error_reason=None, error=None)
    return sink.records[-1]


def test_the_context_is_the_requests_else_the_loaded_models_else_unknown(
    sink: RecordingSink,
) -> None:
    assert context_exchange(sink, {"num_ctx": 100}, 20, loaded=4096).context_tokens == 100
    assert context_exchange(sink, {}, 20, loaded=4096).context_tokens == 4096
    unknown = context_exchange(sink, {"num_ctx": "big"}, 20)
    assert (unknown.context_tokens, unknown.truncation, unknown.context_ratio) == (None, None, None)
    # 20 prompt + 3 generated tokens of 100.
    assert sink.records[0].context_ratio == pytest.approx(0.23)


@pytest.mark.parametrize(
    ("prompt_tokens", "done_reason", "truncation"),
    [
        (53, "stop", "prompt"),  # 100 − (100 − 5) // 2: the length Ollama cuts prompts to
        (52, "stop", None),
        (52, "length", "output"),
        (99, "length", "prompt"),  # the prompt's cut is the larger news
    ],
)
def test_what_was_cut(
    sink: RecordingSink, prompt_tokens: int, done_reason: str, truncation: str | None
) -> None:
    record = context_exchange(sink, {"num_ctx": 100}, prompt_tokens, done_reason)
    assert record.truncation == truncation


def test_an_output_cut_is_seen_without_a_known_context(sink: RecordingSink) -> None:
    assert context_exchange(sink, {}, 10, "length").truncation == "output"


# -- cold starts, placement, requests ahead (app.ollama.residency) --------------------------


def chat_with(rec: Recorder, *, load_ns: int, options: dict[str, Any] | None = None) -> ExchangeTap:
    """A native chat taken up to its answer; the caller closes the tap."""
    tap = open_tap(rec, "/api/chat")
    done = {**json.loads(CHAT_DONE), "load_duration": load_ns}
    body = {**CHAT_REQUEST, **({"options": options} if options else {})}
    exchange_of(tap, json.dumps(body).encode(), 200, NDJSON, [line(done)])
    return tap


def closed(tap: ExchangeTap, sink: RecordingSink) -> ExchangeRecord:
    tap.close(client_gone=False, error_reason=None, error=None)
    return sink.records[-1]


def test_a_cold_start_is_on_the_record_with_its_cause(sink: RecordingSink) -> None:
    residency = Residency()
    residency.observe([LoadedModel("qwen3:8b", 100, 100, 4096)], 60.0)
    rec = recorder(sink, residency=residency)
    cold = closed(chat_with(rec, load_ns=4_200_000_000), sink)
    assert (cold.cold_cause, cold.cold_detail, cold.ollama_load_s) == ("first_load", None, 4.2)
    assert cold.diagnosis is not None
    assert cold.diagnosis.startswith("cold start: 4.2 s loading llama3.2")
    warm = closed(chat_with(rec, load_ns=3_000_000), sink)
    assert warm.cold_cause is None
    assert warm.diagnosis == "waited 0.30 s for a free slot"  # CHAT_DONE's residual
    # Loaded with 4096 per the poll; this one asks for 8192: Ollama reloads it.
    residency.observe([LoadedModel("llama3.2:latest", 100, 62, 4096)], 60.0)
    reload = closed(chat_with(rec, load_ns=5_000_000_000, options={"num_ctx": 8192}), sink)
    assert (reload.cold_cause, reload.cold_detail) == ("options", "num_ctx 8192 ≠ loaded 4096")
    # Replaced by a new runner: where that one runs is known from the next poll on.
    assert (reload.placement, reload.gpu_share, reload.context_tokens) == (None, None, 8192)
    residency.observe([LoadedModel("llama3.2:latest", 100, 62, 8192)], 60.0)
    after = closed(chat_with(rec, load_ns=3_000_000, options={"num_ctx": 8192}), sink)
    assert (after.cold_cause, after.placement, after.gpu_share) == (None, "mixed", 0.62)
    assert "model 38 % on CPU" in (after.diagnosis or "")


def test_requests_ahead_count_the_same_models_in_flight(sink: RecordingSink) -> None:
    residency = Residency()
    rec = recorder(sink, residency=residency)
    first = chat_with(rec, load_ns=1_000_000)
    second = chat_with(rec, load_ns=1_000_000)
    other = open_tap(rec, "/api/generate")
    exchange_of(other, b'{"model": "qwen3:8b", "prompt": "hi"}', 200, NDJSON, [])
    for tap in (first, second, other):
        tap.close(client_gone=False, error_reason=None, error=None)
    assert [r.requests_ahead for r in sink.records] == [0, 1, 0]
    third = closed(chat_with(rec, load_ns=1_000_000), sink)
    assert third.requests_ahead == 0  # every request that ended was counted out


def test_without_a_poller_nothing_about_memory_is_known(sink: RecordingSink) -> None:
    record = closed(chat_with(recorder(sink), load_ns=9_000_000_000), sink)
    assert (record.cold_cause, record.placement, record.requests_ahead) == (None, None, None)
    assert record.context_tokens is None


@pytest.mark.parametrize("num_ctx", [-1, 0, 10**12, "8192", None, True, [8192]])
def test_a_bad_num_ctx_is_unknown_never_a_guess(sink: RecordingSink, num_ctx: object) -> None:
    residency = Residency()
    rec = recorder(sink, residency=residency)
    record = closed(chat_with(rec, load_ns=1_000_000, options={"num_ctx": num_ctx}), sink)
    assert (record.context_tokens, record.truncation) == (None, None)
    assert record.cold_cause is None


def test_every_record_names_the_node_that_served_it(sink: RecordingSink) -> None:
    record = closed(chat_with(recorder(sink, node="gpu-9"), load_ns=1_000_000), sink)
    assert record.node == "gpu-9"

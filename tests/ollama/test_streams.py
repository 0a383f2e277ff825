"""The answer readers: the same stream split anywhere gives the same facts and bytes."""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.ollama.endpoints import Shape, classify
from app.ollama.streams import (
    MAX_LINE_BYTES,
    Answer,
    JsonReader,
    LongLine,
    NdjsonReader,
    SseReader,
    reader_for,
)
from tests.emulator import EmulatorServer
from tests.support import CHAT

# Streams captured from the emulator once, then replayed in random pieces.
STREAMS: list[tuple[str, dict[str, Any]]] = [
    ("/api/generate", {"model": "llama3.2", "prompt": "Why?"}),
    ("/api/chat", {"model": "qwen3", "messages": CHAT, "think": True}),
    ("/api/generate", {"model": "llama3.2", "prompt": "x", "options": {"emulator_fail_after": 3}}),
    ("/api/pull", {"model": "llama3.2"}),
    (
        "/v1/chat/completions",
        {
            "model": "qwen3",
            "messages": CHAT,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    (
        "/v1/completions",
        {
            "model": "llama3.2",
            "prompt": "Once",
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    ("/v1/messages", {"model": "llama3.2", "max_tokens": 6, "messages": CHAT, "stream": True}),
    ("/api/chat", {"model": "llama3.2", "messages": CHAT, "stream": False}),
    ("/v1/chat/completions", {"model": "llama3.2", "messages": CHAT}),
    ("/v1/responses", {"model": "qwen3", "input": "Why?", "stream": True}),
    ("/v1/responses", {"model": "llama3.2", "input": "Why?"}),
]


@pytest.fixture(scope="module")
def captured(emulator: EmulatorServer) -> list[tuple[Shape, bytes, bytes, bool]]:
    """(shape, content type, body, usage asked) for every stream above."""
    out = []
    for path, body in STREAMS:
        answer = httpx.post(emulator.url + path, json=body, timeout=30)
        asked = bool(body.get("stream_options"))
        out.append(
            (classify(path).shape, answer.headers["content-type"].encode(), answer.content, asked)
        )
    return out


def read(
    shape: Shape, ctype: bytes, pieces: list[bytes], *, strip: bool
) -> tuple[dict[str, Any], bytes]:
    answer = Answer()
    reader = reader_for(answer, shape, ctype, status=200, strip_usage=strip, max_json_bytes=1 << 20)
    assert reader is not None
    out = b"".join(reader.feed(piece, float(i)) for i, piece in enumerate(pieces))
    out += reader.end(float(len(pieces)))
    facts = {
        "prompt": answer.prompt_tokens,
        "completion": answer.completion_tokens,
        "load": answer.load_duration_ns,
        "eval": answer.eval_duration_ns,
        "reason": answer.done_reason,
        "error": answer.error,
        "complete": answer.complete,
        "text": str(answer.text),
        "thinking": str(answer.thinking),
        "tools": json.dumps(answer.tool_calls, sort_keys=True),
        "malformed": answer.malformed,
    }
    return facts, out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@pytest.mark.process
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(index=st.integers(0, len(STREAMS) - 1), cuts=st.lists(st.integers(0, 1 << 16), max_size=40))
def test_any_split_gives_the_same_facts_and_bytes(
    captured: list[tuple[Shape, bytes, bytes, bool]], index: int, cuts: list[int]
) -> None:
    shape, ctype, body, asked = captured[index]
    whole_facts, whole_out = read(shape, ctype, [body], strip=not asked)
    facts, out = read(shape, ctype, split(body, cuts), strip=not asked)
    assert facts == whole_facts
    assert out == whole_out


@pytest.mark.process
def test_readers_find_what_the_streams_carry(
    captured: list[tuple[Shape, bytes, bytes, bool]],
) -> None:
    (
        generate,
        chat,
        broken,
        pull,
        openai_chat,
        completions,
        anthropic,
        chat_json,
        openai_json,
        responses,
        responses_json,
    ) = [read(shape, ctype, [body], strip=False)[0] for shape, ctype, body, _ in captured]
    assert generate["complete"]
    assert generate["completion"] > 0
    assert generate["text"]
    assert chat["thinking"]
    assert chat["text"]
    assert chat["reason"] == "stop"
    assert broken["error"] == "an error was encountered while running the model: unexpected EOF"
    assert not broken["complete"]
    assert pull["complete"]
    assert pull["error"] is None
    assert openai_chat["completion"] > 0
    assert openai_chat["thinking"]
    assert completions["prompt"] > 0
    assert completions["completion"] > 0
    assert anthropic["completion"] == 6
    assert anthropic["complete"]
    assert chat_json["completion"] > 0
    assert chat_json["text"]
    assert openai_json["prompt"] > 0
    assert openai_json["text"]
    for answer in (responses, responses_json):
        assert answer["prompt"] > 0
        assert answer["completion"] > 0
        assert answer["text"]
        assert answer["complete"]
        assert answer["reason"] == "completed"
    assert responses["thinking"]


@pytest.mark.process
def test_stripping_removes_only_what_the_proxy_asked_for(
    captured: list[tuple[Shape, bytes, bytes, bool]],
) -> None:
    shape, ctype, body, _ = captured[5]  # /v1/completions with usage in every chunk
    _, out = read(shape, ctype, [body], strip=True)
    assert b'"usage"' in body
    assert b'"usage"' not in out
    assert out.endswith(b"data: [DONE]\n\n")
    assert out.count(b"data: ") == body.count(b"data: ") - 1


def test_a_huge_final_line_is_read() -> None:
    context = list(range(300_000))  # ~2 MB of context tokens on the final line
    final = {"model": "m", "response": "", "done": True, "eval_count": 3, "context": context}
    body = b'{"response":"a","done":false}\n' + json.dumps(final).encode() + b"\n"
    facts, out = read(
        "generate",
        b"application/x-ndjson",
        split(body, list(range(0, len(body), 65536))),
        strip=False,
    )
    assert facts["completion"] == 3
    assert facts["complete"] is True
    assert out == body


def test_a_line_beyond_the_limit_is_not_held() -> None:
    answer = Answer()
    reader = NdjsonReader(answer, "generate")
    reader.feed(b'{"response":"' + b"x" * (MAX_LINE_BYTES + 10), 0.0)
    assert len(reader.partial) == 0
    assert reader.long is not None
    assert len(reader.long.head) + len(reader.long.tail) <= 2 * LongLine.KEEP
    reader.feed(b'"}\n{"done":true,"eval_count":2}\n', 1.0)
    assert answer.malformed == 1  # the long line named nothing worth reading
    assert answer.completion_tokens == 2
    assert answer.text.truncated


def final_generate_line(context_tokens: int) -> bytes:
    """A final /api/generate chunk as Ollama writes it (api/types.go field order), with a
    ``context`` of ``context_tokens`` token ids, and a tool call naming a "model" of its own."""
    context = ",".join(str(100000 + i % 50000) for i in range(context_tokens))
    return (
        b'{"model":"qwen3:8b","created_at":"2026-12-03T06:00:00Z","response":"",'
        b'"tool_calls":[{"function":{"name":"f","arguments":{"model":"x","eval_count":1}}}],'
        b'"done":true,"done_reason":"length","context":[' + context.encode() + b"],"
        b'"total_duration":9000000000,"load_duration":1000000,"prompt_eval_count":10905213,'
        b'"prompt_eval_duration":8000000000,"eval_count":7,"eval_duration":900000000}\n'
    )


def test_a_line_beyond_the_limit_keeps_its_model_counts_and_durations() -> None:
    line = final_generate_line(3_000_000)  # ~20 MB, over MAX_LINE_BYTES
    assert len(line) > MAX_LINE_BYTES
    answer = Answer()
    reader = NdjsonReader(answer, "generate")
    body = b'{"model":"qwen3:8b","response":"a","done":false}\n' + line
    assert b"".join(reader.feed(piece, 0.0) for piece in split(body, [1 << 20] * 1)) == body
    reader.end(1.0)
    assert answer.model == "qwen3:8b"
    assert (answer.prompt_tokens, answer.completion_tokens) == (10905213, 7)
    assert (answer.total_duration_ns, answer.eval_duration_ns) == (9_000_000_000, 900_000_000)
    assert (answer.complete, answer.done_reason, answer.malformed) == (True, "length", 0)


def test_a_whole_answer_beyond_the_limit_keeps_its_model_and_counts() -> None:
    body = final_generate_line(200_000)
    answer = Answer()
    reader = JsonReader(answer, "generate", max_bytes=1 << 16)
    for piece in split(body, list(range(0, len(body), 4096))):
        assert reader.feed(piece, 0.0) == piece
    reader.end(1.0)
    assert reader.parts == []
    assert (answer.model, answer.prompt_tokens, answer.completion_tokens) == (
        "qwen3:8b",
        10905213,
        7,
    )
    assert answer.complete


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(
        b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(data).encode())
        for name, data in events
    )


def read_sse(shape: Shape, body: bytes) -> Answer:
    answer = Answer()
    reader = SseReader(answer, shape, strip_usage=False)
    for i, piece in enumerate(split(body, list(range(0, len(body), 7)))):
        assert reader.feed(piece, float(i + 1)) == piece
    reader.end(99.0)
    return answer


ANTHROPIC_TOOL_STREAM = sse(
    (
        "message_start",
        {
            "type": "message_start",
            "message": {"model": "qwen3", "usage": {"input_tokens": 4, "output_tokens": 0}},
        },
    ),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": 'ris"}'},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"input_tokens": 31, "output_tokens": 12},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
)


def test_an_anthropic_tool_use_keeps_its_arguments_and_counted_tokens() -> None:
    answer = read_sse("anthropic_messages", ANTHROPIC_TOOL_STREAM)
    assert answer.tool_calls == [
        {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}
    ]
    # message_start's 4 is Ollama's estimate (length / 4); 31 is the count.
    assert (answer.prompt_tokens, answer.completion_tokens) == (31, 12)
    assert (answer.model, answer.done_reason, answer.complete) == ("qwen3", "tool_use", True)
    assert answer.first_token_at is not None


def test_an_anthropic_stream_cut_before_message_delta_has_no_counted_prompt() -> None:
    cut = ANTHROPIC_TOOL_STREAM[: ANTHROPIC_TOOL_STREAM.index(b"event: message_delta")]
    answer = read_sse("anthropic_messages", cut)
    assert answer.prompt_tokens is None  # the estimate is not a count
    assert answer.complete is False
    assert answer.tool_calls[0]["input"] == {"city": "Paris"}


def test_an_anthropic_tool_block_cut_short_keeps_what_arrived() -> None:
    cut = ANTHROPIC_TOOL_STREAM[: ANTHROPIC_TOOL_STREAM.index(b"event: content_block_delta")]
    cut += sse(
        (
            "content_block_delta",
            {"index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"ci'}},
        )
    )
    answer = read_sse("anthropic_messages", cut)
    assert answer.tool_calls == [
        {"type": "tool_use", "id": "t1", "name": "get_weather", "input": '{"ci'}
    ]


RESPONSES_STREAM = sse(
    (
        "response.created",
        {
            "type": "response.created",
            "response": {"model": "qwen3", "status": "in_progress", "usage": None, "error": None},
        },
    ),
    (
        "response.reasoning_summary_text.delta",
        {"type": "response.reasoning_summary_text.delta", "delta": "Hmm."},
    ),
    ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hel"}),
    ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "lo"}),
    (
        "response.function_call_arguments.delta",
        {"type": "response.function_call_arguments.delta", "delta": '{"a":1}'},
    ),
    (
        "response.output_item.done",
        {
            "type": "response.output_item.done",
            "item": {"type": "function_call", "name": "f", "arguments": '{"a":1}', "call_id": "c1"},
        },
    ),
    (
        "response.completed",
        {
            "type": "response.completed",
            "response": {
                "model": "qwen3",
                "status": "completed",
                "error": None,
                "usage": {"input_tokens": 11, "output_tokens": 5, "total_tokens": 16},
            },
        },
    ),
)


def test_a_responses_stream_gives_text_reasoning_calls_and_usage() -> None:
    answer = read_sse("openai_responses", RESPONSES_STREAM)
    assert (str(answer.text), str(answer.thinking)) == ("Hello", "Hmm.")
    assert answer.tool_calls == [
        {"type": "function_call", "name": "f", "arguments": '{"a":1}', "call_id": "c1"}
    ]
    assert (answer.prompt_tokens, answer.completion_tokens) == (11, 5)
    assert (answer.model, answer.done_reason, answer.complete, answer.error) == (
        "qwen3",
        "completed",
        True,
        None,
    )
    assert answer.first_token_at is not None
    assert answer.first_token_at < 99.0


def test_a_responses_stream_that_stops_without_completed_is_incomplete() -> None:
    # On a failure mid-stream Ollama sends no event at all (middleware/openai.go).
    cut = RESPONSES_STREAM[: RESPONSES_STREAM.index(b"event: response.completed")]
    answer = read_sse("openai_responses", cut)
    assert (answer.complete, answer.prompt_tokens, answer.error) == (False, None, None)


def test_a_whole_responses_object_is_read() -> None:
    body = json.dumps(
        {
            "model": "qwen3",
            "status": "incomplete",
            "incomplete_details": {"reason": "max_output_tokens"},
            "error": None,
            "output": [
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Think"}]},
                {"type": "message", "content": [{"type": "output_text", "text": "Hi"}]},
            ],
            "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
        }
    ).encode()
    answer = Answer()
    reader = JsonReader(answer, "openai_responses", max_bytes=1 << 20)
    reader.feed(body, 0.0)
    reader.end(0.0)
    assert (str(answer.text), str(answer.thinking)) == ("Hi", "Think")
    assert (answer.prompt_tokens, answer.completion_tokens) == (3, 2)
    assert (answer.done_reason, answer.complete) == ("max_output_tokens", True)


@pytest.mark.parametrize(
    ("shape", "body", "model"),
    [
        ("generate", b'{"model":"a:1","response":"x","done":false}\n', "a:1"),
        ("openai_chat", b'data: {"model":"b:2","choices":[]}\n\n', "b:2"),
        (
            "anthropic_messages",
            b'event: message_start\ndata: {"message":{"model":"c:3"}}\n\n',
            "c:3",
        ),
    ],
)
def test_the_answer_names_its_model(shape: Shape, body: bytes, model: str) -> None:
    answer = Answer()
    ctype = b"application/x-ndjson" if shape == "generate" else b"text/event-stream"
    reader = reader_for(answer, shape, ctype, status=200, strip_usage=False, max_json_bytes=1)
    assert reader is not None
    reader.feed(body, 0.0)
    reader.end(0.0)
    assert answer.model == model


def test_an_error_that_is_null_is_no_error() -> None:
    # A Responses object always carries "error": null (openai/responses.go ToResponse).
    answer = Answer()
    read_native = NdjsonReader(answer, "chat")
    read_native.feed(b'{"model":"m","error":null,"message":{"content":"x"},"done":true}\n', 0.0)
    assert (answer.error, answer.complete, str(answer.text)) == (None, True, "x")


@pytest.mark.parametrize(
    "line",
    [b"not json", b"\xff\xfe", b"[1,2]", b'{"message": 5}', b'{"done": "yes"}', b"{}"],
)
def test_malformed_lines_are_counted_not_fatal(line: bytes) -> None:
    answer = Answer()
    reader = NdjsonReader(answer, "chat")
    out = reader.feed(
        line + b"\n" + b'{"message":{"role":"assistant","content":"ok"},"done":true}\n', 0.0
    )
    assert answer.complete is True
    assert str(answer.text) == "ok"
    assert out.startswith(line)


def test_sse_error_event_is_read() -> None:
    answer = Answer()
    reader = SseReader(answer, "openai_chat", strip_usage=False)
    reader.feed(b'data: {"error":{"message":"boom","type":"api_error"}}\n\n', 0.0)
    assert answer.error == "boom"


def test_text_is_capped_and_flagged() -> None:
    answer = Answer(text_limit=10)
    reader = NdjsonReader(answer, "generate")
    for _ in range(5):
        reader.feed(b'{"response":"abcd","done":false}\n', 0.0)
    assert str(answer.text) == "abcdabcdab"
    assert answer.text.truncated is True


@pytest.mark.parametrize("content", [5, "text", None, {"type": "text"}, [1, "x"]])
def test_an_anthropic_answer_whose_content_is_no_list_of_blocks_is_read_past(
    content: object,
) -> None:
    # Found by hypothesis: an int "content" made the reader raise (TypeError).
    answer = Answer()
    body = json.dumps(
        {"content": content, "usage": {"input_tokens": 3, "output_tokens": 4}}
    ).encode()
    reader = JsonReader(answer, "anthropic_messages", max_bytes=1 << 20)
    assert reader.feed(body, 0.0) + reader.end(0.0) == body
    assert (answer.prompt_tokens, answer.completion_tokens) == (3, 4)
    assert str(answer.text) == ""

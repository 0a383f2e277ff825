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
    generate, chat, broken, pull, openai_chat, completions, anthropic, chat_json, openai_json = [
        read(shape, ctype, [body], strip=False)[0] for shape, ctype, body, _ in captured
    ]
    assert generate["complete"]
    assert generate["completion"] > 0
    assert generate["text"]
    assert chat["thinking"]
    assert chat["text"]
    assert chat["reason"] == "stop"
    assert broken["error"] == "an error was encountered while running the model"
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


def test_a_line_beyond_the_limit_is_skipped_not_held() -> None:
    answer = Answer()
    reader = NdjsonReader(answer, "generate")
    reader.feed(b'{"response":"' + b"x" * (MAX_LINE_BYTES + 10), 0.0)
    assert len(reader.partial) == 0
    reader.feed(b'"}\n{"done":true,"eval_count":2}\n', 1.0)
    assert answer.malformed == 1
    assert answer.completion_tokens == 2


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

"""Every parser of the proxy against generated input (hypothesis).

(a) A valid stream, built here together with what it says, read in any split (inside UTF-8
    sequences, between ``\\r`` and ``\\n``, inside ``data:``) gives exactly what it says,
    and the time of the first token is the time of the piece that completed its line.
(b) Malformed input never raises and never leaves a wrong type in the answer.
(c) ``read_request`` never raises; a rewritten body is JSON that differs only by the
    injected ``stream_options.include_usage``, and only bodies Ollama would read are
    rewritten.
(d) The categoriser answers one of its labels for any text.

``tests/ollama/test_streams.py`` replays streams captured from the emulator; these are generated,
so they reach what the emulator never sends.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.categories.categoriser import Categoriser, CategoryRule
from app.ollama.endpoints import Shape, classify
from app.ollama.models import normalise_model
from app.ollama.requests import NO_FACTS, read_request
from app.ollama.streams import Answer, JsonReader, NdjsonReader, SseReader, parse_json
from app.proxy.headers import HOP_BY_HOP, client_response_headers, upstream_request_headers

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INT64_MAX = (1 << 63) - 1

# Text as models produce it: any code point but lone surrogates, multi-byte ones often.
TEXT = st.lists(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["é", "中", "😀", "\u2028", "\r", "\n", "\r\n", '"', "\\", "data: "]),
    ),
    max_size=12,
).map("".join)
COUNT = st.integers(0, INT64_MAX)
REASON = st.sampled_from(["stop", "length", "tool_calls", "load", "unload", "end_turn"])


@dataclass
class Stream:
    """A generated stream and what reading it must give."""

    shape: Shape
    body: bytes
    text: str = ""
    thinking: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    durations: tuple[int | None, ...] = (None, None, None, None)
    done_reason: str | None = None
    tool_calls: list[Any] = field(default_factory=list)
    # Offset of the byte that completes the first event carrying output (None: no output),
    # or len(body) when that event is only read at the end of the stream.
    first_output_end: int | None = None
    # What a usage-stripping SSE reader passes on.
    stripped: bytes = b""


def _dumps(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode()


@st.composite
def ndjson_streams(draw: st.DrawFn) -> Stream:
    shape: Shape = draw(st.sampled_from(["generate", "chat"]))
    ascii_only = draw(st.booleans())
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    tokens = draw(st.lists(st.tuples(TEXT, TEXT), max_size=8))
    tools = draw(st.lists(st.fixed_dictionaries({"function": st.fixed_dictionaries({})})))
    counts = draw(st.tuples(COUNT, COUNT))
    durations = draw(st.tuples(COUNT, COUNT, COUNT, COUNT))
    reason = draw(REASON)
    lines: list[bytes] = []
    first: int | None = None
    offset = 0
    objects: list[dict[str, Any]] = []
    for text, thinking in tokens:
        if shape == "chat":
            message = {"role": "assistant", "content": text, "thinking": thinking}
            objects.append({"model": "m", "message": message, "done": False})
        else:
            objects.append({"model": "m", "response": text, "thinking": thinking, "done": False})
    if tools:
        call = {"role": "assistant", "content": "", "tool_calls": tools}
        objects.append(
            {"model": "m", "message": call, "done": False}
            if shape == "chat"
            else {"model": "m", "response": "", "tool_calls": tools, "done": False}
        )
    final: dict[str, Any] = {"model": "m", "done": True, "done_reason": reason}
    final |= {"prompt_eval_count": counts[0], "eval_count": counts[1]}
    final |= dict(
        zip(
            ["total_duration", "load_duration", "prompt_eval_duration", "eval_duration"],
            durations,
            strict=True,
        )
    )
    objects.append(final)
    last_unterminated = draw(st.booleans())
    for index, obj in enumerate(objects):
        line = _dumps(obj, ascii_only)
        terminated = not (last_unterminated and index == len(objects) - 1)
        lines.append(line + (newline if terminated else b""))
        offset += len(lines[-1])
        carries = any(obj.get(k) for k in ("response", "thinking", "tool_calls")) or any(
            isinstance(obj.get("message"), dict) and obj["message"].get(k)
            for k in ("content", "thinking", "tool_calls")
        )
        if carries and first is None:
            first = offset - 1 if terminated else offset
    body = b"".join(lines)
    return Stream(
        shape=shape,
        body=body,
        text="".join(t for t, _ in tokens),
        thinking="".join(t for _, t in tokens),
        prompt_tokens=counts[0],
        completion_tokens=counts[1],
        durations=durations,
        done_reason=reason,
        tool_calls=list(tools),
        first_output_end=None if first is None else min(first, len(body)),
    )


@st.composite
def sse_streams(draw: st.DrawFn) -> Stream:
    """OpenAI chat/completions and Responses, and Anthropic messages event streams."""
    shape: Shape = draw(
        st.sampled_from(["openai_chat", "openai_completions", "anthropic", "openai_responses"])
    )
    ascii_only = draw(st.booleans())
    prefix = draw(st.sampled_from([b"data: ", b"data:"]))
    tokens = draw(st.lists(TEXT, max_size=8))
    counts = draw(st.tuples(COUNT, COUNT))
    reason = draw(REASON)
    # (event bytes, carries output, dropped when stripping usage)
    events: list[tuple[bytes, bool, bool]] = []

    def event(obj: Any, *, name: str | None = None, output: bool = False) -> None:
        head = b"event: " + name.encode() + b"\n" if name else b""
        events.append((head + prefix + _dumps(obj, ascii_only) + b"\n\n", output, False))

    if shape == "anthropic":
        shape = "anthropic_messages"
        # message_start's input_tokens is Ollama's estimate, never the count.
        estimate = draw(COUNT)
        event({"type": "message_start", "message": {"usage": {"input_tokens": estimate}}},
              name="message_start")  # fmt: skip
        for text in tokens:
            delta = {"type": "text_delta", "text": text}
            event({"type": "content_block_delta", "delta": delta}, name="content_block_delta",
                  output=bool(text))  # fmt: skip
        usage = {"input_tokens": counts[0], "output_tokens": counts[1]}
        event({"type": "message_delta", "delta": {"stop_reason": reason}, "usage": usage},
              name="message_delta")  # fmt: skip
        event({"type": "message_stop"}, name="message_stop")
    elif shape == "openai_responses":
        created = {"type": "response.created", "response": {"status": "in_progress"}}
        event(created, name="response.created")
        for text in tokens:
            event({"type": "response.output_text.delta", "delta": text},
                  name="response.output_text.delta", output=bool(text))  # fmt: skip
        usage = {"input_tokens": counts[0], "output_tokens": counts[1]}
        reason = "completed"  # the status Ollama gives every finished response
        done = {"status": reason, "usage": usage}
        event({"type": "response.completed", "response": done}, name="response.completed")
    else:
        for text in tokens:
            if shape == "openai_chat":
                choice: dict[str, Any] = {"index": 0, "delta": {"content": text}}
            else:
                choice = {"index": 0, "text": text}
            event({"id": "x", "choices": [choice]}, output=bool(text))
        closing: dict[str, Any] = {"index": 0, "finish_reason": reason}
        closing |= {"delta": {}} if shape == "openai_chat" else {"text": ""}
        event({"id": "x", "choices": [closing]})
        usage = {"prompt_tokens": counts[0], "completion_tokens": counts[1]}
        usage["total_tokens"] = counts[0] + counts[1]
        usage_only = _dumps({"id": "x", "choices": [], "usage": usage}, ascii_only)
        events.append((prefix + usage_only + b"\n\n", False, True))
        events.append((prefix + b"[DONE]\n\n", False, False))
    body = b"".join(e for e, _, _ in events)
    first = None
    offset = 0
    for data, output, _ in events:
        offset += len(data)
        if output and first is None:
            first = offset - 1
    return Stream(
        shape=shape,
        body=body,
        text="".join(tokens),
        prompt_tokens=counts[0],
        completion_tokens=counts[1],
        done_reason=reason,
        first_output_end=first,
        stripped=b"".join(e for e, _, dropped in events if not dropped),
    )


def _tricky_cuts(body: bytes) -> list[int]:
    """Offsets where a cut splits something: a UTF-8 sequence, ``\\r\\n``, ``data:``."""
    cuts = [i for i in range(1, len(body)) if 0x80 <= body[i] <= 0xBF]  # before a continuation
    cuts += [i for i in range(1, len(body)) if body[i - 1 : i + 1] == b"\r\n"]
    start = 0
    while (found := body.find(b"data:", start)) >= 0:
        cuts += range(found + 1, found + 5)
        start = found + 1
    return cuts


@st.composite
def splits(draw: st.DrawFn, body: bytes) -> list[bytes]:
    tricky = _tricky_cuts(body)
    cuts = draw(st.lists(st.integers(0, len(body)), max_size=12))
    if tricky:
        cuts += draw(st.lists(st.sampled_from(tricky), max_size=12))
    if len(body) < 4096 and draw(st.booleans()):
        cuts += range(len(body))  # one byte at a time
    edges = [0, *sorted(set(cuts)), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges) if b > a]


def _feed(reader: NdjsonReader | SseReader | JsonReader, pieces: list[bytes]) -> bytes:
    """Feed ``pieces`` at times 0, 1, ...; the end comes at time len(pieces)."""
    out = b"".join(reader.feed(piece, float(i)) for i, piece in enumerate(pieces))
    return out + reader.end(float(len(pieces)))


def _piece_at(pieces: list[bytes], offset: int) -> int:
    """The index of the piece holding byte ``offset`` (len(pieces): the end of the stream)."""
    position = 0
    for index, piece in enumerate(pieces):
        position += len(piece)
        if offset < position:
            return index
    return len(pieces)


def facts(answer: Answer) -> dict[str, Any]:
    return {
        "text": str(answer.text),
        "thinking": str(answer.thinking),
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "durations": (
            answer.total_duration_ns,
            answer.load_duration_ns,
            answer.prompt_eval_duration_ns,
            answer.eval_duration_ns,
        ),
        "done_reason": answer.done_reason,
        "tool_calls": answer.tool_calls,
        "error": answer.error,
        "complete": answer.complete,
        "malformed": answer.malformed,
    }


def expected(stream: Stream) -> dict[str, Any]:
    return {
        "text": stream.text,
        "thinking": stream.thinking,
        "prompt_tokens": stream.prompt_tokens,
        "completion_tokens": stream.completion_tokens,
        "durations": stream.durations,
        "done_reason": stream.done_reason,
        "tool_calls": stream.tool_calls,
        "error": None,
        "complete": True,
        "malformed": 0,
    }


# --- (a) any split reads the same as the whole ----------------------------------------


@FAST
@given(data=st.data(), stream=ndjson_streams())
def test_ndjson_any_split_reads_what_the_stream_says(data: st.DataObject, stream: Stream) -> None:
    for pieces in ([stream.body], data.draw(splits(stream.body))):
        answer = Answer()
        out = _feed(NdjsonReader(answer, stream.shape), pieces)
        assert out == stream.body  # passed on unchanged, piece by piece
        assert facts(answer) == expected(stream)
        if stream.first_output_end is None:
            assert answer.first_token_at is None
        else:
            assert answer.first_token_at == _piece_at(pieces, stream.first_output_end)


@FAST
@given(data=st.data(), stream=sse_streams(), strip=st.booleans())
def test_sse_any_split_reads_what_the_stream_says(
    data: st.DataObject, stream: Stream, strip: bool
) -> None:
    strip = strip and stream.shape != "anthropic_messages"  # usage is only asked of OpenAI
    for pieces in ([stream.body], data.draw(splits(stream.body))):
        answer = Answer()
        out = _feed(SseReader(answer, stream.shape, strip_usage=strip), pieces)
        assert out == (stream.stripped if strip else stream.body)
        assert facts(answer) == expected(stream) | {"durations": (None,) * 4}
        if stream.first_output_end is None:
            assert answer.first_token_at is None
        else:
            assert answer.first_token_at == _piece_at(pieces, stream.first_output_end)


@FAST
@given(data=st.data(), stream=ndjson_streams())
def test_a_whole_json_answer_reads_the_same_in_any_split(
    data: st.DataObject, stream: Stream
) -> None:
    # The non-streamed answer is the final chunk with the whole text in it.
    final = json.loads(stream.body.splitlines()[-1])
    if stream.shape == "chat":
        final["message"] = {"role": "assistant", "content": stream.text}
    else:
        final["response"] = stream.text
    body = json.dumps(final, ensure_ascii=False).encode()
    for pieces in ([body], data.draw(splits(body))):
        answer = Answer()
        out = _feed(JsonReader(answer, stream.shape, max_bytes=1 << 20), pieces)
        assert out == body
        assert str(answer.text) == stream.text
        assert answer.completion_tokens == stream.completion_tokens
        assert answer.done_reason == stream.done_reason
        assert answer.complete is True


def test_splits_reach_the_tricky_places() -> None:
    """The split strategy really cuts UTF-8 sequences, CRLF and ``data:`` prefixes."""
    body = 'data: {"é":"😀"}\r\n\r\n'.encode()
    cuts = set(_tricky_cuts(body))
    assert {2, 3} <= cuts  # inside "data:"
    assert body.index(b"\r\n") + 1 in cuts
    assert body.index("😀".encode()) + 1 in cuts


# --- (b) malformed input -------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([-1, 1 << 64, 10**30, -(10**30), INT64_MAX + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
FIELDS = [
    "response",
    "thinking",
    "message",
    "tool_calls",
    "done",
    "done_reason",
    "error",
    "eval_count",
    "prompt_eval_count",
    "total_duration",
    "load_duration",
    "prompt_eval_duration",
    "eval_duration",
    "choices",
    "usage",
    "delta",
    "type",
    "content",
    "content_block",
    "stop_reason",
    "status",
]
# Raw text that JSON encoders do not make: a NaN literal, numbers past every limit, etc.
RAW_LINES = st.sampled_from(
    [
        b'{"done":true,"eval_count":NaN}',
        b'{"done":true,"eval_count":Infinity,"prompt_eval_count":-Infinity}',
        b'{"done":true,"eval_count":1e400,"total_duration":-1e400}',
        b'{"done":true,"eval_count":' + b"9" * 5000 + b"}",
        b'{"done":true,"eval_count":-5,"prompt_eval_count":-9223372036854775809}',
        b'{"done":true,"eval_count":18446744073709551616}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"response":"\xff\xfe\xed"}',
        b'{"response":"\\ud800"}',
        b'{"choices":[{"delta":{"content":"\\udfff"}}]}',
        b'{"error":{"message":' + b"[" * 3000 + b"]" * 3000 + b"}}",
        b'{"error":{"code":' + b"9" * 5000 + b"}}",
        b'{"error":{"nested":' + b"[" * 900 + b"]" * 900 + b"}}",
        b"\x00\x01\x02",
        b'"just a string"',
        b"null",
        b"12",
        b"data: [DONE]",
        b"event: error",
        b"{",
    ]
)


@st.composite
def malformed_lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=40)).replace(b"\n", b"")
    if kind == 1:
        return draw(RAW_LINES)
    obj = {"model": "m", "done": draw(st.booleans())}
    obj |= draw(st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=5))
    line = json.dumps(obj).encode()  # NaN and Infinity as Python writes them
    if kind == 3:
        line = line[: draw(st.integers(0, len(line)))]  # truncated
    return line


def assert_sane(answer: Answer) -> None:
    """Every field of an answer has its declared type, whatever it was fed."""
    for count in (
        answer.prompt_tokens,
        answer.completion_tokens,
        answer.total_duration_ns,
        answer.load_duration_ns,
        answer.prompt_eval_duration_ns,
        answer.eval_duration_ns,
    ):
        # Counts and durations are Go int64s that no Ollama sends negative: what reaches a
        # Prometheus counter or a BIGINT column must fit.
        assert count is None or (type(count) is int and 0 <= count <= INT64_MAX), count
    assert isinstance(str(answer.text), str)
    assert isinstance(str(answer.thinking), str)
    assert answer.done_reason is None or type(answer.done_reason) is str
    assert answer.error is None or type(answer.error) is str
    assert isinstance(answer.tool_calls, list)
    assert type(answer.complete) is bool
    assert answer.first_token_at is None or isinstance(answer.first_token_at, float)
    assert type(answer.malformed) is int
    assert answer.malformed >= 0
    assert type(answer.chunks) is int
    assert answer.chunks >= 0


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    lines=st.lists(malformed_lines(), min_size=1, max_size=6),
    shape=st.sampled_from(["generate", "chat", "none"]),
    newline=st.sampled_from([b"\n", b"\r\n"]),
    final_newline=st.booleans(),
)
def test_ndjson_survives_malformed_lines(
    data: st.DataObject, lines: list[bytes], shape: Shape, newline: bytes, final_newline: bool
) -> None:
    body = newline.join(lines) + (newline if final_newline else b"")
    answer = Answer()
    out = _feed(NdjsonReader(answer, shape), data.draw(splits(body)))
    assert out == body
    assert_sane(answer)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    lines=st.lists(malformed_lines(), min_size=1, max_size=6),
    shape=st.sampled_from(["openai_chat", "openai_completions", "anthropic_messages", "none"]),
    strip=st.booleans(),
    final_blank=st.booleans(),
)
def test_sse_survives_malformed_events(
    data: st.DataObject, lines: list[bytes], shape: Shape, strip: bool, final_blank: bool
) -> None:
    events = [b"data: " + line for line in lines]
    body = b"\n\n".join(events) + (b"\n\n" if final_blank else b"")
    answer = Answer()
    out = _feed(SseReader(answer, shape, strip_usage=strip), data.draw(splits(body)))
    assert_sane(answer)
    if not strip:
        assert out == body


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(malformed_lines(), st.binary(max_size=200)),
    shape=st.sampled_from(
        ["generate", "chat", "embed", "openai_chat", "openai_embeddings", "anthropic_messages"]
    ),
)
def test_json_answer_survives_malformed_bodies(body: bytes, shape: Shape) -> None:
    answer = Answer()
    out = _feed(JsonReader(answer, shape, max_bytes=1 << 20), [body])
    assert out == body
    assert_sane(answer)


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
def test_deep_nesting_is_malformed_not_a_crash(line: bytes) -> None:
    with pytest.raises(ValueError, match=r"nested too deeply|Expecting"):
        parse_json(line)
    answer = Answer()
    _feed(NdjsonReader(answer, "chat"), [line + b'\n{"done":true,"eval_count":2}\n'])
    assert answer.malformed == 1
    assert answer.completion_tokens == 2  # the line after it is still read


@pytest.mark.parametrize(
    ("value", "read"),
    [(b"-5", 0), (b"9223372036854775808", 0), (b"1e400", 0), (b"NaN", 0), (b"7", 7)],
)
def test_counts_out_of_int64_range_are_not_taken(value: bytes, read: int) -> None:
    answer = Answer()
    NdjsonReader(answer, "generate").feed(b'{"done":true,"eval_count":' + value + b"}\n", 0.0)
    assert answer.completion_tokens == read


# --- (c) read_request ----------------------------------------------------------------

INFERENCE_PATHS = [
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
    "/api/pull",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/api/tags",
]
REQUEST_FIELDS = st.sampled_from(
    ["model", "name", "stream", "stream_options", "prompt", "messages", "input", "options"]
)


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes:
    """Bodies near what clients send, with any field of any type, encoded any way."""
    obj: dict[str, Any] = {"model": draw(st.text(max_size=8)), "stream": draw(st.booleans())}
    messages = st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system"]), "content": TEXT | JSON_VALUES}
        ),
        max_size=3,
    )
    obj |= draw(st.fixed_dictionaries({}, optional={"messages": messages, "prompt": TEXT}))
    obj |= draw(st.dictionaries(REQUEST_FIELDS | st.text(max_size=4), JSON_VALUES, max_size=3))
    if draw(st.booleans()):
        obj["stream_options"] = draw(
            st.dictionaries(st.sampled_from(["include_usage", "x"]), JSON_VALUES, max_size=2)
        )
    body = json.dumps(obj, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    how = draw(st.integers(0, 5))
    if how == 1:
        return b" \r\n\t" + body + b"\n"
    if how == 2:
        return b"\xef\xbb\xbf" + body  # a byte order mark: Go's decoder refuses it
    if how == 3:
        return body.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")
    if how == 4:
        return body + b" trailing"
    return body


def _ollama_reads(body: bytes) -> Any:
    """The body as Go's encoding/json reads it, or None when it refuses it."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_refuse)
    except (ValueError, RecursionError):
        return None


def _refuse(name: str) -> Any:
    raise ValueError(name)


@settings(max_examples=200, deadline=None)
@given(
    path=st.sampled_from(INFERENCE_PATHS),
    body=st.one_of(st.binary(max_size=64), request_bodies(), RAW_LINES),
    inject=st.booleans(),
)
@example(path="/v1/chat/completions", body=b'{"stream":true,"x":"\\ud800"}', inject=True)
@example(path="/v1/chat/completions", body=b'{"stream":true,"x":1e400}', inject=True)
@example(path="/v1/chat/completions", body=b'{"stream":true,"x":NaN}', inject=True)
@example(path="/v1/chat/completions", body=b'{"stream":true,"m":' + b"[" * 9000, inject=True)
@example(path="/v1/chat/completions", body=b"[" * 9000 + b"]" * 9000, inject=True)
@example(path="/v1/chat/completions", body=b'\xef\xbb\xbf{"stream":true}', inject=True)
def test_read_request_never_raises_and_rewrites_only_the_usage_flag(
    path: str, body: bytes, inject: bool
) -> None:
    endpoint = classify(path)
    facts, sent = read_request(endpoint, body, inject_usage=inject)
    assert type(facts.model) is str
    assert type(facts.stream) is bool
    assert type(facts.prompt) is str
    if not facts.usage_injected:
        assert sent is body  # untouched, byte for byte
        return
    assert inject
    assert endpoint.shape in ("openai_chat", "openai_completions")
    before = _ollama_reads(body)
    assert isinstance(before, dict), "a body Ollama would refuse was rewritten"
    after = json.loads(sent.decode("utf-8"), parse_constant=_refuse)  # strict JSON, UTF-8
    options = before.get("stream_options")
    assert after.pop("stream_options") == {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    before.pop("stream_options", None)
    assert after == before


@settings(max_examples=200, deadline=None)
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]), body=request_bodies())
def test_usage_is_asked_for_exactly_when_ollama_would_read_the_rewrite_the_same(
    path: str, body: bytes
) -> None:
    facts, sent = read_request(classify(path), body, inject_usage=True)
    before = _ollama_reads(body)
    options = before.get("stream_options") if isinstance(before, dict) else None
    try:
        json.dumps(before, allow_nan=False)  # 1e400 reads as inf: no JSON can say it again
        sayable = True
    except ValueError:
        sayable = False
    wanted = (
        isinstance(before, dict)
        and before.get("stream") is True
        and not (isinstance(options, dict) and options.get("include_usage") is True)
        and sayable
    )
    assert facts.usage_injected is wanted
    assert (sent is not body) is wanted


def test_read_request_keeps_lone_surrogates_as_the_client_wrote_them() -> None:
    body = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"a\\ud800b"}]}'
    facts, sent = read_request(classify("/v1/chat/completions"), body, inject_usage=True)
    assert facts.usage_injected is True
    assert b"\\ud800" in sent
    assert json.loads(sent)["messages"] == json.loads(body)["messages"]


@pytest.mark.parametrize(
    "body",
    [
        b'\xef\xbb\xbf{"model":"m","stream":true}',  # BOM: Ollama answers 400
        '{"model":"m","stream":true}'.encode("utf-16"),
        b'{"model":"m","stream":true,"temperature":NaN}',
        b'{"model":"m","stream":true,"temperature":1e400}',
        b'{"model":"m","stream":true,"x":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"model":"m","stream":true} {"extra":1}',
    ],
)
def test_bodies_ollama_would_refuse_or_read_differently_go_untouched(body: bytes) -> None:
    facts, sent = read_request(classify("/v1/chat/completions"), body, inject_usage=True)
    assert facts.usage_injected is False
    assert sent is body


def test_facts_are_read_as_ollama_reads_them() -> None:
    endpoint = classify("/api/chat")
    # Go's json.Decoder reads the first value and leaves what follows: Ollama answers it.
    facts, _ = read_request(endpoint, b'{"model":"m","stream":false} trailing', inject_usage=False)
    assert (facts.model, facts.stream) == ("m", False)  # as sent: models.py resolves it
    # Invalid UTF-8 in a string is replaced, not refused, by Go.
    body = b'{"model":"m","messages":[{"role":"user","content":"caf\xe9 au lait"}]}'
    facts, sent = read_request(endpoint, body, inject_usage=True)
    assert facts.model == "m"
    assert facts.prompt == "caf\ufffd au lait"
    assert sent is body
    assert read_request(endpoint, b"\xff", inject_usage=True)[0] is NO_FACTS


# --- (d) the categoriser and other small parsers --------------------------------------

CATEGORISER = Categoriser.default()
PROMPTS = st.one_of(
    st.text(),
    st.text(st.characters(codec="utf-8") | st.sampled_from(["\x00", "\ud800", "\u0130"])),
    st.builds(lambda a, b: a * 3000 + b, st.text(max_size=3), st.text(max_size=50)),
    st.sampled_from(["", " ", "\n" * 5000, "```" * 2000, "def f(" * 1000, "İ" * 3000]),
)


def _unfiltered() -> Categoriser:
    """The default rules with every pattern searched as written (the reference)."""
    text = resources.files("app.categories").joinpath("rules.json").read_text("utf-8")
    data = json.loads(text)
    rules = [CategoryRule(c["name"], tuple(c["patterns"])) for c in data["categories"]]
    return Categoriser(rules, fallback=data["fallback"], prefilter=False)


UNFILTERED = _unfiltered()


@settings(max_examples=150, deadline=None)
@given(text=PROMPTS)
def test_the_categoriser_answers_one_of_its_labels(text: str) -> None:
    label = CATEGORISER.categorise(text)
    assert label in CATEGORISER.categories
    assert label == UNFILTERED.categorise(text)  # the fast path never changes an answer


@FAST
@given(name=st.text())
def test_model_names_normalise_to_a_string_idempotently(name: str) -> None:
    once = normalise_model(name)
    assert isinstance(once, str)
    assert normalise_model(once) == once


HEADER_NAMES = st.one_of(
    st.sampled_from([*HOP_BY_HOP, b"host", b"authorization", b"content-type", b"x-a"]),
    st.binary(min_size=1, max_size=8),
)
HEADERS = st.lists(st.tuples(HEADER_NAMES, st.binary(max_size=16)), max_size=8)


@FAST
@given(headers=HEADERS, auth=st.none() | st.binary(max_size=8))
def test_no_hop_by_hop_header_crosses_upstream(
    headers: list[tuple[bytes, bytes]], auth: bytes | None
) -> None:
    out = upstream_request_headers(headers, b"upstream:11434", auth)
    declared = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    assert out[0] == (b"Host", b"upstream:11434")
    for name, _ in out[1:]:
        assert name not in HOP_BY_HOP | declared | {b"host"}
    passed = [(n, v) for n, v in headers if n not in HOP_BY_HOP | declared | {b"host"}]
    if auth is not None:
        passed = [(n, v) for n, v in passed if n != b"authorization"]
    assert out[1 + (auth is not None) :] == passed


@FAST
@given(headers=HEADERS)
def test_no_hop_by_hop_header_crosses_to_the_client(headers: list[tuple[bytes, bytes]]) -> None:
    out = client_response_headers(headers)
    for name, _ in out:
        assert name.lower() not in HOP_BY_HOP
    assert all(isinstance(n, bytes) and isinstance(v, bytes) for n, v in out)


def test_floats_are_finite_or_absent_in_a_rewrite() -> None:
    body = b'{"model":"m","stream":true,"temperature":0.1,"top_p":1e-320}'
    _, sent = read_request(classify("/v1/chat/completions"), body, inject_usage=True)
    after = json.loads(sent)
    assert after["temperature"] == 0.1
    assert math.isfinite(after["top_p"])

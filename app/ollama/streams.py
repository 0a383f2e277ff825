"""Readers that learn what Ollama answered while the bytes stream through.

Each reader is fed the response chunk by chunk, exactly as it arrives, and returns the bytes
to send on to the client: the same chunk, except where the proxy injected
``include_usage`` and must take the extra usage back out (``SseReader`` with
``strip_usage``). Nothing is held whole but an unfinished line or event, and the body of a
non-streamed JSON answer (up to ``max_json_bytes``).

What they gather goes into one ``Answer``: the model the answer names, token counts,
Ollama's own durations, the response text (capped), thinking, tool calls, the done reason,
an error, and when the first token arrived.

Each API shape is read as Ollama writes it (the files named are Ollama's): native NDJSON
(``server/routes.go``, ``api/types.go``), OpenAI chat and completions (``openai/openai.go``),
OpenAI Responses (``openai/responses.go``, ``middleware/openai.go``) and Anthropic Messages
(``anthropic/anthropic.go``, ``middleware/anthropic.go``).
"""

from __future__ import annotations

import json
import json.scanner
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.ollama.endpoints import Shape
from app.text import valid_text

# The scanner that json.loads ends up in (typeshed types make_scanner as a class).
_SCAN: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
    json.JSONDecoder()  # type: ignore[arg-type]
)


def parse_json(data: bytes | bytearray) -> Any:
    """``json.loads(data)``, three times faster on the small objects of a stream.

    ``json.loads`` spends more time detecting the encoding of bytes and in its Python-level
    wrappers than the C scanner spends parsing a 100-byte token line; this calls the scanner
    directly. Anything it does not parse cleanly goes to ``json.loads``, which parses it the
    same way or raises the same error.
    """
    try:
        text = data.decode("utf-8").strip(" \t\n\r")  # the whitespace JSON allows around
        obj, end = _SCAN(text, 0)
    except (ValueError, StopIteration, RecursionError):
        return _loads(data)
    if end != len(text):
        return _loads(data)  # raises: extra data
    return obj


def _loads(data: bytes | bytearray) -> Any:
    try:
        return json.loads(data)
    except RecursionError as exc:  # nested deeper than the stack: no answer of Ollama's
        raise ValueError("JSON nested too deeply") from exc


def _valid_json(value: Any) -> Any:
    """A parsed JSON value with every string made ``valid_text``."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, list):
        return [_valid_json(item) for item in value]
    if isinstance(value, dict):
        return {valid_text(key): _valid_json(item) for key, item in value.items()}
    return value


# A line or event longer than this is not held whole: it passes on to the client untouched,
# and only its first and last ``LongLine.KEEP`` bytes are kept to read (a final generate
# chunk with a 128k-token context is about 1 MB; a single token is a few bytes). Parsing
# costs about three times the line in memory, so this bounds what one line can make the
# proxy hold.
MAX_LINE_BYTES = 16 * 1024 * 1024


class LongLine:
    """A JSON line too long to hold: its head and its tail, and the scalars they name.

    Ollama's only lines this long are a final chunk whose ``context`` (the token ids of a
    whole conversation, ``/api/generate``) is huge, or a whole answer with such a context or a
    very long text. What matters but the text sits outside that middle: ``model`` first, the
    counts, durations and ``done`` last (``api/types.go`` field order). Inside a JSON string
    a quote is escaped, so ``"eval_count":`` cannot match within one; a nested object (tool
    call arguments) comes before the top-level counts, so the last match of each is the one.
    """

    KEEP = 64 * 1024
    _HEAD = re.compile(rb'"(model|error)":"((?:[^"\\]|\\.)*)"')
    _TAIL = re.compile(
        rb'"(prompt_eval_count|eval_count|total_duration|load_duration|prompt_eval_duration'
        rb'|eval_duration|done|done_reason)":(\d+|true|false|"(?:[^"\\]|\\.)*")'
    )

    __slots__ = ("head", "tail")

    def __init__(self, start: bytes | bytearray) -> None:
        self.head = bytes(start[: self.KEEP])
        self.tail = bytes(start[-self.KEEP :])

    def add(self, data: bytes | bytearray) -> None:
        self.tail = (self.tail + data)[-self.KEEP :]

    def fields(self) -> dict[str, Any]:
        """The top-level scalars the line named, parsed as JSON values."""
        found: dict[str, Any] = {}
        for match in self._HEAD.finditer(self.head):
            found.setdefault(match[1].decode(), match[2])
        for part in (self.head, self.tail):  # done and done_reason come before context
            for match in self._TAIL.finditer(part):
                found[match[1].decode()] = match[2]
        values = {}
        for key, raw in found.items():
            try:
                values[key] = parse_json(b'"%s"' % raw if key in ("model", "error") else raw)
            except ValueError:
                continue
        return values


class TextBuffer:
    """Text gathered from many chunks, capped at ``limit`` characters."""

    __slots__ = ("limit", "parts", "size", "truncated")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0
        self.truncated = False

    def add(self, text: str) -> None:
        if not text:
            return
        room = self.limit - self.size
        if room <= 0:
            self.truncated = True
            return
        if len(text) > room:
            text = text[:room]
            self.truncated = True
        self.parts.append(text)
        self.size += len(text)

    def set(self, text: str) -> None:
        self.parts.clear()
        self.size = 0
        self.truncated = False
        self.add(text)

    def __str__(self) -> str:
        return valid_text("".join(self.parts))


@dataclass(slots=True)
class Answer:
    """What Ollama's answer said. Counts are None when the answer did not carry them."""

    text_limit: int = 1 << 20
    # The model the answer names (every native chunk, the OpenAI ``model``, Anthropic's
    # ``message_start``, the Responses object): what a request too large to read is known by.
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_duration_ns: int | None = None
    load_duration_ns: int | None = None
    prompt_eval_duration_ns: int | None = None
    eval_duration_ns: int | None = None
    done_reason: str | None = None
    error: str | None = None
    # perf_counter() time of the first chunk carrying generated output.
    first_token_at: float | None = None
    # The answer reached its proper end (done:true, [DONE], message_stop, a whole JSON body).
    complete: bool = False
    chunks: int = 0
    malformed: int = 0
    tool_calls: list[Any] = field(default_factory=list)
    text: TextBuffer = field(init=False)
    thinking: TextBuffer = field(init=False)

    def __post_init__(self) -> None:
        self.text = TextBuffer(self.text_limit)
        self.thinking = TextBuffer(self.text_limit)

    def named(self, model: object) -> None:
        if self.model is None and isinstance(model, str) and model:
            self.model = valid_text(model)

    def began(self, now: float) -> None:
        """Output began that is neither text nor thinking (a tool call's arguments)."""
        if self.first_token_at is None:
            self.first_token_at = now

    def output(self, now: float, text: object, thinking: object, tools: object) -> None:
        """One chunk's generated output."""
        got = False
        if isinstance(text, str) and text:
            self.text.add(text)
            got = True
        if isinstance(thinking, str) and thinking:
            self.thinking.add(thinking)
            got = True
        if isinstance(tools, list) and tools:
            self.tool_calls.extend(_valid_json(tools))
            got = True
        if got and self.first_token_at is None:
            self.first_token_at = now


class Reader(Protocol):
    def feed(self, chunk: bytes, now: float) -> bytes: ...

    def end(self, now: float) -> bytes: ...


def _int(value: object) -> int:
    # Go omits zero metrics (omitempty): absent means 0 on a final chunk. Counts and
    # durations are Go int64s, never negative: anything else would break a Prometheus
    # counter or a BIGINT column, so it counts as absent.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63:
        return value
    return 0


def _error_text(value: object) -> str | None:
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, dict):
        message = value.get("message")
        return valid_text(message) if isinstance(message, str) else json.dumps(value)
    return None


def _reason(value: object) -> str | None:
    return valid_text(value) if isinstance(value, str) else None


def read_native_object(answer: Answer, shape: Shape, obj: dict[str, Any], now: float) -> None:
    """A native generate/chat chunk, or the whole non-streamed answer (the same shape)."""
    if obj.get("error") is not None:
        answer.error = _error_text(obj["error"]) or "error"
        return
    if answer.model is None:
        answer.named(obj.get("model"))
    if shape == "chat":
        message = obj.get("message")
        if isinstance(message, dict):
            answer.output(
                now, message.get("content"), message.get("thinking"), message.get("tool_calls")
            )
    else:
        answer.output(now, obj.get("response"), obj.get("thinking"), obj.get("tool_calls"))
    if obj.get("done") is True:
        answer.complete = True
        answer.done_reason = _reason(obj.get("done_reason"))
        answer.prompt_tokens = _int(obj.get("prompt_eval_count"))
        answer.completion_tokens = _int(obj.get("eval_count"))
        answer.total_duration_ns = _int(obj.get("total_duration"))
        answer.load_duration_ns = _int(obj.get("load_duration"))
        answer.prompt_eval_duration_ns = _int(obj.get("prompt_eval_duration"))
        answer.eval_duration_ns = _int(obj.get("eval_duration"))


class NdjsonReader:
    """Native streams: one JSON object per line, lines split anywhere by TCP."""

    __slots__ = ("answer", "long", "partial", "shape")

    def __init__(self, answer: Answer, shape: Shape) -> None:
        self.answer = answer
        self.shape = shape
        self.partial = bytearray()
        self.long: LongLine | None = None

    def feed(self, chunk: bytes, now: float) -> bytes:
        start = 0
        while (newline := chunk.find(b"\n", start)) >= 0:
            if self.long is not None:
                self.long.add(chunk[start:newline])  # the over-long line ends here
                self._long_line(now)
            elif self.partial:
                self.partial += chunk[start:newline]
                self._line(self.partial, now)
                self.partial.clear()
            else:
                self._line(chunk[start:newline], now)
            start = newline + 1
        if start < len(chunk):
            if self.long is not None:
                self.long.add(chunk[start:])
            else:
                self.partial += chunk[start:]
                if len(self.partial) > MAX_LINE_BYTES:
                    self.long = LongLine(self.partial)
                    self.partial.clear()
        return chunk

    def end(self, now: float) -> bytes:
        if self.long is not None:
            self._long_line(now)
        elif self.partial:
            self._line(self.partial, now)
        self.partial.clear()
        return b""

    def _long_line(self, now: float) -> None:
        """A line over MAX_LINE_BYTES is over: read what it kept of itself."""
        assert self.long is not None
        answer = self.answer
        fields, self.long = self.long.fields(), None
        answer.chunks += 1
        # Whatever text the line carried is missing from what is kept.
        answer.text.truncated = True
        if not fields:
            answer.malformed += 1
        elif self.shape in ("generate", "chat"):
            read_native_object(answer, self.shape, fields, now)
        elif fields.get("error") is not None:
            answer.error = _error_text(fields["error"]) or "error"

    def _line(self, line: bytes | bytearray, now: float) -> None:
        answer = self.answer
        answer.chunks += 1
        if self.shape not in ("generate", "chat") and not (
            b'"error"' in line or b'"success"' in line
        ):
            return  # progress lines of pull/push/create: only an error or the end matter
        try:
            obj = parse_json(line)
        except ValueError:
            if line.strip():
                answer.malformed += 1
            return
        if not isinstance(obj, dict):
            answer.malformed += 1
        elif self.shape in ("generate", "chat"):
            read_native_object(answer, self.shape, obj, now)
        elif obj.get("error") is not None:
            answer.error = _error_text(obj["error"]) or "error"
        else:
            answer.complete = answer.complete or obj.get("status") == "success"


# The zero usage Ollama adds to every /v1/completions chunk once include_usage is on.
_ZERO_USAGE = re.compile(rb',"usage":\{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0\}')


class SseReader:
    """OpenAI- and Anthropic-compatible server-sent events (``data:`` lines, blank-line framed).

    With ``strip_usage`` the reader forwards whole events only, dropping the usage-only
    chunk and the zero usage of completion chunks that exist only because the proxy asked.
    """

    __slots__ = ("answer", "partial", "shape", "strip_usage", "tools")

    def __init__(self, answer: Answer, shape: Shape, *, strip_usage: bool) -> None:
        self.answer = answer
        self.shape = shape
        self.strip_usage = strip_usage
        self.partial = bytearray()
        # Anthropic tool_use blocks being streamed, by index: the block, its argument parts.
        self.tools: dict[int, ToolUse] = {}

    def feed(self, chunk: bytes, now: float) -> bytes:
        # Only the new bytes (and the one before them) can complete an event: a long event
        # is not searched again with every chunk.
        searched = max(len(self.partial) - 1, 0)
        self.partial += chunk
        end = self.partial.rfind(b"\n\n", searched)
        if end < 0:
            if len(self.partial) > MAX_LINE_BYTES:
                # Not an event anyone can read: pass it on unread rather than hold it.
                self.answer.malformed += 1
                self.answer.text.truncated = True
                held = bytes(self.partial)
                self.partial.clear()
                return held if self.strip_usage else chunk
            return b"" if self.strip_usage else chunk
        complete = bytes(self.partial[: end + 2])
        del self.partial[: end + 2]
        kept = self._events(complete, now)
        return kept if self.strip_usage else chunk

    def end(self, now: float) -> bytes:
        rest = bytes(self.partial)
        self.partial.clear()
        kept = self._events(rest, now) if rest else b""
        flush_tools(self.answer, self.tools, now)
        return kept if self.strip_usage else b""

    def _events(self, block: bytes, now: float) -> bytes:
        kept: list[bytes] = []
        for event in block.split(b"\n\n"):
            if not event.strip(b"\r\n"):
                continue
            keep = self._event(event, now)
            if keep is not None:
                kept.append(keep + b"\n\n")
        return b"".join(kept)

    def _event(self, event: bytes, now: float) -> bytes | None:
        """Read one event; return the bytes to forward (None drops it)."""
        answer = self.answer
        answer.chunks += 1
        name = b""
        data: list[bytes] = []
        for line in event.split(b"\n"):
            line = line.rstrip(b"\r")
            if line.startswith(b"data:"):
                data.append(line[5:].removeprefix(b" "))
            elif line.startswith(b"event:"):
                name = line[6:].strip()
        payload = b"\n".join(data)
        if payload == b"[DONE]":
            answer.complete = True
            return event
        try:
            obj = parse_json(payload) if payload else None
        except ValueError:
            answer.malformed += 1
            return event
        if not isinstance(obj, dict):
            return event
        if self.shape == "anthropic_messages":
            kind = name.decode("latin-1") or str(obj.get("type"))
            read_anthropic_event(answer, self.tools, kind, obj, now)
            return event
        if self.shape == "openai_responses":
            read_responses_event(answer, name.decode("latin-1") or str(obj.get("type")), obj, now)
            return event
        return self._openai(event, obj, now)

    def _openai(self, event: bytes, obj: dict[str, Any], now: float) -> bytes | None:
        answer = self.answer
        if obj.get("error") is not None:
            answer.error = _error_text(obj["error"]) or "error"
            return event
        if answer.model is None:
            answer.named(obj.get("model"))
        choices = obj.get("choices")
        usage = obj.get("usage")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            if self.shape == "openai_completions":
                answer.output(now, choice.get("text"), None, None)
            else:
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    answer.output(
                        now, delta.get("content"), delta.get("reasoning"), delta.get("tool_calls")
                    )
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                answer.done_reason = valid_text(reason)
        if isinstance(usage, dict) and not choices:
            answer.prompt_tokens = _int(usage.get("prompt_tokens"))
            answer.completion_tokens = _int(usage.get("completion_tokens"))
            return None if self.strip_usage else event
        if self.strip_usage and usage is not None:
            return _ZERO_USAGE.sub(b"", event, count=1)
        return event


@dataclass(slots=True)
class ToolUse:
    """An Anthropic ``tool_use`` block being streamed: its ``input`` arrives as
    ``input_json_delta`` parts (``anthropic/anthropic.go`` ``Process``)."""

    block: dict[str, Any]
    parts: list[str] = field(default_factory=list)
    size: int = 0


def read_anthropic_event(
    answer: Answer, tools: dict[int, ToolUse], name: str, obj: dict[str, Any], now: float
) -> None:
    """One Anthropic Messages event. ``message_start``'s ``input_tokens`` is Ollama's estimate
    (length / 4, ``EstimateInputTokens``), not a count: prompt tokens come only from
    ``message_delta``."""
    if name == "message_start":
        message = obj.get("message")
        if isinstance(message, dict):
            answer.named(message.get("model"))
    elif name == "content_block_start":
        block = obj.get("content_block")
        index = _index(obj)
        if isinstance(block, dict) and block.get("type") == "tool_use":
            answer.began(now)
            if index >= 0 and len(tools) < 1024:
                tools[index] = ToolUse(dict(block))
            else:
                answer.output(now, None, None, [block])
    elif name == "content_block_delta":
        delta = obj.get("delta")
        if isinstance(delta, dict):
            kind = delta.get("type")
            if kind == "text_delta":
                answer.output(now, delta.get("text"), None, None)
            elif kind == "thinking_delta":
                answer.output(now, None, delta.get("thinking"), None)
            elif kind == "input_json_delta":
                tool = tools.get(_index(obj))
                part = delta.get("partial_json")
                if tool is not None and isinstance(part, str):
                    if tool.size + len(part) <= answer.text_limit:
                        tool.parts.append(part)
                        tool.size += len(part)
                    else:
                        answer.text.truncated = True
    elif name == "content_block_stop":
        tool = tools.pop(_index(obj), None)
        if tool is not None:
            answer.output(now, None, None, [_tool_use(tool)])
    elif name == "message_delta":
        delta = obj.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
            answer.done_reason = valid_text(delta["stop_reason"])
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if "input_tokens" in usage:
                answer.prompt_tokens = _int(usage.get("input_tokens"))
            answer.completion_tokens = _int(usage.get("output_tokens"))
    elif name == "message_stop":
        answer.complete = True
        flush_tools(answer, tools, now)
    elif name == "error":
        answer.error = _error_text(obj.get("error")) or "error"


def _index(obj: dict[str, Any]) -> int:
    """An event's content block index (-1 when it has none)."""
    index = obj.get("index")
    return index if isinstance(index, int) else -1


def flush_tools(answer: Answer, tools: dict[int, ToolUse], now: float) -> None:
    """Tool blocks that never stopped: keep what arrived of them."""
    for index in sorted(tools):
        answer.output(now, None, None, [_tool_use(tools.pop(index))])


def _tool_use(tool: ToolUse) -> dict[str, Any]:
    """The block with its ``input`` whole: parsed, or as the text that arrived."""
    if tool.parts:
        text = "".join(tool.parts)
        try:
            tool.block["input"] = parse_json(text.encode())
        except ValueError:
            tool.block["input"] = text
    return tool.block


def read_responses_event(answer: Answer, name: str, obj: dict[str, Any], now: float) -> None:
    """One OpenAI Responses event (``openai/responses.go`` ``ResponsesStreamConverter``):
    text, reasoning and function-call items as they stream; usage only in
    ``response.completed``. On a failure mid-stream Ollama sends no event at all
    (``middleware/openai.go`` ``ResponsesWriter``): the stream just ends, incomplete."""
    if name == "response.output_text.delta":
        answer.output(now, obj.get("delta"), None, None)
    elif name in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
        answer.output(now, None, obj.get("delta"), None)
    elif name == "response.function_call_arguments.delta":
        answer.began(now)
    elif name == "response.output_item.done":
        item = obj.get("item")
        if isinstance(item, dict) and item.get("type") == "function_call":
            answer.output(now, None, None, [item])
    elif name in ("response.completed", "response.incomplete", "response.failed"):
        response = obj.get("response")
        if isinstance(response, dict):
            _responses_outcome(answer, response)
    elif name == "response.created":
        response = obj.get("response")
        if isinstance(response, dict):
            answer.named(response.get("model"))
    elif name == "error":
        answer.error = _error_text(obj.get("message") or obj.get("error")) or "error"


def _responses_outcome(answer: Answer, response: dict[str, Any]) -> None:
    """A Responses object's end: its usage, status (as the done reason) and error."""
    answer.named(response.get("model"))
    usage = response.get("usage")
    if isinstance(usage, dict):
        answer.prompt_tokens = _int(usage.get("input_tokens"))
        answer.completion_tokens = _int(usage.get("output_tokens"))
    status = response.get("status")
    if status == "incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        answer.done_reason = _reason(reason) or "incomplete"
    elif isinstance(status, str):
        answer.done_reason = valid_text(status)
    if response.get("error") is not None:
        answer.error = _error_text(response["error"]) or "error"
    answer.complete = status in ("completed", "incomplete")


def _responses_item(answer: Answer, item: dict[str, Any], now: float) -> None:
    """One output item of a whole Responses object (``ToResponse``)."""
    kind = item.get("type")
    if kind == "message":
        content = item.get("content")
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "output_text":
                answer.output(now, part.get("text"), None, None)
    elif kind == "reasoning":
        summary = item.get("summary")
        for part in summary if isinstance(summary, list) else ():
            if isinstance(part, dict):
                answer.output(now, None, part.get("text"), None)
    elif kind == "function_call":
        answer.output(now, None, None, [item])


class JsonReader:
    """A whole JSON answer (non-streamed, load/unload, errors), read once it is complete."""

    __slots__ = ("answer", "long", "max_bytes", "parts", "shape", "size")

    def __init__(self, answer: Answer, shape: Shape, *, max_bytes: int) -> None:
        self.answer = answer
        self.shape = shape
        self.max_bytes = max_bytes
        self.parts: list[bytes] = []
        self.size = 0
        # Past max_bytes: only the head and the tail of the answer are kept.
        self.long: LongLine | None = None

    def feed(self, chunk: bytes, now: float) -> bytes:
        if self.long is not None:
            self.long.add(chunk)
            return chunk
        self.size += len(chunk)
        self.parts.append(chunk)
        if self.size > self.max_bytes:
            self.long = LongLine(b"".join(self.parts))
            self.parts.clear()
        return chunk

    def end(self, now: float) -> bytes:
        if self.long is not None:
            fields, self.long = self.long.fields(), None
            self.answer.text.truncated = True
            if self.shape in ("generate", "chat"):
                read_json_answer(self.answer, self.shape, fields, now)
            else:
                self.answer.named(fields.get("model"))
            return b""
        if not self.parts:
            return b""
        try:
            obj = parse_json(b"".join(self.parts))
        except ValueError:
            self.answer.malformed += 1
            return b""
        self.parts.clear()
        if isinstance(obj, dict):
            read_json_answer(self.answer, self.shape, obj, now)
        return b""


def read_json_answer(answer: Answer, shape: Shape, obj: dict[str, Any], now: float) -> None:
    """A complete JSON answer of any endpoint shape."""
    answer.chunks = 1
    if obj.get("error") is not None:
        answer.error = _error_text(obj["error"]) or "error"
        return
    answer.complete = True
    answer.named(obj.get("model"))
    if shape in ("generate", "chat"):
        read_native_object(answer, shape, obj, now)
    elif shape == "embed":
        answer.prompt_tokens = _int(obj.get("prompt_eval_count"))
        answer.total_duration_ns = _int(obj.get("total_duration"))
        answer.load_duration_ns = _int(obj.get("load_duration"))
    elif shape in ("openai_chat", "openai_completions", "openai_embeddings"):
        usage = obj.get("usage")
        if isinstance(usage, dict):
            answer.prompt_tokens = _int(usage.get("prompt_tokens"))
            if shape != "openai_embeddings":
                answer.completion_tokens = _int(usage.get("completion_tokens"))
        choices = obj.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            message = choice.get("message")
            if isinstance(message, dict):
                answer.output(
                    now, message.get("content"), message.get("reasoning"), message.get("tool_calls")
                )
            else:
                answer.output(now, choice.get("text"), None, None)
            if isinstance(choice.get("finish_reason"), str):
                answer.done_reason = valid_text(choice["finish_reason"])
    elif shape == "anthropic_messages":
        usage = obj.get("usage")
        if isinstance(usage, dict):
            answer.prompt_tokens = _int(usage.get("input_tokens"))
            answer.completion_tokens = _int(usage.get("output_tokens"))
        content = obj.get("content")
        for block in content if isinstance(content, list) else ():
            if isinstance(block, dict):
                kind = block.get("type")
                if kind == "text":
                    answer.output(now, block.get("text"), None, None)
                elif kind == "thinking":
                    answer.output(now, None, block.get("thinking"), None)
                elif kind == "tool_use":
                    answer.output(now, None, None, [block])
        if isinstance(obj.get("stop_reason"), str):
            answer.done_reason = valid_text(obj["stop_reason"])
    elif shape == "openai_responses":
        output = obj.get("output")
        for item in output if isinstance(output, list) else ():
            if isinstance(item, dict):
                _responses_item(answer, item, now)
        _responses_outcome(answer, obj)


def reader_for(
    answer: Answer,
    shape: Shape,
    content_type: bytes,
    *,
    status: int,
    strip_usage: bool,
    max_json_bytes: int,
) -> Reader | None:
    """The reader for an answer, chosen by what the upstream says it is sending."""
    ctype = content_type.lower()
    if ctype.startswith(b"application/x-ndjson"):
        return NdjsonReader(answer, shape)
    if ctype.startswith(b"text/event-stream") and shape != "none":
        return SseReader(answer, shape, strip_usage=strip_usage)
    if ctype.startswith(b"application/json") and (shape != "none" or status >= 400):
        # Model management answers (tags, show, ...) say nothing worth parsing unless an error.
        return JsonReader(answer, shape, max_bytes=max_json_bytes)
    return None

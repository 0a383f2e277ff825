"""Readers that learn what Ollama answered while the bytes stream through.

Each reader is fed the response chunk by chunk, exactly as it arrives, and returns the bytes
to send on to the client: the same chunk, except where the proxy injected
``include_usage`` and must take the extra usage back out (``SseReader`` with
``strip_usage``). Nothing is held whole but an unfinished line or event, and the body of a
non-streamed JSON answer (up to ``max_json_bytes``).

What they gather goes into one ``Answer``: token counts, Ollama's own durations, the
response text (capped), thinking, tool calls, the done reason, an error, and when the first
token arrived.
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


# A line or event longer than this is skipped rather than held: it passes on to the client
# untouched, but its text is not read (a final generate chunk with a 128k-token context is
# about 1 MB; a single token is a few bytes). Parsing costs about three times the line in
# memory, so this bounds what one broken upstream line can make the proxy hold.
MAX_LINE_BYTES = 16 * 1024 * 1024


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
    if "error" in obj:
        answer.error = _error_text(obj["error"]) or "error"
        return
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

    __slots__ = ("answer", "partial", "shape", "skipping")

    def __init__(self, answer: Answer, shape: Shape) -> None:
        self.answer = answer
        self.shape = shape
        self.partial = bytearray()
        self.skipping = False

    def feed(self, chunk: bytes, now: float) -> bytes:
        start = 0
        while (newline := chunk.find(b"\n", start)) >= 0:
            if self.skipping:
                self.skipping = False  # the over-long line ends here
            elif self.partial:
                self.partial += chunk[start:newline]
                self._line(self.partial, now)
                self.partial.clear()
            else:
                self._line(chunk[start:newline], now)
            start = newline + 1
        if start < len(chunk) and not self.skipping:
            self.partial += chunk[start:]
            if len(self.partial) > MAX_LINE_BYTES:
                self.partial.clear()
                self.skipping = True
                self.answer.malformed += 1
                # Whatever text the line carried is missing from what is kept.
                self.answer.text.truncated = True
        return chunk

    def end(self, now: float) -> bytes:
        if self.partial and not self.skipping:
            self._line(self.partial, now)
        self.partial.clear()
        return b""

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
        elif "error" in obj:
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

    __slots__ = ("answer", "partial", "shape", "strip_usage")

    def __init__(self, answer: Answer, shape: Shape, *, strip_usage: bool) -> None:
        self.answer = answer
        self.shape = shape
        self.strip_usage = strip_usage
        self.partial = bytearray()

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
        if not rest:
            return b""
        kept = self._events(rest, now)
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
            read_anthropic_event(answer, name.decode("latin-1") or str(obj.get("type")), obj, now)
            return event
        return self._openai(event, obj, now)

    def _openai(self, event: bytes, obj: dict[str, Any], now: float) -> bytes | None:
        answer = self.answer
        if "error" in obj:
            answer.error = _error_text(obj["error"]) or "error"
            return event
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


def read_anthropic_event(answer: Answer, name: str, obj: dict[str, Any], now: float) -> None:
    if name == "message_start":
        message = obj.get("message")
        usage = message.get("usage") if isinstance(message, dict) else None
        if isinstance(usage, dict):
            answer.prompt_tokens = _int(usage.get("input_tokens"))
    elif name == "content_block_start":
        block = obj.get("content_block")
        if isinstance(block, dict) and block.get("type") == "tool_use":
            answer.output(now, None, None, [block])
    elif name == "content_block_delta":
        delta = obj.get("delta")
        if isinstance(delta, dict):
            kind = delta.get("type")
            if kind == "text_delta":
                answer.output(now, delta.get("text"), None, None)
            elif kind == "thinking_delta":
                answer.output(now, None, delta.get("thinking"), None)
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
    elif name == "error":
        answer.error = _error_text(obj.get("error")) or "error"


class JsonReader:
    """A whole JSON answer (non-streamed, load/unload, errors), read once it is complete."""

    __slots__ = ("answer", "dropped", "max_bytes", "parts", "shape", "size")

    def __init__(self, answer: Answer, shape: Shape, *, max_bytes: int) -> None:
        self.answer = answer
        self.shape = shape
        self.max_bytes = max_bytes
        self.parts: list[bytes] = []
        self.size = 0
        self.dropped = False

    def feed(self, chunk: bytes, now: float) -> bytes:
        if not self.dropped:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                self.parts.clear()
                self.dropped = True
            else:
                self.parts.append(chunk)
        return chunk

    def end(self, now: float) -> bytes:
        if self.dropped or not self.parts:
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
    if "error" in obj:
        answer.error = _error_text(obj["error"]) or "error"
        return
    answer.complete = True
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
        # (Event streams of other routes, such as /v1/responses, are passed on unread.)
        return SseReader(answer, shape, strip_usage=strip_usage)
    if ctype.startswith(b"application/json") and (shape != "none" or status >= 400):
        # Model management answers (tags, show, ...) say nothing worth parsing unless an error.
        return JsonReader(answer, shape, max_bytes=max_json_bytes)
    return None

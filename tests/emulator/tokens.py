"""Deterministic token accounting: tests predict every metric without calling the server.

The emulator itself calls `plan_generation` (via `expected_generation`) for each request,
so these functions are the single source of truth. The rules:

* Words: `count_text_tokens(text)` = ceil(1.3 × whitespace-separated words).
* Prompt (chat and generate are templated the same way):
  `TEMPLATE_OVERHEAD + Σ (PER_MESSAGE_OVERHEAD + count_text_tokens(content))` over the
  messages, where `generate` counts `system` (if any) and `prompt` as two messages;
  plus `len(context)` for a generate `context`; plus `tools_tokens(tools)`.
  `raw` generate: `max(1, count_text_tokens(prompt))`.
* Output: thinking tokens first (`THINKING_TOKENS` of them when thinking is on), then
  either one tool call (when tools are given, the model supports tools and the last
  message is not a tool result; it costs `TOOL_CALL_TOKENS`) or text tokens.
  Without `num_predict` there are `DEFAULT_EVAL_COUNT` text tokens and done_reason
  "stop"; with `num_predict` = N > 0 exactly N tokens are produced in total (thinking
  counts), done_reason "length" (a tool call is only made when N leaves room after it).
* Chunks (`Expected.chunks`, then `Expected.final`): mostly one token a chunk, but as
  llama-server streams them, some chunks carry two tokens (never the first chunk), and
  sometimes the final `done: true` chunk carries the last token, so the number of
  chunks is below `eval_count`. A tool call's tokens show in no chunk: the calls ride
  the final chunk (llm/llama_server.go Chat accumulates them), unless logprobs were
  asked, when each of its tokens is a chunk with only logprobs.
* The words are a function of (normalised model name, last user message / prompt) via
  SHA-256, so `llama3.2` and `llama3.2:latest` generate the same text.
* Durations (integer ns): load = per model; prompt_eval = prompt tokens × per-token ns;
  eval = eval_count × per-token ns. The emulator sleeps them for real, and measures
  total_duration, which is at least `Expected.timed_duration` (load + prompt_eval + eval)
  and at most the time the request took (see `engine`).
* Embeddings: `embed_prompt_tokens(inputs)` = Σ (count_text_tokens(input) + 2).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.emulator.catalog import ModelSpec, normalize, spec_for

__all__ = [
    "DEFAULT_EVAL_COUNT",
    "PER_MESSAGE_OVERHEAD",
    "TEMPLATE_OVERHEAD",
    "THINKING_TOKENS",
    "TOOL_CALL_TOKENS",
    "Chunk",
    "Expected",
    "chat_prompt_tokens",
    "count_text_tokens",
    "embed_prompt_duration",
    "embed_prompt_tokens",
    "embedding_vector",
    "expected_generation",
    "generate_prompt_tokens",
    "legacy_embedding",
    "plan_generation",
    "tool_call_id",
    "tools_tokens",
]

DEFAULT_EVAL_COUNT = 12
THINKING_TOKENS = 6
TOOL_CALL_TOKENS = 9
TEMPLATE_OVERHEAD = 18
PER_MESSAGE_OVERHEAD = 4
EMBED_PER_INPUT_OVERHEAD = 2

# A few entries exercise Go's HTML escaping (\u0026, \u003c) and raw UTF-8 output.
WORDS = (
    "the", "sky", "is", "blue", "because", "of", "Rayleigh", "scattering", "light",
    "from", "sun", "hits", "molecules", "in", "air", "and", "shorter", "wavelengths",
    "scatter", "more", "than", "longer", "ones", "so", "we", "see", "a", "bright",
    "canopy", "during", "day", "at", "sunset", "it", "turns", "red", "orange", "café",
    "naïve", "R&D", "x<y", "data", "model", "token", "stream", "proxy", "metric", "fast",
    "quiet", "river", "mountain", "forest", "ocean", "cloud", "storm", "rain", "snow",
    "wind", "sand", "stone", "glass", "paper", "ink", "star",
)  # fmt: skip
THINKING_WORDS = (
    "Okay", "the", "user", "asks", "about", "this", "let", "me", "think", "carefully",
    "first", "consider", "what", "they", "want", "then", "answer", "briefly",
)  # fmt: skip


@dataclass(frozen=True)
class Chunk:
    """What one streamed native object carries: its text and the tokens behind it."""

    thinking: str = ""
    content: str = ""
    pieces: tuple[str, ...] = ()  # the tokens it shows, in order (their logprobs)
    hidden: int = 0  # tokens generated before it that no chunk shows (a tool call's)

    @property
    def tokens(self) -> int:
        return len(self.pieces) + self.hidden


@dataclass(frozen=True)
class Expected:
    """Everything a request's response will contain, computed without the server."""

    text_tokens: list[str]
    thinking_tokens: list[str]
    tool_calls: list[dict[str, Any]]
    prompt_eval_count: int
    eval_count: int
    load_duration: int
    prompt_eval_duration: int
    eval_duration: int
    done_reason: str
    context: list[int] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)  # the lines before the final one
    final: Chunk = field(default_factory=Chunk)  # what the `done: true` line carries

    @property
    def text(self) -> str:
        return "".join(self.text_tokens)

    @property
    def thinking(self) -> str:
        return "".join(self.thinking_tokens)

    @property
    def timed_duration(self) -> int:
        """What total_duration is at least: load + prompt_eval + eval."""
        return self.load_duration + self.prompt_eval_duration + self.eval_duration

    @property
    def chunk_count(self) -> int:
        """Streamed lines before the final `done: true` line (fewer than eval_count)."""
        return len(self.chunks)


def count_text_tokens(text: str) -> int:
    return (13 * len(text.split()) + 9) // 10


def tools_tokens(tools: Sequence[Mapping[str, Any]] | None) -> int:
    if not tools:
        return 0
    return math.ceil(len(json.dumps(list(tools), separators=(",", ":"))) / 4)


def chat_prompt_tokens(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None
) -> int:
    body = sum(
        PER_MESSAGE_OVERHEAD + count_text_tokens(str(m.get("content") or "")) for m in messages
    )
    return TEMPLATE_OVERHEAD + body + tools_tokens(tools)


def generate_prompt_tokens(
    prompt: str, system: str = "", *, raw: bool = False, context: Sequence[int] = ()
) -> int:
    if raw:
        return max(1, count_text_tokens(prompt)) + len(context)
    messages = ([{"content": system}] if system else []) + [{"content": prompt}]
    return chat_prompt_tokens(messages) + len(context)


def embed_prompt_tokens(inputs: str | Sequence[str]) -> int:
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    return sum(count_text_tokens(item) + EMBED_PER_INPUT_OVERHEAD for item in items if item)


def embed_prompt_duration(spec: ModelSpec, prompt_tokens: int) -> int:
    """How long /api/embed evaluates its inputs (inside total_duration, after the load)."""
    return prompt_tokens * spec.prompt_ns_per_token


def _stream(seed: str, salt: str) -> bytes:
    return hashlib.shake_256(f"{salt}\0{seed}".encode()).digest(512)


def _words(seed: str, salt: str, vocabulary: Sequence[str], count: int) -> list[str]:
    data = _stream(seed, salt) * (1 + count // 256)
    picks = [
        vocabulary[int.from_bytes(data[2 * i : 2 * i + 2]) % len(vocabulary)] for i in range(count)
    ]
    return [word[:1].upper() + word[1:] if i == 0 else f" {word}" for i, word in enumerate(picks)]


def tool_call_id(seed: str) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    data = _stream(seed, "call-id")
    return "call_" + "".join(alphabet[b % len(alphabet)] for b in data[:8])


def _tool_arguments(tool: Mapping[str, Any], seed: str) -> dict[str, Any]:
    function = tool.get("function") or {}
    parameters = function.get("parameters") or {}
    properties = parameters.get("properties") or {}
    words = _words(seed, "tool-args", WORDS, max(1, len(properties)))
    arguments: dict[str, Any] = {}
    for index, (name, schema) in enumerate(properties.items()):
        kind = schema.get("type") if isinstance(schema, Mapping) else None
        if isinstance(schema, Mapping) and schema.get("enum"):
            arguments[name] = schema["enum"][0]
        elif kind in ("integer", "number"):
            arguments[name] = 3
        elif kind == "boolean":
            arguments[name] = True
        elif kind == "array":
            arguments[name] = [words[index].strip()]
        else:
            arguments[name] = words[index].strip()
    return arguments


def _seed_text(prompt: str | Sequence[Mapping[str, Any]]) -> str:
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if str(message.get("role", "")).lower() == "user":
            return str(message.get("content") or "")
    return ""


_MERGE_ONE_IN = 4  # about one chunk in four carries a second token
_FINAL_CARRIES_ONE_IN = 3  # about one answer in three ends on a final chunk with text


def _call_pieces(call: Mapping[str, Any]) -> tuple[str, ...]:
    """The tool call's text cut into TOOL_CALL_TOKENS tokens (what their logprobs show)."""
    function = call["function"]
    text = json.dumps(
        {"name": function["name"], "arguments": function["arguments"]},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    size = -(-len(text) // TOOL_CALL_TOKENS)
    pieces = [text[i * size : (i + 1) * size] for i in range(TOOL_CALL_TOKENS)]
    return tuple(pieces)


def _chunking(
    seed: str,
    thinking: Sequence[str],
    text: Sequence[str],
    calls: Sequence[Mapping[str, Any]],
    logprobs: bool,
) -> tuple[list[Chunk], Chunk]:
    """Group the tokens into streamed chunks, seeded like the words (see the docstring)."""
    tokens = [("thinking", token) for token in thinking] + [("content", token) for token in text]
    data = _stream(seed, "chunks")
    groups: list[list[tuple[str, str]]] = []
    index = 0
    while index < len(tokens):
        merge = 0 < index < len(tokens) - 1 and data[index % len(data)] % _MERGE_ONE_IN == 0
        width = 2 if merge else 1
        groups.append(tokens[index : index + width])
        index += width
    if len(tokens) >= 4 and all(len(group) == 1 for group in groups):
        groups[1:3] = [groups[1] + groups[2]]  # at least one two-token chunk
    carried: list[tuple[str, str]] = []
    if groups and not calls and data[-1] % _FINAL_CARRIES_ONE_IN == 0:
        carried = groups.pop()

    def chunk(group: Sequence[tuple[str, str]], hidden: int = 0) -> Chunk:
        return Chunk(
            thinking="".join(t for kind, t in group if kind == "thinking"),
            content="".join(t for kind, t in group if kind == "content"),
            pieces=tuple(t for _, t in group),
            hidden=hidden,
        )

    chunks = [chunk(group) for group in groups]
    hidden = 0
    for call in calls:
        if logprobs:  # llm/llama_server.go Chat: a delta with only logprobs is still sent
            chunks += [Chunk(pieces=(piece,)) for piece in _call_pieces(call)]
        else:
            hidden += TOOL_CALL_TOKENS
    return chunks, chunk(carried, hidden)


def plan_generation(
    spec: ModelSpec,
    model: str,
    prompt: str | Sequence[Mapping[str, Any]],
    num_predict: int | None = None,
    *,
    think: bool | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    system: str = "",
    raw: bool = False,
    context: Sequence[int] = (),
    logprobs: bool = False,
    num_ctx: int | None = None,
    num_keep: int = 4,
) -> Expected:
    """The server-side planner: `spec` supplies capabilities and timings.

    A generate prompt longer than the context is cut as llama_server.go
    `completionPromptForRequest` cuts it (context shift on, Ollama's default): to
    `contextShiftPromptLimit(num_ctx, num_keep + 1)` tokens (the +1 is the BOS token).
    """
    name = normalize(model) or model
    seed = f"{name}\0{_seed_text(prompt)}"
    if isinstance(prompt, str):
        prompt_count = generate_prompt_tokens(prompt, system, raw=raw, context=context)
        if raw:
            tools = None  # no template, so no tools and no parser for them
        prompt_count += tools_tokens(tools)
        if num_ctx is not None and num_ctx > 1 and prompt_count > num_ctx - 1:
            keep = (prompt_count if num_keep < 0 else num_keep) + 1
            keep = max(0, min(keep, num_ctx - 1))
            prompt_count = num_ctx - max((num_ctx - keep) // 2, 1)
    else:
        prompt_count = chat_prompt_tokens(prompt, tools)
    thinking_on = ("thinking" in spec.capabilities) if think is None else think
    budget = num_predict if num_predict is not None and num_predict > 0 else None

    thinking = _words(seed, "thinking", THINKING_WORDS, THINKING_TOKENS) if thinking_on else []
    if budget is not None:
        thinking = thinking[:budget]
    last_role = "" if isinstance(prompt, str) else str(prompt[-1].get("role", "")) if prompt else ""
    wants_tool = bool(tools) and "tools" in spec.capabilities and last_role.lower() != "tool"
    room = None if budget is None else budget - len(thinking)
    calls: list[dict[str, Any]] = []
    text: list[str] = []
    if wants_tool and tools and (room is None or room > TOOL_CALL_TOKENS):
        function = tools[0].get("function") or {}
        calls = [
            {
                "id": tool_call_id(seed),
                "function": {
                    "index": 0,
                    "name": str(function.get("name", "")),
                    "arguments": _tool_arguments(tools[0], seed),
                },
            }
        ]
        eval_count = len(thinking) + TOOL_CALL_TOKENS
    else:
        count = DEFAULT_EVAL_COUNT if room is None else room
        text = _words(seed, "text", WORDS, count)
        if room is None and text:
            text[-1] += "."
        eval_count = len(thinking) + len(text)
    done_reason = "length" if budget is not None and eval_count == budget else "stop"

    prompt_ns = prompt_count * spec.prompt_ns_per_token
    eval_ns = eval_count * spec.eval_ns_per_token
    data = _stream(seed, "context")
    ctx = [
        128_000 + (data[i % len(data)] * 97 + i) % 1000 for i in range(prompt_count + eval_count)
    ]
    chunks, final = _chunking(seed, thinking, text, calls, logprobs)
    return Expected(
        text_tokens=text,
        thinking_tokens=thinking,
        tool_calls=calls,
        prompt_eval_count=prompt_count,
        eval_count=eval_count,
        load_duration=spec.load_duration_ns,
        prompt_eval_duration=prompt_ns,
        eval_duration=eval_ns,
        done_reason=done_reason,
        context=ctx,
        chunks=chunks,
        final=final,
    )


def expected_generation(
    model: str,
    prompt: str | Sequence[Mapping[str, Any]],
    num_predict: int | None = None,
    *,
    think: bool | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    system: str = "",
    raw: bool = False,
    context: Sequence[int] = (),
    logprobs: bool = False,
) -> Expected:
    """What the emulator answers for `model` (a built-in catalog model).

    `prompt` is the generate prompt (a string) or the chat messages (a list of
    `{"role", "content"}`); a chat with one user message equals a generate of that text.
    `think=None` means "not sent": models with the thinking capability then think.
    `logprobs` (asked or not) changes only how a tool call is streamed.
    """
    return plan_generation(
        spec_for(model),
        model,
        prompt,
        num_predict,
        think=think,
        tools=tools,
        system=system,
        raw=raw,
        context=context,
        logprobs=logprobs,
    )


def embedding_vector(
    model: str, text: str, dimensions: int | None = None, *, spec: ModelSpec | None = None
) -> list[float]:
    """Unit-length vector for `text` (before float32 rounding), as /api/embed returns it."""
    size = (spec or spec_for(model)).embedding_length
    if dimensions and 0 < dimensions < size:
        size = dimensions
    raw = _raw_vector(model, text, size)
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


def _raw_vector(model: str, text: str, size: int) -> list[float]:
    data = hashlib.shake_256(f"{normalize(model) or model}\0{text}".encode()).digest(size * 2)
    return [
        (int.from_bytes(data[i * 2 : i * 2 + 2], "little") - 32768) / 32768 for i in range(size)
    ]


def legacy_embedding(model: str, text: str, *, spec: ModelSpec | None = None) -> list[float]:
    """/api/embeddings vector: same direction, not normalised (as the legacy endpoint)."""
    size = (spec or spec_for(model)).embedding_length
    return [v * 4.0 for v in _raw_vector(model, text, size)]

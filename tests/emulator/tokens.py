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
* One streamed chunk per token (a tool call is one chunk), then a final metrics chunk.
* The words are a function of (normalised model name, last user message / prompt) via
  SHA-256, so `llama3.2` and `llama3.2:latest` generate the same text.
* Durations (integer ns): load = per model; prompt_eval = prompt tokens × per-token ns;
  eval = eval_count × per-token ns; total = load + prompt_eval + eval + OVERHEAD_NS.
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
    "OVERHEAD_NS",
    "PER_MESSAGE_OVERHEAD",
    "TEMPLATE_OVERHEAD",
    "THINKING_TOKENS",
    "TOOL_CALL_TOKENS",
    "Expected",
    "chat_prompt_tokens",
    "count_text_tokens",
    "embed_duration",
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
OVERHEAD_NS = 3_512_083

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
    total_duration: int
    done_reason: str
    context: list[int] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.text_tokens)

    @property
    def thinking(self) -> str:
        return "".join(self.thinking_tokens)

    @property
    def chunk_count(self) -> int:
        """Streamed lines before the final `done: true` line."""
        return len(self.thinking_tokens) + len(self.text_tokens) + len(self.tool_calls)


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


def embed_duration(
    model: str, prompt_tokens: int, *, spec: ModelSpec | None = None
) -> tuple[int, int]:
    """(total_duration, load_duration) reported by /api/embed."""
    spec = spec or spec_for(model)
    load = spec.load_duration_ns
    return load + prompt_tokens * spec.prompt_ns_per_token + OVERHEAD_NS, load


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
) -> Expected:
    """The server-side planner: `spec` supplies capabilities and timings."""
    name = normalize(model) or model
    seed = f"{name}\0{_seed_text(prompt)}"
    if isinstance(prompt, str):
        prompt_count = generate_prompt_tokens(prompt, system, raw=raw, context=context)
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
    total = spec.load_duration_ns + prompt_ns + eval_ns + OVERHEAD_NS
    data = _stream(seed, "context")
    ctx = [
        128_000 + (data[i % len(data)] * 97 + i) % 1000 for i in range(prompt_count + eval_count)
    ]
    return Expected(
        text_tokens=text,
        thinking_tokens=thinking,
        tool_calls=calls,
        prompt_eval_count=prompt_count,
        eval_count=eval_count,
        load_duration=spec.load_duration_ns,
        prompt_eval_duration=prompt_ns,
        eval_duration=eval_ns,
        total_duration=total,
        done_reason=done_reason,
        context=ctx,
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
) -> Expected:
    """What the emulator answers for `model` (a built-in catalog model).

    `prompt` is the generate prompt (a string) or the chat messages (a list of
    `{"role", "content"}`); a chat with one user message equals a generate of that text.
    `think=None` means "not sent": models with the thinking capability then think.
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

"""The finished record of one proxied request: what metrics and analytics receive."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_record_id(now: float | None = None) -> str:
    """A ULID: 26 characters, sortable by creation time (ms), unique (80 random bits)."""
    ms = int((time.time() if now is None else now) * 1000)
    return _encode((ms << 80) | int.from_bytes(os.urandom(10), "big"))


# A ULID's first 48 bits are its millisecond timestamp.
_MAX_MS = (1 << 48) - 1


def ulid_floor(ms: int) -> str:
    """The smallest ULID of millisecond ``ms``: ids of later records sort above it."""
    return _encode(min(max(ms, 0), _MAX_MS) << 80)


def ulid_ms(ulid: str) -> int:
    """The millisecond a ULID was made in."""
    value = 0
    for char in ulid[:10]:
        value = value * 32 + _CROCKFORD.index(char)
    return value


def _encode(value: int) -> str:
    """A 128-bit value as 26 Crockford base-32 characters, most significant first."""
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return "".join(reversed(chars))


@dataclass(frozen=True, slots=True)
class ExchangeRecord:
    id: str
    timestamp: float  # Unix seconds, UTC, when the request arrived
    method: str
    path: str
    endpoint: str  # bounded label value
    operation: str | None  # OpenTelemetry GenAI operation: chat, text_completion, embeddings
    model: str  # normalised model name as the client asked ("" when none)
    category: str
    client: str
    user_agent: str
    status: int  # HTTP status sent to the client; 499 when it left before any answer
    streamed: bool
    prompt: str
    request_body: str  # the request body as text (capped), "" when it was not read
    response: str
    thinking: str
    tool_calls: tuple[Any, ...] = ()
    error: str | None = None
    # Why the exchange failed on the upstream side: connect, timeout, reset, protocol, midstream.
    upstream_error: str | None = None
    done_reason: str | None = None
    cancelled: bool = False
    text_truncated: bool = False
    duration_s: float = 0.0
    ttft_s: float | None = None
    ollama_total_s: float | None = None
    ollama_load_s: float | None = None
    ollama_prompt_eval_s: float | None = None
    ollama_eval_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    usage_injected: bool = False
    api_key: str | None = None  # the NAME of the API key the request presented (app.auth)

    @property
    def prompt_tokens_per_second(self) -> float | None:
        return _rate(self.prompt_tokens, self.ollama_prompt_eval_s)

    @property
    def tokens_per_second(self) -> float | None:
        """Generation speed as Ollama measured it (eval_count / eval_duration)."""
        return _rate(self.completion_tokens, self.ollama_eval_s)


def _rate(count: int | None, seconds: float | None) -> float | None:
    if not count or not seconds:
        return None
    return count / seconds

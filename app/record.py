"""The finished record of one proxied request: what metrics and analytics receive.

``STORED`` declares, once, which of its fields analytics keeps and how: the table columns
(``app.analytics.tables``), the row every backend writes (``app.analytics.rows``, so the
JSON lines and Loki entries too) and the ``/analytics`` response models (``app.api``) follow
from it. Storing one more field is one more ``Stored`` line, plus its Alembic migration.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Literal

from app.diagnosis import explain

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
    # The application that sent it (app.categories.apps): a bounded label value.
    client_app: str = ""
    # The time Ollama held the request without working on it: total − load − prompt eval −
    # eval, at least 0 (mostly the wait for a free parallel slot); None without durations.
    queue_wait_s: float | None = None
    # Streams: the longest pause between two chunks of the answer.
    max_gap_s: float | None = None
    # The context the request ran with: its options.num_ctx, else what /api/ps said its model
    # is loaded with; None when neither is known (never guessed).
    context_tokens: int | None = None
    # What was cut: "prompt" (the prompt reached the length Ollama cuts prompts to), or
    # "output" (generation stopped at its token limit); None.
    truncation: str | None = None
    # A cold start (app.ollama.residency): why the request waited for its model to be loaded
    # (first_load, expired, evicted, unloaded, options, unknown) and a few words more; None
    # when it was warm or could not be judged. How long the load took is ollama_load_s.
    cold_cause: str | None = None
    cold_detail: str | None = None
    # Where its model ran, from /api/ps: gpu, mixed (partly on the CPU) or cpu, and the
    # share in VRAM (size_vram / size); None when unknown.
    placement: str | None = None
    gpu_share: float | None = None
    # Requests for the same model the proxy was already forwarding when this one arrived.
    requests_ahead: int | None = None
    # The machine that served it (PROXY_NODE): the proxy's, of a fleet sharing one store.
    node: str = ""

    @property
    def diagnosis(self) -> str | None:
        """Why it was slow or cut, in plain words (``app.diagnosis``); None: nothing to say."""
        return explain(self)

    @property
    def context_ratio(self) -> float | None:
        """(prompt + generated tokens) / context, when all three are known."""
        if not self.context_tokens or self.prompt_tokens is None:
            return None
        return (self.prompt_tokens + (self.completion_tokens or 0)) / self.context_tokens

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


Kind = Literal["label", "text", "flag", "integer", "bytes", "seconds", "rate", "ratio"]


@dataclass(frozen=True, slots=True)
class Stored:
    """How analytics stores one field and serves it. ``kind``:

    - ``label``: a short string of at most ``size`` characters (cut to it);
    - ``text``: free text, cut to ``size`` characters; without a size, to the text budget
      (``ANALYTICS_MAX_TEXT_BYTES``, in UTF-8 bytes), where a cut sets ``truncated``;
    - ``flag``: a bool; ``integer``: an int (32 bits); ``bytes``: a byte count (64 bits);
      ``seconds``: a time or a duration; ``rate``: something per second; ``ratio``: a share
      (all three floats).

    Every string is stored without the characters some store cannot hold (``app.text``). An
    empty string is stored as None when ``nullable``; a None as "" when not.
    """

    name: str
    kind: Kind
    size: int | None = None
    nullable: bool = False
    private: bool = False  # what was said: empty unless ANALYTICS_STORE_PROMPTS
    summary: bool = True  # in search results, not only in the full record
    filtered: bool = False  # indexed as (name, id), for /analytics/search to filter on
    key: bool = False  # the primary key

    def __post_init__(self) -> None:
        if self.kind == "label" and self.size is None:
            raise ValueError(f"{self.name}: a label needs a size")
        if self.kind not in ("label", "text") and self.size is not None:
            raise ValueError(f"{self.name}: only a label or a text has a size")


# In column order, which is also the order of each row's keys and of the response fields.
STORED: tuple[Stored, ...] = (
    Stored("id", "label", 26, key=True),  # a ULID: sorts by time
    Stored("timestamp", "seconds"),  # Unix seconds, UTC
    Stored("method", "label", 16),
    Stored("path", "text", 2048),
    Stored("endpoint", "label", 64, filtered=True),
    Stored("model", "label", 255, filtered=True),
    Stored("category", "label", 32, filtered=True),
    Stored("client", "label", 64),
    Stored("user_agent", "text", 1024),
    Stored("api_key", "label", 64, nullable=True, filtered=True),  # a name, never the key
    Stored("status", "integer", filtered=True),
    Stored("streamed", "flag"),
    Stored("prompt", "text", private=True),
    Stored("request_body", "text", private=True, summary=False),
    Stored("response", "text", private=True),
    Stored("thinking", "text", private=True, summary=False),
    Stored("tool_calls", "text", private=True, summary=False),  # as JSON
    Stored("error", "text"),
    Stored("upstream_error", "label", 16, nullable=True),
    Stored("done_reason", "label", 32, nullable=True),
    Stored("cancelled", "flag"),
    Stored("truncated", "flag"),  # text_truncated, or a text cut to the budget when stored
    Stored("duration_s", "seconds"),
    Stored("ttft_s", "seconds", nullable=True),
    Stored("ollama_total_s", "seconds", nullable=True),
    Stored("ollama_load_s", "seconds", nullable=True),
    Stored("ollama_prompt_eval_s", "seconds", nullable=True),
    Stored("ollama_eval_s", "seconds", nullable=True),
    Stored("prompt_tokens", "integer", nullable=True),
    Stored("completion_tokens", "integer", nullable=True),
    Stored("tokens_per_second", "rate", nullable=True),
    Stored("request_bytes", "bytes"),
    Stored("response_bytes", "bytes"),
    Stored("client_app", "label", 32, filtered=True),
    Stored("queue_wait_s", "seconds", nullable=True),
    Stored("max_gap_s", "seconds", nullable=True),
    Stored("context_tokens", "integer", nullable=True),
    Stored("truncation", "label", 8, nullable=True, filtered=True),
    Stored("cold_cause", "label", 16, nullable=True, filtered=True),
    Stored("cold_detail", "text", 128, nullable=True),
    Stored("placement", "label", 8, nullable=True, filtered=True),
    Stored("gpu_share", "ratio", nullable=True),
    Stored("requests_ahead", "integer", nullable=True),
    Stored("diagnosis", "text", 512, nullable=True),
    Stored("node", "label", 64, filtered=True),
)

"""A finished record as a flat row: what every analytics backend stores."""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from app.record import ExchangeRecord

# Text columns, capped at ANALYTICS_MAX_TEXT_BYTES (UTF-8 bytes) each.
TEXT_FIELDS = ("prompt", "request_body", "response", "thinking", "tool_calls", "error")


class RejectedRows(Exception):
    """The backend refused the batch for good (e.g. Loki: entries too old); retrying it
    cannot help, so the writer drops it and counts the records as dropped."""


class Backend(Protocol):
    """A place rows are written to. Methods are called from a worker thread, never on the
    event loop; ``write`` raises on failure and the same batch is retried later."""

    name: str

    def write(self, rows: list[dict[str, Any]]) -> None: ...

    def delete_older_than(self, cutoff: float) -> int:
        """Remove rows with ``timestamp < cutoff`` (Unix seconds); returns how many."""
        ...

    def close(self) -> None: ...


# What no store can hold: NUL (PostgreSQL text) and lone surrogates (not UTF-8; only a JSON
# escape such as \ud800 makes one). Each becomes U+FFFD in the stored text.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    return _UNSTORABLE.sub("\ufffd", text)


def cap(text: str, limit: int) -> tuple[str, bool]:
    """``text`` made storable and cut to at most ``limit`` UTF-8 bytes (on a character
    boundary)."""
    text = storable(text)
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True


def to_row(record: ExchangeRecord, *, store_prompts: bool, max_text_bytes: int) -> dict[str, Any]:
    """The row for ``record``. With ``store_prompts`` off, every text field is empty."""
    texts = {
        "prompt": record.prompt,
        "request_body": record.request_body,
        "response": record.response,
        "thinking": record.thinking,
        "tool_calls": json.dumps(record.tool_calls, ensure_ascii=False)
        if record.tool_calls
        else "",
        "error": record.error or "",
    }
    truncated = record.text_truncated
    for name, value in texts.items():
        if not store_prompts and name != "error":
            texts[name] = ""
            continue
        texts[name], cut = cap(value, max_text_bytes)
        truncated = truncated or cut
    # Client-chosen strings are cut to their column sizes: one over-long model name must not
    # make a whole batch fail (and be retried) forever.
    return {
        "id": record.id,
        "timestamp": record.timestamp,
        "method": storable(record.method[:16]),
        "path": storable(record.path[:2048]),
        "endpoint": record.endpoint,
        "model": storable(record.model[:255]),
        "category": record.category,
        "client": record.client[:64],
        "user_agent": storable(record.user_agent[:1024]),
        "api_key": record.api_key,
        "status": record.status,
        "streamed": record.streamed,
        **texts,
        "upstream_error": record.upstream_error,
        "done_reason": storable(record.done_reason[:32]) if record.done_reason else None,
        "cancelled": record.cancelled,
        "truncated": truncated,
        "duration_s": record.duration_s,
        "ttft_s": record.ttft_s,
        "ollama_total_s": record.ollama_total_s,
        "ollama_load_s": record.ollama_load_s,
        "ollama_prompt_eval_s": record.ollama_prompt_eval_s,
        "ollama_eval_s": record.ollama_eval_s,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "tokens_per_second": record.tokens_per_second,
        "request_bytes": record.request_bytes,
        "response_bytes": record.response_bytes,
    }

"""A finished record as a flat row: what every analytics backend stores."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from app.record import STORED, ExchangeRecord, Stored
from app.text import storable


class RejectedRows(Exception):
    """The backend refused the batch for good (e.g. Loki: entries too old); retrying it
    cannot help, so the writer drops it and counts the records as dropped."""


class Backend(Protocol):
    """A place rows are written to. Methods are called from a worker thread, never on the
    event loop; ``write`` raises on failure and the same batch is retried later. An optional
    integer ``backlog_factor`` lets the writer hand it up to that many batches in one write
    once records have piled up (``app.analytics.writer``)."""

    name: str

    def write(self, rows: list[dict[str, Any]]) -> None: ...

    def delete_older_than(self, cutoff: float) -> int:
        """Remove rows with ``timestamp < cutoff`` (Unix seconds); returns how many."""
        ...

    def close(self) -> None: ...


def to_row(
    record: ExchangeRecord,
    *,
    store_prompts: bool,
    max_text_bytes: int,
    fields: Sequence[Stored] = STORED,
) -> dict[str, Any]:
    """The row for ``record``: each of ``fields`` stored as its declaration says (see
    ``app.record.Stored``). With ``store_prompts`` off, every private text is empty."""
    row: dict[str, Any] = {}
    cut_any = False
    for field in fields:
        name = field.name
        if field.kind != "label" and field.kind != "text":
            # Stored as it is; ``truncated`` also tells of the texts cut below.
            row[name] = record.text_truncated if name == "truncated" else getattr(record, name)
        elif field.private and not store_prompts:
            row[name] = ""
        else:
            value = _tool_calls(record) if name == "tool_calls" else getattr(record, name)
            row[name], cut = _text(value, field, max_text_bytes)
            cut_any = cut_any or cut
    if cut_any:
        row["truncated"] = True
    return row


def _tool_calls(record: ExchangeRecord) -> str:
    return json.dumps(record.tool_calls, ensure_ascii=False) if record.tool_calls else ""


def _text(value: str | None, field: Stored, budget: int) -> tuple[str | None, bool]:
    """``value`` as ``field`` stores it, and whether it was cut to the text budget (in
    UTF-8 bytes, on a character boundary).

    Client-chosen strings are cut to their column sizes: one over-long model name must not
    make a whole batch fail (and be retried) forever."""
    if not value:
        return None if field.nullable else "", False
    if field.size is not None:
        return storable(value[: field.size]), False
    value = storable(value)
    data = value.encode("utf-8")
    if len(data) <= budget:
        return value, False
    return data[:budget].decode("utf-8", "ignore"), True

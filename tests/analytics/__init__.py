"""The tests of ``app/analytics/``, and what several of them share: the text budget their
rows are made with, the string fields of a record, the names of declared fields."""

from __future__ import annotations

from app.record import STORED, ExchangeRecord, Stored

BUDGET = 1000

# Stored fields a record derives from its others (properties): not set, computed.
DERIVED = frozenset(
    f.name for f in STORED if isinstance(getattr(ExchangeRecord, f.name, None), property)
)

# The string fields a record holds as strings (the id is made by the proxy; tool calls are
# JSON values, stored as their JSON text).
STRINGS = [
    f.name
    for f in STORED
    if f.kind in ("label", "text") and f.name not in ("id", "tool_calls") and f.name not in DERIVED
]


def names(fields: tuple[Stored, ...] | list[Stored]) -> list[str]:
    return [field.name for field in fields]

"""The tables every SQL store shares. ``migrations/`` creates and evolves them.

``requests`` holds one row per request, a column per field that ``app.record.STORED``
declares. The ``requests_hourly*`` rollups hold, per UTC hour,
what ``/analytics/stats`` needs (see ``app.analytics.rollups``); the store updates them in
the same transaction as the rows they summarise.

The record id is a ULID made from the record's timestamp (same millisecond), so ordering by
id is ordering by time: the per-filter indexes are ``(column, id)``, which serve the filter,
a time window (turned into an id range) and the newest-first order at once.

Full-text search lives outside this model because it differs per database and Alembic's
autogenerate cannot compare it: an FTS5 table ``requests_fts`` on SQLite, a generated
``search_vector`` column with a GIN index on PostgreSQL (both made by the migrations, and
excluded from ``alembic check`` in ``migrations/env.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.types import TypeEngine

from app.record import STORED, Kind, Stored

_TYPES: dict[Kind, type[TypeEngine[Any]]] = {
    "text": Text,
    "flag": Boolean,
    "integer": Integer,
    "bytes": BigInteger,
    "seconds": Double,
    "rate": Double,
    "ratio": Double,
}


def column(field: Stored) -> Column[Any]:
    """The column that stores ``field`` (see ``app.record.Stored``)."""
    type_ = String(field.size) if field.kind == "label" else _TYPES[field.kind]
    return Column(field.name, type_, primary_key=field.key, nullable=field.nullable)


def filter_index(field: Stored) -> Index:
    """The ``(name, id)`` index of a filtered field. A nullable one is partial (``WHERE name
    IS NOT NULL``): most requests have no value there (no API key, no truncation, no cold
    start, no placement known), a search filters on a value, and a row with NULL then adds no
    entry to write (migration 0008, on SQLite and PostgreSQL). Declared here for SQLite only:
    a ``postgresql_where`` would load SQLAlchemy's PostgreSQL dialect (~2.3 MB) into every
    proxy, and ``alembic check`` does not compare an index's condition."""
    name = f"ix_requests_{field.name}_id"
    if not field.nullable:
        return Index(name, field.name, "id")
    return Index(name, field.name, "id", sqlite_where=text(f"{field.name} IS NOT NULL"))


def requests_table(metadata: MetaData, fields: Sequence[Stored] = STORED) -> Table:
    """``requests``: one column per stored field, an index per filtered one."""
    return Table(
        "requests",
        metadata,
        *(column(field) for field in fields),
        Index("ix_requests_timestamp", "timestamp"),  # retention and rollups select by time
        *(filter_index(field) for field in fields if field.filtered),
    )


metadata = MetaData()

requests = requests_table(metadata)

# Per hour (Unix seconds, a multiple of 3600) and model, category and endpoint: the sums
# behind every total, average and breakdown of the stats. "_n" columns count the rows whose
# value was present (the averages skip NULLs, as SQL's AVG does).
hourly = Table(
    "requests_hourly",
    metadata,
    Column("hour", BigInteger, primary_key=True),
    Column("model", String(255), primary_key=True),
    Column("category", String(32), primary_key=True),
    Column("endpoint", String(64), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("cancelled", BigInteger, nullable=False),
    Column("duration_sum", Double, nullable=False),
    Column("prompt_tokens_sum", BigInteger, nullable=False),
    Column("prompt_tokens_n", BigInteger, nullable=False),
    Column("completion_tokens_sum", BigInteger, nullable=False),
    Column("completion_tokens_n", BigInteger, nullable=False),
    Column("tokens_per_second_sum", Double, nullable=False),
    Column("tokens_per_second_n", BigInteger, nullable=False),
    Column("truncations", BigInteger, nullable=False),  # prompt or output cut
    Column("cold_starts", BigInteger, nullable=False),  # a cold_cause
    Column("placed", BigInteger, nullable=False),  # a placement known
    Column("spilled", BigInteger, nullable=False),  # placement mixed or cpu
)

hourly_clients = Table(
    "requests_hourly_clients",
    metadata,
    Column("hour", BigInteger, primary_key=True),
    Column("client", String(64), primary_key=True),
    Column("requests", BigInteger, nullable=False),
)

# Per hour and client application: requests and the tokens Ollama counted for them.
hourly_apps = Table(
    "requests_hourly_apps",
    metadata,
    Column("hour", BigInteger, primary_key=True),
    Column("client_app", String(32), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
)

# Per hour and node (PROXY_NODE): what the stats break down per machine of a fleet.
hourly_nodes = Table(
    "requests_hourly_nodes",
    metadata,
    Column("hour", BigInteger, primary_key=True),
    Column("node", String(64), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("duration_sum", Double, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
)

# When fleet-wide upkeep (retention) last ran, so that many proxies on one database run it
# once, not once each.
maintenance = Table(
    "maintenance",
    metadata,
    Column("task", String(32), primary_key=True),
    Column("done_at", Double, nullable=False),
)

# Histograms ("metric") of duration_s ("duration"), ttft_s ("ttft"), queue_wait_s ("queue")
# and max_gap_s ("gap") per model, in log-spaced buckets (rollups.bucket).
hourly_latency = Table(
    "requests_hourly_latency",
    metadata,
    Column("hour", BigInteger, primary_key=True),
    Column("model", String(255), primary_key=True),
    Column("metric", String(8), primary_key=True),
    Column("bucket", Integer, primary_key=True),
    Column("count", BigInteger, nullable=False),
)

# Names the migrations create by hand, per dialect; `alembic check` must not see them.
FULL_TEXT_OBJECTS = frozenset({"requests_fts", "search_vector", "ix_requests_search_vector"}) | {
    f"requests_fts_{suffix}" for suffix in ("data", "idx", "content", "docsize", "config")
}

"""The tables every SQL store shares. ``migrations/`` creates and evolves them.

``requests`` holds one row per request. The ``requests_hourly*`` rollups hold, per UTC hour,
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
)

metadata = MetaData()

requests = Table(
    "requests",
    metadata,
    Column("id", String(26), primary_key=True),  # ULID: sorts by time
    Column("timestamp", Double, nullable=False),  # Unix seconds, UTC
    Column("method", String(16), nullable=False),
    Column("path", Text, nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("model", String(255), nullable=False),
    Column("category", String(32), nullable=False),
    Column("client", String(64), nullable=False),
    Column("user_agent", Text, nullable=False),
    Column("api_key", String(64)),  # the key's name (app.auth), never the key
    Column("status", Integer, nullable=False),
    Column("streamed", Boolean, nullable=False),
    Column("prompt", Text, nullable=False),
    Column("request_body", Text, nullable=False),
    Column("response", Text, nullable=False),
    Column("thinking", Text, nullable=False),
    Column("tool_calls", Text, nullable=False),
    Column("error", Text, nullable=False),
    Column("upstream_error", String(16)),
    Column("done_reason", String(32)),
    Column("cancelled", Boolean, nullable=False),
    Column("truncated", Boolean, nullable=False),
    Column("duration_s", Double, nullable=False),
    Column("ttft_s", Double),
    Column("ollama_total_s", Double),
    Column("ollama_load_s", Double),
    Column("ollama_prompt_eval_s", Double),
    Column("ollama_eval_s", Double),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("tokens_per_second", Double),
    Column("request_bytes", BigInteger, nullable=False),
    Column("response_bytes", BigInteger, nullable=False),
    Index("ix_requests_timestamp", "timestamp"),
    Index("ix_requests_model_id", "model", "id"),
    Index("ix_requests_endpoint_id", "endpoint", "id"),
    Index("ix_requests_category_id", "category", "id"),
    Index("ix_requests_status_id", "status", "id"),
    Index("ix_requests_api_key_id", "api_key", "id"),
)

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
)

hourly_clients = Table(
    "requests_hourly_clients",
    metadata,
    Column("hour", BigInteger, primary_key=True),
    Column("client", String(64), primary_key=True),
    Column("requests", BigInteger, nullable=False),
)

# Histograms of duration_s and ttft_s ("metric"), in log-spaced buckets (rollups.bucket).
hourly_latency = Table(
    "requests_hourly_latency",
    metadata,
    Column("hour", BigInteger, primary_key=True),
    Column("metric", String(8), primary_key=True),
    Column("bucket", Integer, primary_key=True),
    Column("count", BigInteger, nullable=False),
)

# Names the migrations create by hand, per dialect; `alembic check` must not see them.
FULL_TEXT_OBJECTS = frozenset({"requests_fts", "search_vector", "ix_requests_search_vector"}) | {
    f"requests_fts_{suffix}" for suffix in ("data", "idx", "content", "docsize", "config")
}

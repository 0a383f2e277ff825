"""The ``requests`` table every SQL store shares. ``migrations/`` creates and evolves it.

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
    Index("ix_requests_model_timestamp", "model", "timestamp"),
    Index("ix_requests_endpoint_timestamp", "endpoint", "timestamp"),
    Index("ix_requests_category_timestamp", "category", "timestamp"),
    Index("ix_requests_status_timestamp", "status", "timestamp"),
)

# Names the migrations create by hand, per dialect; `alembic check` must not see them.
FULL_TEXT_OBJECTS = frozenset({"requests_fts", "search_vector", "ix_requests_search_vector"}) | {
    f"requests_fts_{suffix}" for suffix in ("data", "idx", "content", "docsize", "config")
}

"""The requests table and its full-text index.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("timestamp", sa.Double, nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("user_agent", sa.Text, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("streamed", sa.Boolean, nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("request_body", sa.Text, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("thinking", sa.Text, nullable=False),
        sa.Column("tool_calls", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("upstream_error", sa.String(16)),
        sa.Column("done_reason", sa.String(32)),
        sa.Column("cancelled", sa.Boolean, nullable=False),
        sa.Column("truncated", sa.Boolean, nullable=False),
        sa.Column("duration_s", sa.Double, nullable=False),
        sa.Column("ttft_s", sa.Double),
        sa.Column("ollama_total_s", sa.Double),
        sa.Column("ollama_load_s", sa.Double),
        sa.Column("ollama_prompt_eval_s", sa.Double),
        sa.Column("ollama_eval_s", sa.Double),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("tokens_per_second", sa.Double),
        sa.Column("request_bytes", sa.BigInteger, nullable=False),
        sa.Column("response_bytes", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_requests_timestamp", "requests", ["timestamp"])
    op.create_index("ix_requests_model_timestamp", "requests", ["model", "timestamp"])
    op.create_index("ix_requests_endpoint_timestamp", "requests", ["endpoint", "timestamp"])
    op.create_index("ix_requests_category_timestamp", "requests", ["category", "timestamp"])
    op.create_index("ix_requests_status_timestamp", "requests", ["status", "timestamp"])

    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        # Kept in step by the store, in the same transaction as each insert and delete.
        op.execute(
            "CREATE VIRTUAL TABLE requests_fts USING fts5("
            "id UNINDEXED, prompt, response, tokenize = 'unicode61 remove_diacritics 2')"
        )
    elif dialect == "postgresql":
        # 'simple': no stemming or stop words, so a search finds the words as typed in
        # any language.
        op.execute(
            "ALTER TABLE requests ADD COLUMN search_vector tsvector GENERATED ALWAYS AS "
            "(to_tsvector('simple', prompt || ' ' || response)) STORED"
        )
        op.execute("CREATE INDEX ix_requests_search_vector ON requests USING gin (search_vector)")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TABLE requests_fts")
    op.drop_table("requests")

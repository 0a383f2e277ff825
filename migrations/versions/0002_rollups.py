"""Hourly rollups for the stats, (filter, id) indexes for newest-first search, and (SQLite)
a full-text index over the rows' own text, keyed by their rowid.

The rollups are created empty here and built from the rows already stored by 0004, with
the same code the store uses for every batch (``app.analytics.rollups``). On SQLite
``requests_fts`` becomes an external-content FTS5 table (``content='requests'``: the text
is no longer stored twice) whose rowid is the row's rowid.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILTERS = ("model", "endpoint", "category", "status")
TOKENIZE = "tokenize = 'unicode61 remove_diacritics 2'"


def upgrade() -> None:
    op.create_table(
        "requests_hourly",
        sa.Column("hour", sa.BigInteger, primary_key=True),
        sa.Column("model", sa.String(255), primary_key=True),
        sa.Column("category", sa.String(32), primary_key=True),
        sa.Column("endpoint", sa.String(64), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("cancelled", sa.BigInteger, nullable=False),
        sa.Column("duration_sum", sa.Double, nullable=False),
        sa.Column("prompt_tokens_sum", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens_n", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens_sum", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens_n", sa.BigInteger, nullable=False),
        sa.Column("tokens_per_second_sum", sa.Double, nullable=False),
        sa.Column("tokens_per_second_n", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "requests_hourly_clients",
        sa.Column("hour", sa.BigInteger, primary_key=True),
        sa.Column("client", sa.String(64), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "requests_hourly_latency",
        sa.Column("hour", sa.BigInteger, primary_key=True),
        sa.Column("metric", sa.String(8), primary_key=True),
        sa.Column("bucket", sa.Integer, primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    for name in FILTERS:
        op.drop_index(f"ix_requests_{name}_timestamp", "requests")
        op.create_index(f"ix_requests_{name}_id", "requests", [name, "id"])
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE requests_fts")
        op.execute(
            "CREATE VIRTUAL TABLE requests_fts USING fts5(prompt, response, "
            f"content = 'requests', content_rowid = 'rowid', {TOKENIZE})"
        )
        op.execute("INSERT INTO requests_fts (requests_fts) VALUES ('rebuild')")
    # The rollups are filled from the rows by the last migration that changes what they
    # hold (0004), with the code that matches the tables of that revision.


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE requests_fts")
        op.execute(
            "CREATE VIRTUAL TABLE requests_fts USING fts5("
            f"id UNINDEXED, prompt, response, {TOKENIZE})"
        )
        op.execute(
            "INSERT INTO requests_fts (id, prompt, response) "
            "SELECT id, prompt, response FROM requests"
        )
    for name in FILTERS:
        op.drop_index(f"ix_requests_{name}_id", "requests")
        op.create_index(f"ix_requests_{name}_timestamp", "requests", [name, "timestamp"])
    op.drop_table("requests_hourly_latency")
    op.drop_table("requests_hourly_clients")
    op.drop_table("requests_hourly")

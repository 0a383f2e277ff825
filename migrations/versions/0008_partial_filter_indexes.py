"""The filter indexes of the nullable fields become partial (``WHERE name IS NOT NULL``):
``api_key``, ``truncation``, ``cold_cause`` and ``placement`` are NULL in most rows (a
request without an API key, not cut, not cold, on a model whose placement is unknown), and a
search filters them on a value (or ``cold_cause IS NOT NULL``), which a partial index serves.
A row with NULLs there then writes four index entries fewer: ~12 % of the SQLite writer's
CPU for a text-less record (bench/notes.md, ``analytics-sqlite_writer_records_per_s``) and
a smaller file. The same on PostgreSQL.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As they were at this revision (app.record.STORED: nullable and filtered).
SPARSE = ("api_key", "truncation", "cold_cause", "placement")


def _recreate(partial: bool) -> None:
    for name in SPARSE:
        index = f"ix_requests_{name}_id"
        where = sa.text(f"{name} IS NOT NULL") if partial else None
        op.drop_index(index, table_name="requests")
        op.create_index(index, "requests", [name, "id"], sqlite_where=where, postgresql_where=where)


def upgrade() -> None:
    _recreate(partial=True)


def downgrade() -> None:
    _recreate(partial=False)

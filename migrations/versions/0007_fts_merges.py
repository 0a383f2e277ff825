"""SQLite's full-text index merges its segments less often: FTS5 ``automerge`` 16 (from 4)
and ``crisismerge`` 64 (from 16). Each batch the writer commits adds a segment; merging them
four at a time was about a third of the cost of indexing a record's text (bench/notes.md,
``analytics-sqlite_writer_records_per_s``). A query reads up to 16 segments a level instead
of 4, which the search benchmark at 1M records measures. PostgreSQL: nothing to do.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MERGES = {"automerge": 16, "crisismerge": 64}
DEFAULTS = {"automerge": 4, "crisismerge": 16}  # FTS5's own


def _configure(values: dict[str, int]) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for name, value in values.items():
        # FTS5 keeps these in requests_fts_config: they hold for every later connection.
        op.execute(f"INSERT INTO requests_fts (requests_fts, rank) VALUES ('{name}', {value})")


def upgrade() -> None:
    _configure(MERGES)


def downgrade() -> None:
    _configure(DEFAULTS)

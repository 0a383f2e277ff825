"""Diagnostics on every record: the client application, Ollama's queue wait, the longest
pause of a stream, the request's context and what was cut (with its filter index);
per-hour client-application rollups and the queue-wait and stream-gap histograms.

Rows written before have their ``client_app`` named from their stored User-Agent (the
X-Title / X-Client-Name headers were not kept), and no queue wait, gap, context or
truncation (NULL: not known then, never guessed now). The rollups are rebuilt from the rows
by 0005, the last migration that changes what they hold (the rebuild runs the code of the
newest revision, so only the newest migration may run it).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.categories.apps import ClientApps

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 10_000


def upgrade() -> None:
    op.add_column(
        "requests", sa.Column("client_app", sa.String(32), nullable=False, server_default="")
    )
    op.add_column("requests", sa.Column("queue_wait_s", sa.Double, nullable=True))
    op.add_column("requests", sa.Column("max_gap_s", sa.Double, nullable=True))
    op.add_column("requests", sa.Column("context_tokens", sa.Integer, nullable=True))
    op.add_column("requests", sa.Column("truncation", sa.String(8), nullable=True))
    op.create_index("ix_requests_client_app_id", "requests", ["client_app", "id"])
    op.create_index("ix_requests_truncation_id", "requests", ["truncation", "id"])
    op.add_column(
        "requests_hourly",
        sa.Column("truncations", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "requests_hourly_apps",
        sa.Column("hour", sa.BigInteger, primary_key=True),
        sa.Column("client_app", sa.String(32), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
    )
    _name_the_apps(op.get_bind())


def _name_the_apps(connection: sa.Connection) -> None:
    """``client_app`` of the rows already stored, from their User-Agent, oldest first (so
    the first-come names are the ones that came first), in batches."""
    apps = ClientApps()
    table = sa.table(
        "requests", sa.column("id", sa.String), sa.column("user_agent"), sa.column("client_app")
    )
    after = ""
    while True:
        rows = connection.execute(
            sa.select(table.c.id, table.c.user_agent)
            .where(table.c.id > after)
            .order_by(table.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        connection.execute(
            table.update().where(table.c.id == sa.bindparam("row_id")),
            [{"row_id": row_id, "client_app": apps(agent or "")} for row_id, agent in rows],
        )
        after = rows[-1][0]


def downgrade() -> None:
    # The histograms of 0003 are those of duration and time to first token only.
    op.execute("DELETE FROM requests_hourly_latency WHERE metric IN ('queue', 'gap')")
    op.drop_table("requests_hourly_apps")
    op.drop_column("requests_hourly", "truncations")
    op.drop_index("ix_requests_truncation_id", table_name="requests")
    op.drop_index("ix_requests_client_app_id", table_name="requests")
    op.drop_column("requests", "truncation")
    op.drop_column("requests", "context_tokens")
    # SQLite (3.35+) and PostgreSQL both drop a column in place.
    op.drop_column("requests", "max_gap_s")
    op.drop_column("requests", "queue_wait_s")
    op.drop_column("requests", "client_app")

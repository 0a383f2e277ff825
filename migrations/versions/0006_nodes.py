"""Node identity for a fleet on one database: the ``node`` of every record (PROXY_NODE),
per-node hourly rollups, and the ``maintenance`` table that lets many proxies run the
retention once between them.

Rows written before were served by the machine that runs this upgrade (a store had one
proxy until now): they get its node, the ``node`` the app passes in (``PROXY_NODE``), else
this host's name. Then every rollup is rebuilt from the rows, with the code of this
revision: the last migration that changes what the rollups hold runs the rebuild, so a store
at any earlier revision ends with rollups that agree with its rows.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from app.analytics import rollups
from app.config import default_node

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    node = str(context.config.attributes.get("node") or default_node())
    op.add_column("requests", sa.Column("node", sa.String(64), nullable=False, server_default=""))
    op.execute(sa.text("UPDATE requests SET node = :node").bindparams(node=node))
    op.create_index("ix_requests_node_id", "requests", ["node", "id"])
    op.create_table(
        "requests_hourly_nodes",
        sa.Column("hour", sa.BigInteger, primary_key=True),
        sa.Column("node", sa.String(64), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("duration_sum", sa.Double, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "maintenance",
        sa.Column("task", sa.String(32), primary_key=True),
        sa.Column("done_at", sa.Double, nullable=False),
    )
    rollups.rebuild(op.get_bind())


def downgrade() -> None:
    op.drop_table("maintenance")
    op.drop_table("requests_hourly_nodes")
    op.drop_index("ix_requests_node_id", table_name="requests")
    op.drop_column("requests", "node")

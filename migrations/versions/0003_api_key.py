"""The name of the API key each request presented (``PROXY_API_KEYS``), and its filter index.

Rows written before keys existed, or by a proxy without keys, have NULL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("api_key", sa.String(64), nullable=True))
    op.create_index("ix_requests_api_key_id", "requests", ["api_key", "id"])


def downgrade() -> None:
    op.drop_index("ix_requests_api_key_id", table_name="requests")
    # SQLite (3.35+) and PostgreSQL both drop a column in place.
    op.drop_column("requests", "api_key")

"""Cold starts and placement on every record, with the plain-words diagnosis; per-hour cold
start and placement counts; per-model latency histograms.

``requests`` gains ``cold_cause`` (why the request waited for its model to be loaded),
``cold_detail``, ``placement`` (gpu, mixed, cpu) and ``gpu_share`` (from ``/api/ps``),
``requests_ahead`` (requests for the same model in flight when it arrived) and ``diagnosis``;
rows written before have none of them (NULL: not known then, never guessed now), with filter
indexes on the cause and the placement. ``requests_hourly`` gains ``cold_starts``,
``placed`` and ``spilled``; ``requests_hourly_latency`` is keyed by model too (the stats show
the queue-wait p95 of each model). The rollups are rebuilt from the rows by 0006, the last
migration that changes what they hold (the rebuild runs the newest revision's code).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HOURLY_COUNTS = ("cold_starts", "placed", "spilled")


def _latency_table(name: str, *, by_model: bool) -> None:
    columns = [sa.Column("hour", sa.BigInteger, primary_key=True)]
    if by_model:
        columns.append(sa.Column("model", sa.String(255), primary_key=True))
    columns += [
        sa.Column("metric", sa.String(8), primary_key=True),
        sa.Column("bucket", sa.Integer, primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    ]
    op.create_table(name, *columns)


def upgrade() -> None:
    op.add_column("requests", sa.Column("cold_cause", sa.String(16), nullable=True))
    op.add_column("requests", sa.Column("cold_detail", sa.Text, nullable=True))
    op.add_column("requests", sa.Column("placement", sa.String(8), nullable=True))
    op.add_column("requests", sa.Column("gpu_share", sa.Double, nullable=True))
    op.add_column("requests", sa.Column("requests_ahead", sa.Integer, nullable=True))
    op.add_column("requests", sa.Column("diagnosis", sa.Text, nullable=True))
    op.create_index("ix_requests_cold_cause_id", "requests", ["cold_cause", "id"])
    op.create_index("ix_requests_placement_id", "requests", ["placement", "id"])
    for name in _HOURLY_COUNTS:
        op.add_column(
            "requests_hourly",
            sa.Column(name, sa.BigInteger, nullable=False, server_default="0"),
        )
    # Rollups only: rebuilt by 0006, so the old histograms need not be carried over.
    op.drop_table("requests_hourly_latency")
    _latency_table("requests_hourly_latency", by_model=True)


def downgrade() -> None:
    # The histograms of 0004 are those of all models together.
    _latency_table("requests_hourly_latency_0004", by_model=False)
    op.execute(
        "INSERT INTO requests_hourly_latency_0004 (hour, metric, bucket, count) "
        "SELECT hour, metric, bucket, SUM(count) FROM requests_hourly_latency "
        "GROUP BY hour, metric, bucket"
    )
    op.drop_table("requests_hourly_latency")
    op.rename_table("requests_hourly_latency_0004", "requests_hourly_latency")
    for name in reversed(_HOURLY_COUNTS):
        op.drop_column("requests_hourly", name)
    op.drop_index("ix_requests_placement_id", table_name="requests")
    op.drop_index("ix_requests_cold_cause_id", table_name="requests")
    for name in ("diagnosis", "requests_ahead", "gpu_share", "placement", "cold_detail"):
        op.drop_column("requests", name)
    op.drop_column("requests", "cold_cause")

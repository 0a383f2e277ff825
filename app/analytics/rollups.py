"""Hourly rollups: what ``/analytics/stats`` needs, kept beside the rows so that the stats
of a day or a week read a few thousand small rows instead of scanning the records.

Per UTC hour the store keeps (``app.analytics.tables``): counts, error and cancel counts,
truncations, cold starts, placements, and sums of durations, tokens and tokens per second
per model × category × endpoint; request counts per client; requests and tokens per client
application; requests, errors, durations and tokens per node; and per model histograms of
``duration_s``, ``ttft_s``, ``queue_wait_s`` and ``max_gap_s``. The store adds a batch's
aggregate in the same transaction as its rows, retention rebuilds the hour it cuts into,
and the last migration that changed them built them from the rows already there — one
``Aggregate`` does all three, so rows and rollups cannot disagree.

Percentiles come from the histograms: bucket ``b`` holds the values in
``[GROWTH**b, GROWTH**(b+1))`` seconds (5 % wide; values ≤ 0 have their own bucket), and a
percentile is reported as its bucket's geometric middle, so it is within ±2.5 % of the exact
nearest-rank value (one bucket: the exact value and the estimate always share it).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, delete, select

from app.analytics.tables import (
    hourly,
    hourly_apps,
    hourly_clients,
    hourly_latency,
    hourly_nodes,
    requests,
)

HOUR = 3600
# Every rollup table: what retention and a rebuild clear.
TABLES = (hourly, hourly_clients, hourly_apps, hourly_nodes, hourly_latency)
GROWTH = 1.05
_LOG_GROWTH = math.log(GROWTH)
MIN_BUCKET, MAX_BUCKET = -400, 400  # 1e-8 s .. 3e8 s: everything a request can take
ZERO_BUCKET = -1000  # values ≤ 0
# The histograms, and the row field each is of.
METRICS = {"duration": "duration_s", "ttft": "ttft_s", "queue": "queue_wait_s", "gap": "max_gap_s"}
SUMS = (
    "requests",
    "errors",
    "cancelled",
    "duration_sum",
    "prompt_tokens_sum",
    "prompt_tokens_n",
    "completion_tokens_sum",
    "completion_tokens_n",
    "tokens_per_second_sum",
    "tokens_per_second_n",
    "truncations",
    "cold_starts",
    "placed",
    "spilled",
)
# The columns of a request an aggregate reads.
SOURCE = (
    "timestamp",
    "model",
    "category",
    "endpoint",
    "client",
    "status",
    "upstream_error",
    "cancelled",
    "duration_s",
    "ttft_s",
    "prompt_tokens",
    "completion_tokens",
    "tokens_per_second",
    "client_app",
    "queue_wait_s",
    "max_gap_s",
    "truncation",
    "cold_cause",
    "placement",
    "node",
)
SPILLED = ("mixed", "cpu")


def hour_of(stamp: float) -> int:
    """The start of ``stamp``'s hour: always ``hour <= stamp < hour + 3600`` exactly, so
    "rows with timestamp ≥ an hour" and "rollups of hours ≥ it" are the same rows."""
    hour = int(stamp // HOUR) * HOUR
    if stamp < hour:
        hour -= HOUR
    elif stamp >= hour + HOUR:
        hour += HOUR
    return hour


def next_hour(stamp: float) -> int:
    """The first hour start ≥ ``stamp``."""
    hour = hour_of(stamp)
    return hour if hour == stamp else hour + HOUR


def bucket(value: float) -> int:
    if value <= 0:
        return ZERO_BUCKET
    return min(max(math.floor(math.log(value) / _LOG_GROWTH), MIN_BUCKET), MAX_BUCKET)


def bucket_value(index: int) -> float:
    """What a bucket reports: its geometric middle."""
    if index == ZERO_BUCKET:
        return 0.0
    return float(GROWTH ** (index + 0.5))


def failed(row: Mapping[str, Any]) -> bool:
    return bool(row["status"] >= 400 or row["upstream_error"] is not None)


@dataclass
class Aggregate:
    """Sums keyed like the rollup tables; adding rows and merging are exact for counts and
    integer sums (floating sums agree to rounding)."""

    groups: dict[tuple[int, str, str, str], list[Any]] = field(default_factory=dict)
    clients: dict[tuple[int, str], int] = field(default_factory=dict)
    # (hour, client app): [requests, prompt tokens, completion tokens]
    apps: dict[tuple[int, str], list[int]] = field(default_factory=dict)
    # (hour, node): [requests, errors, duration sum, prompt tokens, completion tokens]
    nodes: dict[tuple[int, str], list[Any]] = field(default_factory=dict)
    # (hour, model, metric, bucket): count
    latency: dict[tuple[int, str, str, int], int] = field(default_factory=dict)

    def add(self, rows: Iterable[Mapping[str, Any]]) -> Aggregate:
        groups, clients, apps, latency = self.groups, self.clients, self.apps, self.latency
        nodes = self.nodes
        for row in rows:
            hour = hour_of(row["timestamp"])
            key = (hour, row["model"], row["category"], row["endpoint"])
            sums = groups.get(key)
            if sums is None:
                sums = groups[key] = [0] * len(SUMS)
            prompt, completion = row["prompt_tokens"], row["completion_tokens"]
            rate, duration = row["tokens_per_second"], row["duration_s"]
            sums[0] += 1
            bad = failed(row)
            sums[1] += bad
            sums[2] += bool(row["cancelled"])
            sums[3] += duration
            if prompt is not None:
                sums[4] += prompt
                sums[5] += 1
            if completion is not None:
                sums[6] += completion
                sums[7] += 1
            if rate is not None:
                sums[8] += rate
                sums[9] += 1
            sums[10] += row["truncation"] is not None
            sums[11] += row["cold_cause"] is not None
            placement = row["placement"]
            if placement is not None:
                sums[12] += 1
                sums[13] += placement in SPILLED
            client = (hour, row["client"])
            clients[client] = clients.get(client, 0) + 1
            app = apps.get((hour, row["client_app"]))
            if app is None:
                app = apps[(hour, row["client_app"])] = [0, 0, 0]
            app[0] += 1
            app[1] += prompt or 0
            app[2] += completion or 0
            node = nodes.get((hour, row["node"]))
            if node is None:
                node = nodes[(hour, row["node"])] = [0, 0, 0.0, 0, 0]
            node[0] += 1
            node[1] += bad
            node[2] += duration
            node[3] += prompt or 0
            node[4] += completion or 0
            for metric, name in METRICS.items():
                value = row[name]
                if value is not None:
                    point = (hour, row["model"], metric, bucket(value))
                    latency[point] = latency.get(point, 0) + 1
        return self

    def __bool__(self) -> bool:
        return bool(self.groups)


def _upsert(
    connection: Connection, table: Any, keys: list[str], rows: list[dict[str, Any]]
) -> None:
    if not rows:
        return
    # Sorted keys: two transactions adding to the same rollup rows lock them in one order.
    rows.sort(key=lambda row: tuple(row[key] for key in keys))
    statement, columns = _upsert_statement(connection.dialect.name, table, tuple(keys))
    pick = operator.itemgetter(*columns)
    connection.exec_driver_sql(statement, [pick(row) for row in rows])


@functools.cache
def _upsert_statement(dialect: str, table: Any, keys: tuple[str, ...]) -> tuple[str, list[str]]:
    """``INSERT … ON CONFLICT (keys) DO UPDATE`` adding every other column (the same SQL on
    SQLite and PostgreSQL, but for the parameter marker), and its columns in order: one
    prepared executemany per table and batch, without SQLAlchemy compiling the statement
    and processing each parameter."""
    columns = [column.name for column in table.c]
    marker = "%s" if dialect == "postgresql" else "?"
    added = ", ".join(
        f"{name} = {table.name}.{name} + excluded.{name}" for name in columns if name not in keys
    )
    statement = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join([marker] * len(columns))}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {added}"
    )
    return statement, columns


def apply(connection: Connection, aggregate: Aggregate) -> None:
    """Add ``aggregate`` to the rollup tables (inside the caller's transaction)."""
    _upsert(
        connection,
        hourly,
        ["hour", "model", "category", "endpoint"],
        [
            {
                "hour": h,
                "model": m,
                "category": c,
                "endpoint": e,
                **dict(zip(SUMS, sums, strict=True)),
            }
            for (h, m, c, e), sums in aggregate.groups.items()
        ],
    )
    _upsert(
        connection,
        hourly_clients,
        ["hour", "client"],
        [{"hour": h, "client": c, "requests": n} for (h, c), n in aggregate.clients.items()],
    )
    _upsert(
        connection,
        hourly_apps,
        ["hour", "client_app"],
        [
            {"hour": h, "client_app": a, "requests": n, "prompt_tokens": p, "completion_tokens": c}
            for (h, a), (n, p, c) in aggregate.apps.items()
        ],
    )
    _upsert(
        connection,
        hourly_nodes,
        ["hour", "node"],
        [
            {
                "hour": h,
                "node": n,
                "requests": r,
                "errors": e,
                "duration_sum": d,
                "prompt_tokens": p,
                "completion_tokens": c,
            }
            for (h, n), (r, e, d, p, c) in aggregate.nodes.items()
        ],
    )
    _upsert(
        connection,
        hourly_latency,
        ["hour", "model", "metric", "bucket"],
        [
            {"hour": h, "model": model, "metric": m, "bucket": b, "count": n}
            for (h, model, m, b), n in aggregate.latency.items()
        ],
    )


def rows_between(connection: Connection, start: float | None, end: float | None) -> Aggregate:
    """The aggregate of the stored rows with ``start <= timestamp < end``, streamed."""
    conditions = []
    if start is not None:
        conditions.append(requests.c.timestamp >= start)
    if end is not None:
        conditions.append(requests.c.timestamp < end)
    statement = select(*(requests.c[name] for name in SOURCE)).where(and_(True, *conditions))
    aggregate = Aggregate()
    result = connection.execute(statement.execution_options(yield_per=20_000))
    for part in result.mappings().partitions():
        aggregate.add(part)  # type: ignore[arg-type]
    return aggregate


def rebuild(connection: Connection, start: int | None = None, end: int | None = None) -> None:
    """Recompute the rollups of the hours in ``[start, end)`` (all when None) from the rows."""
    for table in TABLES:
        conditions = []
        if start is not None:
            conditions.append(table.c.hour >= start)
        if end is not None:
            conditions.append(table.c.hour < end)
        connection.execute(delete(table).where(and_(True, *conditions)))
    apply(connection, rows_between(connection, start, end))

"""The hourly rollups, on SQLite and the real PostgreSQL: they always equal an aggregation
from scratch (after writes, retries, retention and the migrations' backfill), hours split rows
exactly, and a percentile's bucket value stays within its bucket."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text

from app.analytics import migrate, rollups
from app.analytics.rollups import Aggregate, bucket
from app.analytics.sql import SearchQuery, SqlStore, create_store_engine, database_url
from app.analytics.tables import (
    hourly,
    hourly_apps,
    hourly_clients,
    hourly_latency,
    hourly_nodes,
    requests,
)
from app.categories.apps import ClientApps
from app.config import default_node
from tests.conftest import PostgresDatabases
from tests.support import NOW, SQL_STORES, analytics_rows

HOUR = 3600
ROWS = analytics_rows()


@pytest.fixture(params=SQL_STORES)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind."""
    if request.param == "sqlite":
        return database_url(None, tmp_path)
    databases: PostgresDatabases = request.getfixturevalue("postgres")
    return database_url(databases.create(), tmp_path)


@pytest.fixture
def store(url: str) -> Iterator[SqlStore]:
    store = SqlStore(create_store_engine(url))
    yield store
    store.close()


def stored_rollups(store: SqlStore) -> Aggregate:
    stored = Aggregate()
    with store.engine.connect() as connection:
        for row in connection.execute(select(hourly)).mappings():
            key = (row["hour"], row["model"], row["category"], row["endpoint"])
            stored.groups[key] = [row[name] for name in rollups.SUMS]
        for row in connection.execute(select(hourly_clients)).mappings():
            stored.clients[(row["hour"], row["client"])] = row["requests"]
        for row in connection.execute(select(hourly_apps)).mappings():
            stored.apps[(row["hour"], row["client_app"])] = [
                row["requests"],
                row["prompt_tokens"],
                row["completion_tokens"],
            ]
        for row in connection.execute(select(hourly_nodes)).mappings():
            stored.nodes[(row["hour"], row["node"])] = [
                row["requests"],
                row["errors"],
                row["duration_sum"],
                row["prompt_tokens"],
                row["completion_tokens"],
            ]
        for row in connection.execute(select(hourly_latency)).mappings():
            key = (row["hour"], row["model"], row["metric"], row["bucket"])
            stored.latency[key] = row["count"]
    return stored


def assert_rollups_match(store: SqlStore, rows: list[dict[str, Any]]) -> None:
    want = Aggregate().add(rows)
    got = stored_rollups(store)
    assert got.clients == want.clients
    assert got.apps == want.apps
    assert got.nodes.keys() == want.nodes.keys()
    for key, sums in want.nodes.items():
        assert [float(v) for v in got.nodes[key]] == pytest.approx(sums, rel=1e-12), key
    assert got.latency == want.latency
    assert got.groups.keys() == want.groups.keys()
    for key, sums in want.groups.items():
        assert [float(v) for v in got.groups[key]] == pytest.approx(sums, rel=1e-12), key


def test_rollups_equal_an_aggregation_from_scratch_after_writes(store: SqlStore) -> None:
    shuffled = ROWS[:]
    random.Random(1).shuffle(shuffled)  # late records land in hours already rolled up
    for start in range(0, len(shuffled), 700):
        store.write(shuffled[start : start + 700])
    store.write(shuffled[:50])  # a retried batch adds nothing
    assert_rollups_match(store, ROWS)


@pytest.mark.parametrize("offset", [0, 1234.5])
def test_retention_keeps_the_rollups_consistent(store: SqlStore, offset: float) -> None:
    store.write(ROWS)
    cutoff = rollups.hour_of(NOW - 2 * 86400) + offset  # on an hour, and into one
    removed = store.delete_older_than(cutoff)
    kept = [r for r in ROWS if r["timestamp"] >= cutoff]
    assert removed == len(ROWS) - len(kept)
    assert_rollups_match(store, kept)
    stats = store.stats(0)
    assert stats["total_requests"] == len(kept)


# What migrations 0004 and 0005 added to each row: before them, a row has none of these.
ADDED_BY_0004 = (
    "client_app",
    "queue_wait_s",
    "max_gap_s",
    "context_tokens",
    "truncation",
    "cold_cause",
    "cold_detail",
    "placement",
    "gpu_share",
    "requests_ahead",
    "diagnosis",
    "node",
)


def after_0004(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as migrations 0004 and 0005 leave rows written before them: the client app named
    from the User-Agent (oldest first, so first come first served), and none of the other
    diagnostics (not known then)."""
    apps = ClientApps()
    return [
        {
            **r,
            "client_app": apps(r["user_agent"]),
            **dict.fromkeys(ADDED_BY_0004[1:]),
            # Served by the machine that migrated the store: 0006 names it.
            "node": default_node(),
        }
        for r in sorted(rows, key=lambda r: r["id"])
    ]


def test_the_migrations_backfill_the_rollups_and_downgrade(url: str) -> None:
    engine = create_store_engine(url)
    migrate.upgrade(engine, "0001")
    old = [{k: v for k, v in r.items() if k not in ADDED_BY_0004} for r in ROWS[:2000]]
    rows = after_0004(old)
    with engine.begin() as connection:
        connection.execute(requests.insert(), old)
        if engine.dialect.name == "sqlite":
            connection.execute(
                text("INSERT INTO requests_fts (id, prompt, response) VALUES (:id, :p, :r)"),
                [{"id": r["id"], "p": r["prompt"], "r": r["response"]} for r in rows],
            )
    migrate.upgrade(engine)
    migrate.check(engine)
    store = SqlStore(engine, auto_migrate=False)
    assert_rollups_match(store, rows)
    found, _ = store.search(SearchQuery(prompt_search="number1234", limit=10))
    assert [r["id"] for r in found] == [ROWS[1234]["id"]]
    store.write(ROWS[2000:2100])  # the full-text index keeps working after the rebuild
    found, _ = store.search(SearchQuery(prompt_search="number2050", limit=10))
    assert [r["id"] for r in found] == [ROWS[2050]["id"]]
    migrate.downgrade(engine, "0001")
    tables = set(inspect(engine).get_table_names())
    assert not tables & {"requests_hourly", "requests_hourly_clients", "requests_hourly_latency"}
    assert migrate.current(engine) == "0001"
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            hits = connection.execute(
                text("SELECT id FROM requests_fts WHERE requests_fts MATCH 'number2050'")
            ).all()
        assert [h[0] for h in hits] == [ROWS[2050]["id"]]
    migrate.upgrade(engine)
    # Down and up again: what 0004 added is named again from the rows.
    assert_rollups_match(store, after_0004(ROWS[:2100]))
    engine.dispose()


def test_percentiles_stay_within_their_bucket() -> None:
    rng = random.Random(4)
    for _ in range(2000):
        value = math.exp(rng.uniform(-9, 9))
        estimate = rollups.bucket_value(bucket(value))
        assert bucket(estimate) == bucket(value)
        assert abs(estimate / value - 1) <= rollups.GROWTH - 1
    assert rollups.bucket_value(bucket(0.0)) == 0.0


def test_hours_split_rows_exactly() -> None:
    for stamp in (0.0, 3600.0, 3599.999999999, 1_800_000_000.0 - 1e-7, 1_799_999_999.9999998):
        hour = rollups.hour_of(stamp)
        assert hour <= stamp < hour + HOUR
        assert rollups.next_hour(stamp) >= stamp

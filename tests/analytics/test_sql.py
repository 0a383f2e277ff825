"""The SQL store, the same suite on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect

from app.analytics import migrate
from app.analytics.rollups import bucket
from app.analytics.sql import SearchQuery, SqlStore, create_store_engine, database_url
from tests.conftest import PostgresDatabases
from tests.support import MODELS, NOW, analytics_rows, newest_first

ROWS = analytics_rows()


def same_bucket(estimate: float, exact: float) -> bool:
    return bucket(estimate) == bucket(exact)


def test_migrations_leave_no_drift_and_go_both_ways(loaded_store: SqlStore) -> None:
    assert migrate.current(loaded_store.engine) == migrate.head(loaded_store.engine)
    migrate.check(loaded_store.engine)  # alembic check: models == database


@pytest.mark.postgres
def test_migrations_downgrade_and_upgrade_cleanly(
    tmp_path: Path, postgres: PostgresDatabases
) -> None:
    for url in (database_url(None, tmp_path), database_url(postgres.create(), tmp_path)):
        engine = create_store_engine(url)
        migrate.upgrade(engine)
        assert "requests" in inspect(engine).get_table_names()
        migrate.downgrade(engine, "base")
        assert migrate.current(engine) is None
        assert "requests" not in inspect(engine).get_table_names()
        migrate.upgrade(engine)
        migrate.check(engine)
        engine.dispose()


def test_a_retried_batch_is_not_stored_twice(loaded_store: SqlStore) -> None:
    loaded_store.write(ROWS[:10])
    rows, _ = loaded_store.search(
        SearchQuery(limit=1000, start_time=ROWS[0]["timestamp"] - 1, end_time=ROWS[10]["timestamp"])
    )
    assert len(rows) == 10


def test_paging_returns_every_record_once_newest_first(loaded_store: SqlStore) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        rows, cursor = loaded_store.search(
            SearchQuery(model="qwen3:latest", limit=333, cursor=cursor)
        )
        seen += [row["id"] for row in rows]
        if cursor is None:
            break
    assert seen == [r["id"] for r in newest_first(model="qwen3:latest")]


@pytest.mark.parametrize(
    "filters",
    [
        {"endpoint": "/api/generate"},
        {"category": "code", "status": 404},
        {"model": "gemma:2b", "endpoint": "/v1/chat/completions"},
    ],
)
def test_filters(loaded_store: SqlStore, filters: dict[str, Any]) -> None:
    rows, _ = loaded_store.search(SearchQuery(limit=1000, **filters))
    assert [r["id"] for r in rows] == [r["id"] for r in newest_first(**filters)][:1000]


def test_time_window_and_min_duration(loaded_store: SqlStore) -> None:
    start, end = NOW - 86400, NOW - 43200
    rows, _ = loaded_store.search(
        SearchQuery(start_time=start, end_time=end, min_duration=20, limit=1000)
    )
    want = [
        r["id"] for r in newest_first() if start <= r["timestamp"] < end and r["duration_s"] >= 20
    ]
    assert [r["id"] for r in rows] == want
    assert want


def test_full_text_search_finds_words_in_prompt_or_response(loaded_store: SqlStore) -> None:
    rows, _ = loaded_store.search(SearchQuery(prompt_search="number1234", limit=10))
    assert [r["id"] for r in rows] == [ROWS[1234]["id"]]
    rows, _ = loaded_store.search(SearchQuery(prompt_search="ocean garden", limit=1000))
    want = [
        r["id"]
        for r in newest_first()
        if {"ocean", "garden"} <= set((r["prompt"] + " " + r["response"]).split())
    ]
    assert sorted(r["id"] for r in rows) == sorted(want[:1000])


@pytest.mark.parametrize(
    "hostile",
    [
        "' OR 1=1 --",
        '"; DROP TABLE requests; --',
        "sky OR blue",
        "NEAR(sky blue)",
        "sky*",
        '"unbalanced',
        "-sky",
        "prompt:sky",
        "\\x00",
        "%",
        "💥",
    ],
)
def test_hostile_search_strings_are_plain_words(loaded_store: SqlStore, hostile: str) -> None:
    rows, _ = loaded_store.search(SearchQuery(prompt_search=hostile, limit=1000))
    words = re.findall(r"\w+", hostile.lower())
    # Whatever the string, it means "all these words": no operator, no SQL, no error.
    for row in rows:
        present = set(re.findall(r"\w+", (row["prompt"] + " " + row["response"]).lower()))
        assert set(words) <= present
    if hostile in ("sky OR blue", "NEAR(sky blue)"):
        assert rows == []  # OR and NEAR are words here, and no record contains them
    assert loaded_store.search(SearchQuery(limit=1))[0], "the table is still there"


def test_stats_are_computed_right(loaded_store: SqlStore) -> None:
    since = NOW - 86400
    stats = loaded_store.stats(since)
    window = [r for r in ROWS if r["timestamp"] >= since]
    errors = sum(1 for r in window if r["status"] >= 400)
    assert stats["total_requests"] == len(window)
    assert stats["errors"] == errors
    assert stats["error_rate"] == pytest.approx(errors / len(window))
    durations = sorted(r["duration_s"] for r in window)
    nearest = lambda p, values: values[max(math.ceil(p * len(values)) - 1, 0)]  # noqa: E731
    # Percentiles come from 5 % histogram buckets: the estimate shares the exact value's.
    assert same_bucket(stats["latency"]["p50_s"], nearest(0.5, durations))
    assert same_bucket(stats["latency"]["p95_s"], nearest(0.95, durations))
    assert stats["latency"]["avg_s"] == pytest.approx(sum(durations) / len(durations))
    ttfts = sorted(r["ttft_s"] for r in window if r["ttft_s"] is not None)
    assert same_bucket(stats["ttft"]["p95_s"], nearest(0.95, ttfts))
    assert stats["tokens"]["prompt_total"] == sum(r["prompt_tokens"] for r in window)
    assert stats["tokens"]["completion_total"] == sum(r["completion_tokens"] for r in window)
    by_model = {m["name"]: m for m in stats["models"]}
    for model in MODELS:
        rows = [r for r in window if r["model"] == model]
        assert by_model[model]["requests"] == len(rows)
        assert by_model[model]["completion_tokens"] == sum(r["completion_tokens"] for r in rows)
    assert {c["name"] for c in stats["categories"]} == {"question", "code", "other"}
    assert sum(c["requests"] for c in stats["top_clients"]) == len(window)
    assert sum(h["requests"] for h in stats["hourly"]) == len(window)
    assert all(h["hour"] % 3600 == 0 for h in stats["hourly"])
    assert 24 <= len(stats["hourly"]) <= 25


def test_retention_deletes_only_old_rows(tmp_path: Path) -> None:
    store = SqlStore(create_store_engine(database_url(None, tmp_path)))
    store.write(ROWS[:100])
    cutoff = ROWS[40]["timestamp"]
    assert store.delete_older_than(cutoff) == 40
    rows, _ = store.search(SearchQuery(limit=1000))
    assert len(rows) == 60
    rows, _ = store.search(SearchQuery(prompt_search="number5", limit=10))
    assert rows == []  # the full-text index forgot them too
    store.close()


def test_client_chosen_strings_fit_their_columns(loaded_store: SqlStore) -> None:
    from app.analytics.rows import to_row
    from tests.support import sample_record

    record = sample_record(
        model="m" * 5000, path="/" + "p" * 5000, user_agent="u" * 5000, done_reason="d" * 100
    )
    loaded_store.write([to_row(record, store_prompts=True, max_text_bytes=1000)])
    stored = loaded_store.get(record.id)
    assert stored is not None
    assert stored["model"] == "m" * 255

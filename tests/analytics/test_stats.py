"""``/analytics/stats`` on SQLite and the real PostgreSQL equal the exact computation."""

from __future__ import annotations

import math
from typing import Any

import pytest

from app.analytics import rollups
from app.analytics.rollups import bucket
from app.analytics.sql import SqlStore
from tests.support import MODELS, NOW, analytics_rows

ROWS = analytics_rows()


def same_bucket(estimate: float, exact: float) -> bool:
    return bucket(estimate) == bucket(exact)


def nearest(fraction: float, values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def test_stats_are_computed_right(loaded_store: SqlStore) -> None:
    since = NOW - 86400
    stats = loaded_store.stats(since)
    window = [r for r in ROWS if r["timestamp"] >= since]
    errors = sum(1 for r in window if r["status"] >= 400)
    assert stats["total_requests"] == len(window)
    assert stats["errors"] == errors
    assert stats["error_rate"] == pytest.approx(errors / len(window))
    durations = sorted(r["duration_s"] for r in window)
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


@pytest.mark.parametrize("since", [NOW - 86400, rollups.hour_of(NOW - 86400), 0])
def test_the_diagnostics_equal_the_exact_computation(loaded_store: SqlStore, since: float) -> None:
    stats = loaded_store.stats(since)
    window = [r for r in ROWS if r["timestamp"] >= since]
    for key, field in (("queue_wait", "queue_wait_s"), ("stream_max_gap", "max_gap_s")):
        values = [r[field] for r in window if r[field] is not None]
        for fraction, percentile in ((0.5, "p50_s"), (0.95, "p95_s")):
            assert same_bucket(stats[key][percentile], nearest(fraction, values)), key
    assert stats["truncations"] == sum(1 for r in window if r["truncation"] is not None)
    for model in stats["models"]:
        assert model["truncations"] == sum(
            1 for r in window if r["model"] == model["name"] and r["truncation"] is not None
        )
    assert stats["cold_starts"] == sum(1 for r in window if r["cold_cause"] is not None)
    for model in stats["models"]:
        rows = [r for r in window if r["model"] == model["name"]]
        cold = sum(1 for r in rows if r["cold_cause"] is not None)
        placed = [r for r in rows if r["placement"] is not None]
        spilled = sum(1 for r in placed if r["placement"] in ("mixed", "cpu"))
        assert (model["cold_starts"], model["placed"]) == (cold, len(placed))
        assert model["cold_start_share"] == pytest.approx(cold / len(rows))
        assert model["spilled_share"] == pytest.approx(spilled / len(placed))
        waits = [r["queue_wait_s"] for r in rows if r["queue_wait_s"] is not None]
        assert same_bucket(model["queue_wait_p95_s"], nearest(0.95, waits)), model["name"]
    apps = {a["name"]: a for a in stats["client_apps"]}
    assert set(apps) == {"ollama-python", "openai-python", "curl"}
    for name, app in apps.items():
        rows = [r for r in window if r["client_app"] == name]
        assert app["requests"] == len(rows)
        assert app["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows)
        assert app["completion_tokens"] == sum(r["completion_tokens"] for r in rows)
    assert [a["requests"] for a in stats["client_apps"]] == sorted(
        (a["requests"] for a in stats["client_apps"]), reverse=True
    )


@pytest.mark.parametrize(
    "since",
    [
        NOW - 86400,  # into an hour: its rows are read raw
        rollups.hour_of(NOW - 86400),  # on an hour: rollups only
        ROWS[100]["timestamp"],  # exactly a row's time: that row counts
        ROWS[100]["timestamp"] + 1e-6,  # just after it: it does not
        0,
    ],
)
def test_stats_equal_the_exact_computation(loaded_store: SqlStore, since: float) -> None:
    stats = loaded_store.stats(since)
    window = [r for r in ROWS if r["timestamp"] >= since]
    errors = [r for r in window if r["status"] >= 400]
    assert stats["total_requests"] == len(window)
    assert stats["errors"] == len(errors)
    assert stats["cancelled"] == 0
    durations = [r["duration_s"] for r in window]
    assert stats["latency"]["avg_s"] == pytest.approx(sum(durations) / len(durations))
    for fraction, key in ((0.5, "p50_s"), (0.95, "p95_s")):
        assert bucket(stats["latency"][key]) == bucket(nearest(fraction, durations))
        assert stats["latency"][key] == pytest.approx(nearest(fraction, durations), rel=0.05)
        ttfts = [r["ttft_s"] for r in window if r["ttft_s"] is not None]
        assert bucket(stats["ttft"][key]) == bucket(nearest(fraction, ttfts))
    tokens = stats["tokens"]
    assert tokens["prompt_total"] == sum(r["prompt_tokens"] for r in window)
    assert tokens["completion_avg"] == pytest.approx(
        sum(r["completion_tokens"] for r in window) / len(window)
    )
    rates = [r["tokens_per_second"] for r in window]
    assert stats["tokens_per_second_avg"] == pytest.approx(sum(rates) / len(rates))
    for breakdown, field in (("models", "model"), ("categories", "category")):
        for entry in stats[breakdown]:
            rows = [r for r in window if r[field] == entry["name"]]
            assert entry["requests"] == len(rows)
            assert entry["errors"] == sum(1 for r in rows if r["status"] >= 400)
            assert entry["completion_tokens"] == sum(r["completion_tokens"] for r in rows)
            assert entry["avg_duration_s"] == pytest.approx(
                sum(r["duration_s"] for r in rows) / len(rows)
            )
        assert sum(entry["requests"] for entry in stats[breakdown]) == len(window)
    clients: dict[str, int] = {}
    for row in window:
        clients[row["client"]] = clients.get(row["client"], 0) + 1
    assert {c["client"]: c["requests"] for c in stats["top_clients"]} == clients
    hours: dict[int, list[dict[str, Any]]] = {}
    for row in window:
        hours.setdefault(rollups.hour_of(row["timestamp"]), []).append(row)
    assert [h["hour"] for h in stats["hourly"]] == sorted(hours)
    for entry in stats["hourly"]:
        rows = hours[entry["hour"]]
        assert entry["requests"] == len(rows)
        assert entry["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows)
        assert entry["errors"] == sum(1 for r in rows if r["status"] >= 400)


def test_stats_of_an_empty_window(loaded_store: SqlStore) -> None:
    stats = loaded_store.stats(NOW + 10 * 86400)
    assert stats["total_requests"] == 0
    assert stats["latency"] == {"avg_s": None, "p50_s": None, "p95_s": None}
    assert stats["models"] == stats["hourly"] == stats["top_clients"] == []

"""The background writer against real stores: a store that is down loses nothing accepted,
a full queue drops and counts, shutdown drains."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from app.analytics.rows import RejectedRows, to_row
from app.analytics.sql import SearchQuery, SqlStore, create_store_engine, database_url
from app.analytics.writer import AnalyticsMetrics, AnalyticsWriter
from tests.conftest import PostgresDatabases
from tests.support import SQL_STORES, sample_record


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def until(check: Callable[[], bool], within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def writer_for(store: Any, registry: CollectorRegistry, **kw: Any) -> AnalyticsWriter:
    options = {"flush_interval": 0.05, "max_backoff": 0.2, "retention_days": 0, **kw}
    return AnalyticsWriter([store], metrics=AnalyticsMetrics(registry), **options)


@pytest.mark.postgres
def test_a_store_down_for_a_while_loses_nothing(postgres: PostgresDatabases) -> None:
    url = postgres.create()
    postgres.drop(url)  # the server answers, the database is gone: writes fail
    store = SqlStore(create_store_engine(database_url(url, Path("."))))
    registry = CollectorRegistry()
    writer = writer_for(store, registry)
    records = [sample_record(prompt=f"kept {i}") for i in range(500)]

    async def scenario() -> None:
        await writer.start()
        for record in records:
            writer.finished(record)
        await until(
            lambda: (
                value(registry, "ollama_analytics_write_errors_total", backend="postgresql") >= 2
            )
        )
        assert value(registry, "ollama_analytics_queue_depth", backend="postgresql") == 500
        postgres.recreate(url)
        await until(
            lambda: (
                value(registry, "ollama_analytics_records_written_total", backend="postgresql")
                == 500
            )
        )
        await writer.stop()

    asyncio.run(scenario())
    check = SqlStore(create_store_engine(database_url(url, Path("."))))
    rows, _ = check.search(SearchQuery(limit=1000))
    assert sorted(r["id"] for r in rows) == sorted(r.id for r in records)
    assert (
        value(registry, "ollama_analytics_dropped_total", backend="postgresql", reason="queue_full")
        == 0
    )
    check.close()


@pytest.mark.postgres
def test_a_full_queue_drops_and_counts(postgres: PostgresDatabases) -> None:
    url = postgres.create()
    postgres.drop(url)
    store = SqlStore(create_store_engine(database_url(url, Path("."))))
    registry = CollectorRegistry()
    writer = writer_for(store, registry, queue_size=100, batch_size=10)

    async def scenario() -> None:
        await writer.start()
        for _ in range(150):
            writer.finished(sample_record())
        await writer.stop(drain_seconds=0.5)

    asyncio.run(scenario())
    dropped = {
        reason: value(
            registry, "ollama_analytics_dropped_total", backend="postgresql", reason=reason
        )
        for reason in ("queue_full", "shutdown")
    }
    assert dropped == {"queue_full": 50, "shutdown": 100}
    assert value(registry, "ollama_analytics_records_written_total", backend="postgresql") == 0


def test_stop_drains_everything_accepted(tmp_path: Path) -> None:
    store = SqlStore(create_store_engine(database_url(None, tmp_path)))
    registry = CollectorRegistry()
    writer = writer_for(store, registry, batch_size=100, flush_interval=1.0)
    records = [sample_record() for _ in range(1000)]

    async def scenario() -> None:
        await writer.start()
        for record in records:
            writer.finished(record)
        await writer.stop(drain_seconds=30)

    asyncio.run(scenario())
    check = SqlStore(create_store_engine(database_url(None, tmp_path)))
    assert len(check.search(SearchQuery(limit=1000))[0]) == 1000
    assert value(registry, "ollama_analytics_records_written_total", backend="sqlite") == 1000
    check.close()


class FakeBackend:
    """A backend in memory: nothing to delete, nothing to close; ``write`` is the test's."""

    name = "fake"

    def write(self, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def delete_older_than(self, cutoff: float) -> int:
        return 0

    def close(self) -> None:
        return None


class Refusing(FakeBackend):
    """A backend that refuses every batch for good, as Loki does with too-old entries."""

    name = "refusing"

    def write(self, rows: list[dict[str, Any]]) -> None:
        raise RejectedRows("entry too far behind")


def test_rejected_batches_are_dropped_and_counted_not_retried() -> None:
    registry = CollectorRegistry()
    writer = writer_for(Refusing(), registry)

    async def scenario() -> None:
        await writer.start()
        for _ in range(7):
            writer.finished(sample_record())
        await until(
            lambda: (
                value(
                    registry,
                    "ollama_analytics_dropped_total",
                    backend="refusing",
                    reason="rejected",
                )
                == 7
            )
        )
        await writer.stop()

    asyncio.run(scenario())
    assert value(registry, "ollama_analytics_write_errors_total", backend="refusing") == 0


def test_retention_runs_at_start(tmp_path: Path) -> None:
    store = SqlStore(create_store_engine(database_url(None, tmp_path)))
    old = [sample_record(timestamp=time.time() - 10 * 86400) for _ in range(5)]
    new = [sample_record() for _ in range(3)]
    store.write([to_row(r, store_prompts=True, max_text_bytes=1000) for r in old + new])
    registry = CollectorRegistry()
    writer = writer_for(store, registry, retention_days=7)

    async def scenario() -> None:
        await writer.start()
        await until(lambda: len(store.search(SearchQuery(limit=100))[0]) == 3)
        await writer.stop()

    asyncio.run(scenario())


class SizeLimited(FakeBackend):
    """A backend that refuses any batch above 10 rows with a retryable error, as Loki does
    (429) with a push above its burst limit; everything it accepts is kept."""

    name = "size-limited"

    def __init__(self) -> None:
        self.kept: list[str] = []

    def write(self, rows: list[dict[str, Any]]) -> None:
        if len(rows) > 10:
            raise RuntimeError("429 ingestion rate limit exceeded")
        self.kept += [row["id"] for row in rows]


def test_a_batch_too_big_for_the_backend_is_split_until_it_fits() -> None:
    backend = SizeLimited()
    registry = CollectorRegistry()
    writer = writer_for(backend, registry, batch_size=64, flush_interval=0.2)
    records = [sample_record() for _ in range(64)]

    async def scenario() -> None:
        await writer.start()
        for record in records:
            writer.finished(record)
        await until(lambda: len(backend.kept) == 64)
        await writer.stop()

    asyncio.run(scenario())
    assert sorted(backend.kept) == sorted(r.id for r in records)
    assert value(registry, "ollama_analytics_records_written_total", backend="size-limited") == 64
    assert (
        value(
            registry, "ollama_analytics_dropped_total", backend="size-limited", reason="queue_full"
        )
        == 0
    )


@pytest.mark.parametrize("kind", SQL_STORES)
def test_a_record_the_store_cannot_take_is_dropped_alone_and_counted(
    kind: str, tmp_path: Path, postgres: PostgresDatabases
) -> None:
    url = database_url(postgres.create() if kind == "postgresql" else None, tmp_path)
    store = SqlStore(create_store_engine(url))
    registry = CollectorRegistry()
    writer = writer_for(store, registry, batch_size=64)
    # NUL (which PostgreSQL text cannot hold) and a lone surrogate (not UTF-8) are stored as
    # U+FFFD; a count past any integer column is refused by the store itself, every time.
    odd = sample_record(model="llama\x00x", prompt="nul \x00 and \ud800 here")
    poison = sample_record(prompt="poison", prompt_tokens=2**70)
    good = [sample_record(prompt=f"good {i}") for i in range(40)]
    records = [*good[:20], odd, poison, *good[20:]]

    async def scenario() -> None:
        await writer.start()
        for record in records:
            writer.finished(record)
        await until(
            lambda: (
                value(registry, "ollama_analytics_dropped_total", backend=kind, reason="rejected")
                == 1
            )
        )
        await writer.stop(drain_seconds=30)

    asyncio.run(scenario())
    rows, _ = store.search(SearchQuery(limit=100))
    assert {row["id"] for row in rows} == {r.id for r in records} - {poison.id}
    stored = next(row for row in rows if row["id"] == odd.id)
    assert (stored["model"], stored["prompt"]) == ("llama\ufffdx", "nul \ufffd and \ufffd here")
    assert value(registry, "ollama_analytics_records_written_total", backend=kind) == 41
    store.close()


class Recording(FakeBackend):
    """A backend that keeps the size of every batch it is given."""

    name = "recording"

    def __init__(self, backlog_factor: int | None) -> None:
        self.sizes: list[int] = []
        if backlog_factor is not None:
            self.backlog_factor = backlog_factor

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.sizes.append(len(rows))


@pytest.mark.parametrize(
    ("factor", "sizes"), [(None, [10] * 10), (4, [40, 40, 20]), (1, [10] * 10)]
)
def test_a_backlog_is_written_in_batches_of_the_backends_factor(
    factor: int | None, sizes: list[int]
) -> None:
    backend = Recording(factor)
    registry = CollectorRegistry()
    writer = writer_for(backend, registry, batch_size=10)
    for _ in range(100):  # queued before the lane starts: a backlog
        writer.finished(sample_record())

    async def scenario() -> None:
        await writer.start()
        await until(lambda: sum(backend.sizes) == 100)
        await writer.stop()

    asyncio.run(scenario())
    assert backend.sizes == sizes
    assert value(registry, "ollama_analytics_records_written_total", backend="recording") == 100


def test_a_lane_that_keeps_up_writes_the_batch_size_as_it_gathers() -> None:
    backend = Recording(4)
    registry = CollectorRegistry()
    writer = writer_for(backend, registry, batch_size=10, flush_interval=0.05)

    async def scenario() -> None:
        await writer.start()
        for round_ in range(1, 4):
            for _ in range(10):
                writer.finished(sample_record())
            await until(lambda r=round_: sum(backend.sizes) == 10 * r)  # type: ignore[misc]
        await writer.stop()

    asyncio.run(scenario())
    assert backend.sizes == [10, 10, 10]


def test_the_sqlite_store_takes_a_backlog_four_batches_at_a_time(tmp_path: Path) -> None:
    store = SqlStore(create_store_engine(database_url(None, tmp_path)))
    assert store.backlog_factor == 4
    sizes: list[int] = []
    write = store.write

    def counted(rows: list[dict[str, Any]]) -> None:
        sizes.append(len(rows))
        write(rows)

    store.write = counted  # type: ignore[method-assign]
    registry = CollectorRegistry()
    writer = writer_for(store, registry, batch_size=50)
    for _ in range(250):
        writer.finished(sample_record())

    async def scenario() -> None:
        await writer.start()
        await until(
            lambda: (
                value(registry, "ollama_analytics_records_written_total", backend="sqlite") == 250
            )
        )
        await writer.stop()

    asyncio.run(scenario())
    assert sizes == [200, 50]
    assert len(store.search(SearchQuery(limit=1000))[0]) == 250
    store.close()

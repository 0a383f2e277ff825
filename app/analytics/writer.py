"""The background writer: bounded queues, batches, retries with backoff, drain on stop.

``finished(record)`` is called on the request path; it converts the record to a row once
and appends it to one queue per backend without waiting. Each backend has its own lane
(queue + task), so a slow or failing Loki never holds back SQLite. A lane whose backend
fails keeps its batch and retries it with exponential backoff while new records wait in the
queue; only when a queue is full are records dropped, and every drop is counted. A failure
that says how long to wait (a ``retry_after`` attribute, as Loki's 429 carries) holds the
lane's next attempt back at least that long. When records have piled up (a burst, or a
store that was down), a backend whose cost per record falls with the batch's size takes up
to ``backlog_factor`` (an optional attribute, 1 when absent) times the batch size in one
write; a lane that keeps up still writes as soon as a batch has gathered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from app.analytics.rows import Backend, RejectedRows, to_row
from app.record import ExchangeRecord

log = logging.getLogger(__name__)

DROP_REASONS = ("queue_full", "rejected", "shutdown")
# The longest a backend's Retry-After is honoured; beyond it the usual backoff applies.
MAX_RETRY_AFTER = 300.0


class AnalyticsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_depth = Gauge(
            "ollama_analytics_queue_depth",
            "Records accepted and not yet written, per backend (queued plus the batch in hand).",
            ["backend"],
            registry=registry,
        )
        self.written = Counter(
            "ollama_analytics_records_written",
            "Records written to each analytics backend.",
            ["backend"],
            registry=registry,
        )
        self.dropped = Counter(
            "ollama_analytics_dropped",
            "Records not written: queue_full (store too slow or down too long), rejected by "
            "the backend, or still queued when the shutdown drain ran out of time.",
            ["backend", "reason"],
            registry=registry,
        )
        self.write_errors = Counter(
            "ollama_analytics_write_errors",
            "Failed batch writes (each is retried with backoff).",
            ["backend"],
            registry=registry,
        )


class _Lane:
    """One backend's queue and the task that empties it."""

    def __init__(self, backend: Backend, capacity: int, metrics: AnalyticsMetrics) -> None:
        self.backend = backend
        self.capacity = capacity
        self.items: deque[dict[str, Any]] = deque()
        self.batch: list[dict[str, Any]] = []
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.failing_since: float | None = None
        self.resume_at = 0.0  # monotonic time before which the backend asked not to be tried
        self.backlog_factor = max(1, int(getattr(backend, "backlog_factor", 1)))
        metrics.queue_depth.labels(backend.name).set_function(
            lambda: len(self.items) + len(self.batch)
        )
        for reason in DROP_REASONS:
            metrics.dropped.labels(backend.name, reason)
        metrics.written.labels(backend.name)
        metrics.write_errors.labels(backend.name)


class AnalyticsWriter:
    """A sink of ``app.exchange`` that writes every record to the configured backends."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        metrics: AnalyticsMetrics,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        max_backoff: float = 30.0,
        store_prompts: bool = True,
        max_text_bytes: int = 256 * 1024,
        retention_days: float = 7.0,
        drain_seconds: float = 10.0,
    ) -> None:
        self.metrics = metrics
        self.lanes = [_Lane(backend, queue_size, metrics) for backend in backends]
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self.store_prompts = store_prompts
        self.max_text_bytes = max_text_bytes
        self.retention_days = retention_days
        self.drain_seconds = drain_seconds
        self.stopping = False
        self.retention_task: asyncio.Task[None] | None = None

    # -- the sink interface (request path: never waits) --------------------------------

    def started(self, request_id: str, endpoint: str, model: str) -> None:
        return None

    def finished(self, record: ExchangeRecord) -> None:
        row = to_row(record, store_prompts=self.store_prompts, max_text_bytes=self.max_text_bytes)
        for lane in self.lanes:
            if len(lane.items) >= lane.capacity:
                self.metrics.dropped.labels(lane.backend.name, "queue_full").inc()
                continue
            lane.items.append(row)
            lane.wake.set()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        for lane in self.lanes:
            lane.task = asyncio.create_task(self._run(lane), name=f"analytics-{lane.backend.name}")
        if self.retention_days > 0:
            self.retention_task = asyncio.create_task(self._retain(), name="analytics-retention")

    async def stop(self, drain_seconds: float | None = None) -> None:
        """Write what is queued (for up to ``drain_seconds``, by default the writer's own),
        then stop; the rest is counted."""
        if drain_seconds is None:
            drain_seconds = self.drain_seconds
        self.stopping = True
        if self.retention_task is not None:
            self.retention_task.cancel()
        for lane in self.lanes:
            lane.wake.set()
        tasks = [lane.task for lane in self.lanes if lane.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=drain_seconds)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for lane in self.lanes:
            left = len(lane.items) + len(lane.batch)
            if left:
                log.error("analytics: %d records for %s lost at shutdown", left, lane.backend.name)
                self.metrics.dropped.labels(lane.backend.name, "shutdown").inc(left)
                lane.items.clear()
                lane.batch = []
            await asyncio.to_thread(lane.backend.close)

    # -- the lanes ---------------------------------------------------------------------

    async def _run(self, lane: _Lane) -> None:
        while True:
            if not lane.items:
                if self.stopping:
                    return
                await lane.wake.wait()
                lane.wake.clear()
                continue
            if len(lane.items) < self.batch_size and not self.stopping:
                # Let a batch gather: one transaction for many records.
                await asyncio.sleep(self.flush_interval)
            count = min(self.batch_size * lane.backlog_factor, len(lane.items))
            lane.batch = [lane.items.popleft() for _ in range(count)]
            await self._write(lane)
            lane.batch = []

    async def _write(self, lane: _Lane) -> None:
        await self._write_rows(lane, lane.batch)

    async def _write_rows(self, lane: _Lane, rows: list[dict[str, Any]]) -> None:
        """Write ``rows``, retrying with backoff. A batch that keeps failing is split in
        halves: a store that is down fails every size alike, but a batch that is merely too
        big for the backend (Loki's burst limit answers 429 to it forever) gets through."""
        name = lane.backend.name
        backoff = 0.5
        failures = 0
        while True:
            wait = lane.resume_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await asyncio.to_thread(lane.backend.write, rows)
            except RejectedRows as exc:
                if len(rows) > 1:
                    # One record the store cannot take must not take its batch with it:
                    # halves are tried until it is alone, then it alone is dropped.
                    half = len(rows) // 2
                    await self._write_rows(lane, rows[:half])
                    await self._write_rows(lane, rows[half:])
                    return
                log.error("analytics: %s rejected a record (%s): %s", name, rows[0]["id"], exc)
                self.metrics.dropped.labels(name, "rejected").inc()
                return
            except Exception as exc:
                self.metrics.write_errors.labels(name).inc()
                failures += 1
                if lane.failing_since is None:
                    lane.failing_since = time.monotonic()
                    log.warning("analytics: writing to %s failed, will retry: %s", name, exc)
                hint = getattr(exc, "retry_after", None)
                if isinstance(hint, int | float) and hint > 0:
                    lane.resume_at = time.monotonic() + min(float(hint), MAX_RETRY_AFTER)
                if failures >= 3 and len(rows) > 1:
                    half = len(rows) // 2
                    await self._write_rows(lane, rows[:half])
                    await self._write_rows(lane, rows[half:])
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if lane.failing_since is not None:
                log.info(
                    "analytics: %s is writable again after %.1fs",
                    name,
                    time.monotonic() - lane.failing_since,
                )
                lane.failing_since = None
            self.metrics.written.labels(name).inc(len(rows))
            return

    async def _retain(self) -> None:
        while True:
            cutoff = time.time() - self.retention_days * 86400
            for lane in self.lanes:
                try:
                    removed = await asyncio.to_thread(lane.backend.delete_older_than, cutoff)
                except Exception:
                    log.exception("analytics: retention on %s failed", lane.backend.name)
                else:
                    if removed:
                        log.info(
                            "analytics: %s: removed %d old entries", lane.backend.name, removed
                        )
            await asyncio.sleep(3600)

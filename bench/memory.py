"""Scenario 3, memory: the RSS of the process the client talks to (our proxy, nginx's master
and workers, or for ``direct`` the generator upstream itself), from ``/proc/PID/status``.

- ``memory.stream``: one ``POST /api/generate`` whose NDJSON answer is ``big_bytes`` long
  (64 KB tokens, as fast as the path goes); RSS sampled every 50 ms.
- ``memory.upload``: one ``POST /api/blobs/sha256:…`` of ``big_bytes`` zeros streamed from
  the client with a Content-Length; the upstream reads and discards it.
- ``memory.series``: ``rss_ready_mb`` is VmRSS once the server is ready, before any of
  these requests; then ``series_total`` non-streamed ``POST /api/generate`` on 8 keep-alive
  connections, VmRSS sampled every ``series_every`` requests; the slope is a least-squares
  fit over the samples after the first 20 % of the requests (warm-up), in MB per 100,000
  requests.

Growth = peak − VmRSS just before the transfer, where peak is VmHWM afterwards if VmHWM rose
during the transfer, else the highest sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from bench import client, procs
from bench.plan import Plan

TOKEN_BYTES = 64 * 1024
BLOB = "/api/blobs/sha256:" + "0" * 64
SMALL = b'{"model":"llama3.2","prompt":"Why is the sky blue?","stream":false}'


def run(plan: Plan, log: Any) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {
        "memory.stream": {"kind": "memory", "bytes": plan.big_bytes},
        "memory.upload": {"kind": "memory", "bytes": plan.big_bytes},
        "memory.series": {"kind": "series", "requests": plan.series_total},
    }
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(procs.generator())
        ways = {
            "direct": upstream,
            "proxy": stack.enter_context(procs.our_proxy(upstream.url)),
            "nginx": stack.enter_context(procs.nginx_proxy(upstream.url)),
        }
        ready = {way: at_rest(server) for way, server in ways.items()}
        for way, server in ways.items():
            for key, measure in (("memory.stream", big_stream), ("memory.upload", upload)):
                results[key][way] = client.run(measure(plan, server))
                log(key, way, results[key][way])
            results["memory.series"][way] = client.run(series(plan, server))
            results["memory.series"][way]["rss_ready_mb"] = ready[way]
            log("memory.series", way, results["memory.series"][way])
    return results


def at_rest(server: procs.Server) -> float:
    """VmRSS of a server that is ready and has served nothing yet (``rss-start``)."""
    server.refresh()
    return server.memory()[0]


async def sampled(server: procs.Server, work: Any, size: int) -> dict[str, Any]:
    """Run ``work`` while sampling the server's memory; the transfer's MB/s and growth."""
    server.refresh()
    before, hwm_before = server.memory()
    peak = before
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.memory()[0])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.05)

    sampler = asyncio.ensure_future(sample())
    started = time.perf_counter()
    try:
        result: client.Result = await work
    finally:
        done.set()
        await sampler
    seconds = time.perf_counter() - started
    after, hwm_after = server.memory()
    top = hwm_after if hwm_after > hwm_before else max(peak, after)
    return {
        "status": result.status,
        "mb": size / 1e6,
        "seconds": seconds,
        "mb_per_s": size / 1e6 / seconds,
        "rss_before_mb": before,
        "rss_peak_mb": top,
        "rss_after_mb": after,
        "hwm_before_mb": hwm_before,
        "hwm_after_mb": hwm_after,
        "growth_mb": top - before,
    }


async def big_stream(plan: Plan, server: procs.Server) -> dict[str, Any]:
    lines = max(1, plan.big_bytes // TOKEN_BYTES)
    body = b'{"model":"llama3.2","prompt":"stream","options":{"num_predict":%d},' % lines
    body += b'"x_bench_token_bytes":%d}' % TOKEN_BYTES
    connection = await client.Connection.open(server.port)
    try:
        entry = await sampled(
            server, connection.request(client.post("/api/generate", body), body), plan.big_bytes
        )
    finally:
        connection.close()
    return entry


async def upload(plan: Plan, server: procs.Server) -> dict[str, Any]:
    connection = await client.Connection.open(server.port)
    head = client.post(BLOB, b"", length=plan.big_bytes)
    try:
        return await sampled(
            server, connection.request(head, upload=plan.big_bytes), plan.big_bytes
        )
    finally:
        connection.close()


WARM_UP = 0.2  # the share of a series left out of the trend fit


def slope_per_100k(points: list[tuple[int, float]]) -> float:
    """Least-squares MB per 100,000 requests over the samples after the warm-up (the first
    ``WARM_UP`` of the requests), in which allocator arenas, SQLite's page cache and the
    metric children settle; a leak goes on rising after it."""
    last = points[-1][0] if points else 0
    fitted = [(x, y) for x, y in points if x >= WARM_UP * last]
    if len(fitted) < 2:
        return 0.0
    mean_x = sum(x for x, _ in fitted) / len(fitted)
    mean_y = sum(y for _, y in fitted) / len(fitted)
    spread = sum((x - mean_x) ** 2 for x, _ in fitted)
    if not spread:
        return 0.0
    slope = sum((x - mean_x) * (y - mean_y) for x, y in fitted) / spread
    return slope * 100_000


async def series(plan: Plan, server: procs.Server) -> dict[str, Any]:
    server.refresh()
    points: list[tuple[int, float]] = [(0, server.memory()[0])]

    async def sample(done: int) -> None:
        points.append((done, server.memory()[0]))

    head = client.post("/api/generate", SMALL)
    batch = await client.many(
        server.port,
        head,
        SMALL,
        concurrency=8,
        total=plan.series_total,
        every=plan.series_every,
        on_every=sample,
    )
    errors = sum(1 for result in batch.results if result.status != 200)
    # The slope comes from the series as stored, so `--rejudge` can compute it again.
    stored = [(n, round(mb, 2)) for n, mb in points]
    return {
        "requests": len(batch.results),
        "rps": len(batch.results) / batch.seconds,
        "errors": errors,
        "rss_series_mb": [list(point) for point in stored],
        "rss_start_mb": points[0][1],
        "rss_end_mb": points[-1][1],
        "slope_mb_per_100k": slope_per_100k(stored),
    }

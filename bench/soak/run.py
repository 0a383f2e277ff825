"""The run: warm-up, baseline, the load with its samples, then settling, the pool probe and
the record count; ``soak`` returns it all as one result dict for the verdicts and report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from bench import procs
from bench.soak.clients import CLASSES, Client, Spec, Tally, client_loop, one, request
from bench.soak.verdicts import FD_SLACK, TASK_SLACK
from bench.soak.watch import Proxy, sample, scrape

SETTLE_S = 30.0  # how long the proxy may take to return to its baseline
RECORDS_S = 60.0  # how long the writer may take to store the last records


async def settle(
    proxy: Proxy, baseline: dict[str, Any], tally: Tally, started: float
) -> dict[str, Any]:
    """Poll until the idle proxy is back at its baseline (or ``SETTLE_S`` passed); the row."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        row = await sample(proxy, started, tally)
        back = (
            row["in_flight"] == 0
            and row["client_established"] + row["client_other"] == 0
            and row["tasks"] is not None
            and row["tasks"] <= baseline["tasks"] + TASK_SLACK
            and row["fds"] - row["upstream_established"]
            <= baseline["fds"] - baseline["upstream_established"] + FD_SLACK
        )
        if back or time.monotonic() > deadline:
            return row
        await asyncio.sleep(0.5)


async def pool_probe(
    proxy: Proxy, held: int, tally: Tally, alive: Callable[[], bool]
) -> dict[str, Any]:
    """``held`` concurrent short streams: all must ride on idle pooled connections."""
    body = b'{"model":"llama3.2","prompt":"probe","options":{"num_predict":40},'
    body += b'"x_bench_interval_ms":20}'
    spec = Spec("/api/generate", body, True, 41)
    clients = [await Client.open(proxy.server.port) for _ in range(held)]
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, proxy.sockets()["upstream_established"])
            await asyncio.sleep(0.1)

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.gather(
            *(one(proxy.server.port, spec, conn, tally, alive) for conn in clients)
        )
    finally:
        watcher.cancel()
        for conn in clients:
            conn.close()
    after = proxy.sockets()["upstream_established"]
    return {
        "streams": held,
        "upstream_peak": max(peak, after),
        "upstream_after": after,
        "ok": tally.classes["ok"],
    }


async def records(proxy: Proxy, sent: int) -> dict[str, Any]:
    """Poll the SQLite file until it holds ``sent`` rows, or the writer stopped moving."""
    deadline = time.monotonic() + RECORDS_S
    while True:
        found = proxy.records()
        metrics = await scrape(proxy.server.port)
        if found["stored"] >= sent or time.monotonic() > deadline:
            return found | {key: int(value) for key, value in metrics.items()}
        await asyncio.sleep(0.5)


async def warm_up(proxy: Proxy, tally: Tally, alive: Callable[[], bool]) -> None:
    """A short request of each kind, so that the baseline has the SQLite file open."""
    kinds = [(path, True) for path in ("/api/chat", "/api/generate", "/v1/chat/completions")]
    kinds += [("/api/chat", False), ("/api/generate", False)]
    port = proxy.server.port
    specs = [request(path, streamed, 20, 10, 0) for path, streamed in kinds]
    for conn in await asyncio.gather(*(one(port, spec, None, tally, alive) for spec in specs)):
        if conn is not None:
            conn.close()
    deadline = time.monotonic() + RECORDS_S
    while proxy.records()["stored"] < tally.sent and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)


async def soak(proxy: Proxy, generator: procs.Server, args: argparse.Namespace) -> dict[str, Any]:
    alive: Callable[[], bool] = lambda: generator.process.poll() is None  # noqa: E731
    warm = Tally()
    await warm_up(proxy, warm, alive)
    started = time.monotonic()
    baseline = await settle(
        proxy, {"tasks": 10**6, "fds": 10**6, "upstream_established": 0}, warm, started
    )
    tally = Tally()
    duration = args.minutes * 60
    deadline = started + duration
    ramp = min(5.0, duration * 0.05)
    series = [await sample(proxy, started, tally) | {"load": True}]

    async def delayed(index: int) -> None:
        await asyncio.sleep(ramp * index / args.streams)
        await client_loop(proxy.server.port, deadline, args.seed * 100_000 + index, tally, alive)

    clients = asyncio.gather(*(delayed(i) for i in range(args.streams)))
    due = started
    while not clients.done():
        due += args.sample_seconds  # on a fixed clock: a slow sample does not shift the next
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(clients), max(0.0, due - time.monotonic()))
        if not clients.done():
            # After the deadline the clients only finish their last request: a drain sample.
            load = time.monotonic() < deadline
            series.append(await sample(proxy, started, tally) | {"load": load})
            print(_progress(series[-1], tally), flush=True)
    await clients
    drained = time.monotonic() - deadline
    end = await settle(proxy, baseline, tally, started)
    probed = Tally()
    probe = await pool_probe(proxy, end["upstream_established"], probed, alive)
    sent = warm.sent + tally.sent + probed.sent
    stored = await records(proxy, sent)
    return {
        "load_seconds": duration,
        "drain_seconds": drained,
        "baseline": baseline,
        "series": series,
        "end": end,
        "probe": probe,
        "records": stored | {"sent": sent},
        "outcomes": {name: tally.classes[name] for name in CLASSES},
        "kinds": dict(tally.kinds),
        "requests": tally.sent,
        "events": tally.events,
        # The warm-up's and the probe's requests are judged too.
        "proxy_errors": warm.proxy_errors + tally.proxy_errors + probed.proxy_errors,
        "client_disconnects": tally.classes["client_disconnect"],
        "error_examples": warm.examples + tally.examples + probed.examples,
    }


def _progress(row: dict[str, Any], tally: Tally) -> str:
    return (
        f"  {row['t_s']:>6.0f} s  requests {tally.sent:>7,}  proxy errors {tally.proxy_errors}  "
        f"RSS {row['rss_mb']:.1f} MB  fds {row['fds']}  upstream {row['upstream_established']}  "
        f"tasks {row['tasks']}  queue {row['queue_depth']}  written {row['records_written']:,}"
    )

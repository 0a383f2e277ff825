"""Scenario: Open WebUI in front of one Ollama: what its polls cost the store.

Open WebUI asks ``/api/tags`` whenever a page or its model selector loads, and the pages
that show the running models ask ``/api/ps``; each of those requests becomes a record,
beside the records of the chats the user came for. This scenario runs the proxy (SQLite
store) in front of the generator upstream (``bench.upstream``) twice, for ``seconds`` each:

- ``chats``: ``streams`` concurrent users, each streaming ``/api/chat`` answers of
  ``tokens`` tokens paced at ``interval_ms`` a token (a model's pace), one after another;
- ``chats+polls``: the same chats, and ``tabs`` open tabs, each asking ``/api/tags`` every
  ``tags_every`` s and ``/api/ps`` every ``ps_every`` s.

Per run: chats completed, records stored per endpoint (read from the store), the store's
size growth, and the proxy's CPU split between its event loop (the main thread) and its
other threads (the analytics writer). Then what the polls add: records and bytes per hour,
and CPU. ``python -m bench.openwebui [--smoke]`` prints it as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import client, procs

HOUR = 3600.0


@dataclass(frozen=True)
class Shape:
    seconds: float = 20.0
    streams: int = 4
    tokens: int = 200
    interval_ms: int = 10
    tabs: int = 5
    tags_every: float = 1.0
    ps_every: float = 5.0


SMOKE = Shape(seconds=2.0, streams=2, tokens=20, interval_ms=5, tabs=2)


def store_size(directory: Path) -> int:
    """The store's bytes once its write-ahead log is folded into the file (the WAL file's
    own size says nothing: it is reused, not grown, between checkpoints)."""
    with sqlite3.connect(directory / "analytics.db") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def stored(directory: Path) -> dict[str, int]:
    with sqlite3.connect(directory / "analytics.db") as db:
        rows = db.execute("SELECT endpoint, count(*) FROM requests GROUP BY endpoint").fetchall()
    return {endpoint: count for endpoint, count in rows}


async def chatting(port: int, shape: Shape, until: float) -> int:
    body = (
        b'{"model":"llama3.2","messages":[{"role":"user","content":"Why is the sky blue?"}],'
        b'"options":{"num_predict":%d},"x_bench_interval_ms":%d}'
        % (shape.tokens, shape.interval_ms)
    )
    head = client.post("/api/chat", body)
    done = 0

    async def user() -> None:
        nonlocal done
        connection = await client.Connection.open(port)
        try:
            while time.perf_counter() < until:
                result = await connection.request(head, body)
                assert result.status == 200, result.status
                done += 1
        finally:
            connection.close()

    await asyncio.gather(*(user() for _ in range(shape.streams)))
    return done


async def polling(port: int, path: str, every: float, until: float) -> int:
    connection = await client.Connection.open(port)
    asked = 0
    try:
        next_at = time.perf_counter()
        while next_at < until:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            result = await connection.request(client.get(path))
            assert result.status == 200, (path, result.status)
            asked += 1
            next_at += every
    finally:
        connection.close()
    return asked


async def load(port: int, shape: Shape, polls: bool) -> dict[str, int]:
    until = time.perf_counter() + shape.seconds
    tasks = [chatting(port, shape, until)]
    if polls:
        for _ in range(shape.tabs):
            tasks.append(polling(port, "/api/tags", shape.tags_every, until))
            tasks.append(polling(port, "/api/ps", shape.ps_every, until))
    counts = await asyncio.gather(*tasks)
    return {"chats": counts[0], "polls": sum(counts[1:])}


def one_run(upstream: str, shape: Shape, polls: bool) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="bench-openwebui-"))
    with procs.our_proxy(upstream, analytics_dir=directory) as proxy:
        pid = proxy.process.pid
        size_before = store_size(directory)
        main_before, other_before = procs.thread_cpu(pid)
        started = time.perf_counter()
        sent = client.run(load(proxy.port, shape, polls))
        # The writer flushes every 0.2 s: wait until every request is a record.
        expected = sent["chats"] + sent["polls"]
        deadline = time.perf_counter() + 30
        while sum(stored(directory).values()) < expected and time.perf_counter() < deadline:
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        main_after, other_after = procs.thread_cpu(pid)
    records = stored(directory)
    grown = store_size(directory) - size_before
    shutil.rmtree(directory, ignore_errors=True)
    return {
        "seconds": seconds,
        **sent,
        "records": records,
        "store_growth_bytes": grown,
        "event_loop_cpu_s": main_after - main_before,
        "other_threads_cpu_s": other_after - other_before,
    }


def run(shape: Shape) -> dict[str, Any]:
    with procs.generator() as upstream:
        quiet = one_run(upstream.url, shape, polls=False)
        busy = one_run(upstream.url, shape, polls=True)
    poll_records = sum(n for e, n in busy["records"].items() if e in ("/api/tags", "/api/ps"))
    extra_bytes = busy["store_growth_bytes"] - quiet["store_growth_bytes"]
    per_second = 1 / shape.seconds
    return {
        "shape": shape.__dict__,
        "chats": quiet,
        "chats+polls": busy,
        "polls_cost": {
            "poll_records_per_hour": poll_records * per_second * HOUR,
            "poll_share_of_records": poll_records / max(1, sum(busy["records"].values())),
            "store_bytes_per_hour": extra_bytes * per_second * HOUR,
            "store_bytes_per_poll_record": extra_bytes / max(1, poll_records),
            "event_loop_cpu_share": (busy["event_loop_cpu_s"] - quiet["event_loop_cpu_s"])
            * per_second,
            "other_threads_cpu_share": (busy["other_threads_cpu_s"] - quiet["other_threads_cpu_s"])
            * per_second,
            # CPU per poll from the runs' difference (its resolution: /proc's 10 ms ticks).
            "event_loop_us_per_poll": 1e6
            * (busy["event_loop_cpu_s"] - quiet["event_loop_cpu_s"])
            / max(1, busy["polls"]),
            "other_threads_us_per_poll": 1e6
            * (busy["other_threads_cpu_s"] - quiet["other_threads_cpu_s"])
            / max(1, busy["polls"]),
        },
    }


def summary(result: dict[str, Any]) -> str:
    cost = result["polls_cost"]
    return (
        f"polls are {cost['poll_share_of_records']:.0%} of the records: "
        f"{cost['poll_records_per_hour']:,.0f} records and "
        f"{cost['store_bytes_per_hour'] / 1e6:,.1f} MB of store an hour "
        f"({cost['store_bytes_per_poll_record']:,.0f} bytes each)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds, for the test")
    parser.add_argument("--seconds", type=float, help="length of each run")
    args = parser.parse_args()
    shape = SMOKE if args.smoke else Shape()
    if args.seconds:
        shape = Shape(**{**shape.__dict__, "seconds": args.seconds})
    print(json.dumps(run(shape), indent=2))


if __name__ == "__main__":
    main()

"""The analytics SQL stores at scale: ``python -m bench.analytics [--records N] [--postgres URL]``.

Loads ``records`` realistic rows (8 models, 4 endpoints, 6 categories, ~20 clients, ~3 %
errors, prompts of 50-500 and responses of 200-2000 characters drawn from a Zipf
vocabulary, timestamps over 7 days with 40 % in the last 24 h) into a fresh SQLite file and,
given ``--postgres`` (an admin URL such as ``postgresql://postgres@127.0.0.1:5432/test``), a
fresh PostgreSQL database that is dropped afterwards. The fill goes through
``SqlStore.write`` in batches of 10,000 (the store's own write path, rollups included).
Then it measures, per store:

- the writer: ``writer_n`` more records (50,000; 1,000 in smoke mode) through the real
  ``AnalyticsWriter`` (default batch size and flush interval) into the loaded store;
- ``SqlStore.search`` latency, p50 and p95 over ``queries`` varied queries (≥ 30) of three
  kinds: ``model_window`` (a model and a 1-24 h window anywhere in the 7 days),
  ``fts_common`` (one or two of the most frequent words), ``fts_rare`` (a word found in one
  record, or a tail word of the vocabulary);
- the same three kinds once more over HTTP (``GET /analytics/search`` through FastAPI's
  TestClient: routing, validation and JSON serialisation included), ``http_*``;
- ``SqlStore.stats`` for the last 24 h and 168 h, p50 of ``stats_runs`` (≥ 5) runs;
- the size on disk: the SQLite file plus its WAL after a checkpoint; PostgreSQL's
  ``pg_total_relation_size`` (table, indexes, TOAST) summed over the schema's tables.

``run()`` returns one flat dict; ``{store}`` is ``sqlite`` or ``postgresql`` (its values are
None when no PostgreSQL URL was given)::

    records, smoke, queries, stats_runs, writer_n        the run's parameters
    {store}_fill_s, {store}_fill_records_per_s           loading the records (informative)
    {store}_writer_records_per_s                         records/s through AnalyticsWriter
    {store}_search_{kind}_p50_ms, ..._p95_ms             kind: model_window, fts_common,
    {store}_http_search_{kind}_p50_ms, ..._p95_ms              fts_rare
    {store}_stats_24h_ms, {store}_stats_168h_ms          p50
    {store}_size_bytes, {store}_size_per_1m_bytes        on disk; scaled to 1,000,000 records
    targets    {metric key: {"target": "≥ 10000" | "≤ 100" ..., "pass": bool | None}}
    all_pass   every target with a value passed

Targets (GitHub issue 8): SQLite writer ≥ 10,000 records/s; every search p95 ≤ 100 ms and
24 h stats ≤ 500 ms on both stores (PostgreSQL's writer and the 168 h stats are reported,
not targeted). Nothing is asserted; the timings of a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.analytics.sql import SearchQuery, SqlStore, create_store_engine, database_url
from app.analytics.writer import AnalyticsMetrics, AnalyticsWriter
from app.api.analytics import create_analytics_router
from app.record import ExchangeRecord, new_record_id

MODELS = (
    "llama3.2:latest",
    "llama3.1:8b",
    "qwen3:latest",
    "qwen2.5-coder:7b",
    "gemma3:4b",
    "mistral:latest",
    "phi4:latest",
    "deepseek-r1:8b",
)
MODEL_WEIGHTS = (30, 10, 20, 12, 10, 8, 5, 5)
ENDPOINTS = ("/api/chat", "/api/generate", "/v1/chat/completions", "/api/embed")
ENDPOINT_WEIGHTS = (50, 25, 20, 5)
CATEGORIES = ("question", "code", "summarise", "translate", "creative", "other")
CLIENTS = tuple(f"10.0.{i // 8}.{10 + i}" for i in range(20))
KINDS = ("model_window", "fts_common", "fts_rare")
DAY = 86400.0
WRITER_TARGET = 10_000.0
SEARCH_TARGET_MS = 100.0
STATS_TARGET_MS = 500.0


class Corpus:
    """Deterministic texts: sentences from a Zipf vocabulary, plus one rare ``refNNNNNN``
    token per record (so some words occur in exactly one record)."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        syllables = [a + b for a in "bcdfgklmnprstvz" for b in "aeiou"]
        words: set[str] = set()
        while len(words) < 20_000:
            words.add("".join(rng.choices(syllables, k=rng.randint(1, 4))))
        self.vocabulary = sorted(words, key=lambda w: (len(w), w))
        weights = [1 / (rank + 1) ** 1.05 for rank in range(len(self.vocabulary))]
        # Summed once: given bare weights, choices() sums all 20,000 on every call.
        cumulative = list(itertools.accumulate(weights))
        self.sentences = [
            " ".join(rng.choices(self.vocabulary, cum_weights=cumulative, k=rng.randint(6, 18)))
            + "."
            for _ in range(30_000)
        ]

    def text(self, rng: random.Random, low: int, high: int) -> str:
        target = rng.randint(low, high)
        parts: list[str] = []
        size = 0
        while size < target:
            sentence = self.sentences[rng.randrange(len(self.sentences))]
            parts.append(sentence)
            size += len(sentence) + 1
        return " ".join(parts)[:target]


# User-Agents, and the client app each is named (app.categories.apps).
APPS = {
    "ollama-python/0.4.7 (x86_64 linux) Python/3.11.7": "ollama-python",
    "OpenAI/Python 1.54.0": "openai-python",
    "curl/8.5.0": "curl",
}


def make_row(corpus: Corpus, rng: random.Random, stamp: float, ref: int) -> dict[str, Any]:
    failed = rng.random() < 0.03
    status = rng.choice((500, 502, 404, 499)) if failed else 200
    duration = math.exp(rng.gauss(0.8, 1.0))
    completion = None if failed else rng.randint(20, 1500)
    ttft = None if failed else min(duration, math.exp(rng.gauss(-1.2, 0.8)))
    return {
        "id": new_record_id(stamp),
        "timestamp": stamp,
        "method": "POST",
        "path": rng.choices(ENDPOINTS, ENDPOINT_WEIGHTS)[0],
        "endpoint": rng.choices(ENDPOINTS, ENDPOINT_WEIGHTS)[0],
        "model": rng.choices(MODELS, MODEL_WEIGHTS)[0],
        "category": CATEGORIES[min(int(rng.expovariate(0.6)), len(CATEGORIES) - 1)],
        "client": CLIENTS[min(int(rng.expovariate(0.25)), len(CLIENTS) - 1)],
        "user_agent": (agent := rng.choice(tuple(APPS))),
        "status": status,
        "streamed": rng.random() < 0.7,
        "prompt": f"ref{ref:06d} " + corpus.text(rng, 50, 500),
        "request_body": "",
        "response": "" if failed else corpus.text(rng, 200, 2000),
        "thinking": "",
        "tool_calls": "",
        "error": "upstream failed" if failed else "",
        "upstream_error": "connect" if status == 502 else None,
        "done_reason": None if failed else "stop",
        "cancelled": status == 499,
        "truncated": False,
        "duration_s": duration,
        "ttft_s": ttft,
        "ollama_total_s": None if failed else duration * 0.95,
        "ollama_load_s": None,
        "ollama_prompt_eval_s": None,
        "ollama_eval_s": None if failed else duration * 0.8,
        "prompt_tokens": None if failed else rng.randint(10, 400),
        "completion_tokens": completion,
        "tokens_per_second": None if completion is None else completion / (duration * 0.8),
        "request_bytes": rng.randint(200, 3000),
        "response_bytes": 0 if failed else rng.randint(500, 20000),
        "client_app": APPS[agent],
        "queue_wait_s": None if failed else duration * 0.05 * rng.random(),
        "max_gap_s": ttft and duration * 0.1 * rng.random(),
        "context_tokens": 4096,
        "truncation": "output" if rng.random() < 0.02 else None,
        # One request in fifty waits for a model load; every model sits on the GPU.
        **_cold(rng.random() < 0.02, failed),
        "node": "bench",
    }


def _cold(cold: bool, failed: bool) -> dict[str, Any]:
    return {
        "cold_cause": "expired" if cold else None,
        "cold_detail": None,
        "placement": None if failed else "gpu",
        "gpu_share": None if failed else 1.0,
        "requests_ahead": 0,
        "diagnosis": "cold start: 3.1 s loading the model, after its keep-alive expired"
        if cold
        else None,
    }


def timestamps(records: int, now: float, seed: int) -> list[float]:
    """7 days, 40 % of them in the last 24 h, ascending."""
    rng = random.Random(seed)
    recent = int(records * 0.4)
    stamps = [now - rng.random() * DAY for _ in range(recent)]
    stamps += [now - DAY - rng.random() * 6 * DAY for _ in range(records - recent)]
    return sorted(stamps)


def batches(
    corpus: Corpus, records: int, now: float, size: int = 10_000
) -> Iterator[list[dict[str, Any]]]:
    rng = random.Random(7)
    batch: list[dict[str, Any]] = []
    for i, stamp in enumerate(timestamps(records, now, seed=11)):
        batch.append(make_row(corpus, rng, stamp, ref=i))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def queries(corpus: Corpus, records: int, now: float, count: int) -> dict[str, list[SearchQuery]]:
    rng = random.Random(3)
    common = corpus.vocabulary[:12]
    tail = corpus.vocabulary[3000:15000]
    out: dict[str, list[SearchQuery]] = {kind: [] for kind in KINDS}
    for i in range(count):
        start = now - rng.uniform(3600, 7 * DAY)
        out["model_window"].append(
            SearchQuery(
                model=rng.choice(MODELS),
                start_time=start,
                end_time=start + rng.uniform(1, 24) * 3600,
            )
        )
        words = rng.sample(common, 1 + i % 2)
        out["fts_common"].append(SearchQuery(prompt_search=" ".join(words)))
        rare = f"ref{rng.randrange(records):06d}" if i % 2 else rng.choice(tail)
        out["fts_rare"].append(SearchQuery(prompt_search=rare))
    return out


def http_params(query: SearchQuery) -> dict[str, str]:
    names = ("model", "prompt_search", "start_time", "end_time")
    return {name: str(getattr(query, name)) for name in names if getattr(query, name) is not None}


def writer_records(corpus: Corpus, count: int, now: float) -> list[ExchangeRecord]:
    rng = random.Random(5)
    out = []
    for i in range(count):
        row = make_row(corpus, rng, now - 3600 + 3600 * i / count, ref=900_000_000 + i)
        out.append(
            ExchangeRecord(
                id=row["id"],
                timestamp=row["timestamp"],
                method="POST",
                path=row["path"],
                endpoint=row["endpoint"],
                operation="chat",
                model=row["model"],
                category=row["category"],
                client=row["client"],
                user_agent=row["user_agent"],
                status=row["status"],
                streamed=row["streamed"],
                prompt=row["prompt"],
                request_body=f'{{"model": "{row["model"]}"}}',
                response=row["response"],
                thinking="",
                error=row["error"] or None,
                upstream_error=row["upstream_error"],
                done_reason=row["done_reason"],
                cancelled=row["cancelled"],
                duration_s=row["duration_s"],
                ttft_s=row["ttft_s"],
                ollama_eval_s=row["ollama_eval_s"],
                prompt_tokens=row["prompt_tokens"],
                completion_tokens=row["completion_tokens"],
                request_bytes=row["request_bytes"],
                response_bytes=row["response_bytes"],
            )
        )
    return out


async def write_through_writer(store: SqlStore, records: list[ExchangeRecord]) -> float:
    """Records/s from the first write until the last record is stored."""
    registry = CollectorRegistry()
    writer = AnalyticsWriter(
        [store],
        metrics=AnalyticsMetrics(registry),
        queue_size=len(records) + 1,
        retention_days=0,
    )
    for record in records:
        writer.finished(record)
    started = time.perf_counter()
    await writer.start()
    name = "ollama_analytics_records_written_total"
    while (  # noqa: ASYNC110 - polling the writer's own counter
        registry.get_sample_value(name, {"backend": store.name}) or 0
    ) < len(records):
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    await writer.stop()
    return len(records) / elapsed


def size_on_disk(store: SqlStore, sqlite_path: Path | None) -> int:
    if sqlite_path is not None:
        with store.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        wal = sqlite_path.with_name(sqlite_path.name + "-wal")
        return sqlite_path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    with store.engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'public' AND c.relkind = 'r'"
                )
            ).scalar_one()
        )


def measure_store(
    prefix: str,
    url: str,
    sqlite_path: Path | None,
    *,
    corpus: Corpus,
    records: int,
    now: float,
    searches: dict[str, list[SearchQuery]],
    stats_runs: int,
    writer_n: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    store = SqlStore(create_store_engine(url))
    store.migrate()
    started = time.perf_counter()
    for number, batch in enumerate(batches(corpus, records, now)):
        store.write(batch)
        if number % 10 == 9:
            log(f"{prefix}: {(number + 1) * len(batch)} records loaded")
    out[f"{prefix}_fill_s"] = time.perf_counter() - started
    out[f"{prefix}_fill_records_per_s"] = records / out[f"{prefix}_fill_s"]
    if store.dialect == "postgresql":
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as raw:
            raw.execute("VACUUM ANALYZE")
    else:
        with store.engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
    log(f"{prefix}: loaded in {out[f'{prefix}_fill_s']:.1f}s; writer")
    out[f"{prefix}_writer_records_per_s"] = asyncio.run(
        write_through_writer(store, writer_records(corpus, writer_n, now))
    )
    log(f"{prefix}: searches")
    for kind, kind_queries in searches.items():
        store.search(kind_queries[0])  # warm the cache once, as a running proxy has it
        times = [timed(lambda q=q: store.search(q)) for q in kind_queries]  # type: ignore[misc]
        out[f"{prefix}_search_{kind}_p50_ms"] = percentile(times, 0.5)
        out[f"{prefix}_search_{kind}_p95_ms"] = percentile(times, 0.95)
    app = FastAPI()
    app.include_router(create_analytics_router(store=store, token=None, backends=(store.name,)))
    with TestClient(app) as client:
        for kind, kind_queries in searches.items():
            times = []
            for q in kind_queries:
                params = http_params(q)
                times.append(
                    timed(
                        lambda p=params: client.get(
                            "/analytics/search", params=p
                        ).raise_for_status()
                    )  # type: ignore[misc]
                )
            out[f"{prefix}_http_search_{kind}_p50_ms"] = percentile(times, 0.5)
            out[f"{prefix}_http_search_{kind}_p95_ms"] = percentile(times, 0.95)
    log(f"{prefix}: stats")
    for hours in (24, 168):
        times = [
            timed(lambda h=hours: store.stats(time.time() - h * 3600))  # type: ignore[misc]
            for _ in range(stats_runs)
        ]
        out[f"{prefix}_stats_{hours}h_ms"] = statistics.median(times)
    out[f"{prefix}_size_bytes"] = size_on_disk(store, sqlite_path)
    out[f"{prefix}_size_per_1m_bytes"] = int(
        out[f"{prefix}_size_bytes"] * 1_000_000 / (records + writer_n)
    )
    store.close()
    return out


def store_keys(prefix: str) -> list[str]:
    keys = [f"{prefix}_fill_s", f"{prefix}_fill_records_per_s", f"{prefix}_writer_records_per_s"]
    for kind in KINDS:
        for via in ("search", "http_search"):
            keys += [f"{prefix}_{via}_{kind}_p50_ms", f"{prefix}_{via}_{kind}_p95_ms"]
    keys += [f"{prefix}_stats_24h_ms", f"{prefix}_stats_168h_ms"]
    return [*keys, f"{prefix}_size_bytes", f"{prefix}_size_per_1m_bytes"]


def judge(result: dict[str, Any]) -> dict[str, Any]:
    rules: list[tuple[str, str, float]] = [("sqlite_writer_records_per_s", "≥", WRITER_TARGET)]
    for prefix in ("sqlite", "postgresql"):
        for kind in KINDS:
            rules.append((f"{prefix}_search_{kind}_p95_ms", "≤", SEARCH_TARGET_MS))
        rules.append((f"{prefix}_stats_24h_ms", "≤", STATS_TARGET_MS))
    targets: dict[str, Any] = {}
    for key, op, limit in rules:
        value = result.get(key)
        passed = None if value is None else (value >= limit if op == "≥" else value <= limit)
        targets[key] = {"target": f"{op} {limit:g}", "pass": passed}
    return targets


def run(
    *,
    records: int = 1_000_000,
    postgres_url: str | None,
    smoke: bool = False,
    directory: Path | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Load, measure and judge; see the module docstring for the keys. The SQLite file goes
    into a fresh temporary folder inside ``directory`` (default: the system's)."""
    if smoke:
        records = min(records, 2_000)
    count = 30
    stats_runs = 5
    writer_n = 1_000 if smoke else 50_000
    now = time.time()
    corpus = Corpus(seed=1)
    searches = queries(corpus, records, now, count)
    result: dict[str, Any] = {
        "records": records,
        "smoke": smoke,
        "queries": count,
        "stats_runs": stats_runs,
        "writer_n": writer_n,
    }
    for key in store_keys("sqlite") + store_keys("postgresql"):
        result[key] = None
    common = dict(
        corpus=corpus,
        records=records,
        now=now,
        searches=searches,
        stats_runs=stats_runs,
        writer_n=writer_n,
        log=log,
    )
    with tempfile.TemporaryDirectory(prefix="bench-analytics-", dir=directory) as folder:
        url = database_url(None, Path(folder))
        path = Path(folder) / "analytics.db"
        result.update(measure_store("sqlite", url, path, **common))  # type: ignore[arg-type]
    if postgres_url:
        admin = make_url(postgres_url).set(drivername="postgresql")
        name = f"om_bench_{os.getpid()}_{secrets.token_hex(4)}"
        admin_dsn = admin.render_as_string(hide_password=False)
        with psycopg.connect(admin_dsn, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        try:
            url = database_url(
                admin.set(database=name).render_as_string(hide_password=False), Path(".")
            )
            result.update(measure_store("postgresql", url, None, **common))  # type: ignore[arg-type]
        finally:
            with psycopg.connect(admin_dsn, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    result["targets"] = judge(result)
    verdicts = [t["pass"] for t in result["targets"].values() if t["pass"] is not None]
    result["all_pass"] = all(verdicts)
    return result


def table(result: dict[str, Any]) -> str:
    lines = [f"analytics stores, {result['records']:,} records", ""]
    rows = [key[len("sqlite_") :] for key in store_keys("sqlite")]
    lines.append(f"{'metric':36} {'sqlite':>14} {'postgresql':>14}  target")
    for row in rows:
        cells = []
        for prefix in ("sqlite", "postgresql"):
            value = result.get(f"{prefix}_{row}")
            cells.append("-" if value is None else f"{value:,.1f}")
        verdicts = [
            f"{result['targets'][f'{p}_{row}']['target']} "
            + {True: "PASS", False: "FAIL", None: "-"}[result["targets"][f"{p}_{row}"]["pass"]]
            for p in ("sqlite", "postgresql")
            if f"{p}_{row}" in result["targets"]
        ]
        lines.append(f"{row:36} {cells[0]:>14} {cells[1]:>14}  {' / '.join(verdicts)}")
    lines.append("")
    lines.append("all targets pass" if result["all_pass"] else "some targets FAIL")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--postgres", metavar="URL", help="admin URL of a PostgreSQL server")
    parser.add_argument("--smoke", action="store_true", help="2,000 records, seconds")
    parser.add_argument("--dir", type=Path, help="where the SQLite file goes (default: /tmp)")
    args = parser.parse_args()
    result = run(
        records=args.records,
        postgres_url=args.postgres,
        smoke=args.smoke,
        directory=args.dir,
        log=lambda message: print(message, flush=True),
    )
    print(table(result))


if __name__ == "__main__":
    main()

"""Scenario 2, the streaming relay: 1, 64 and 256 concurrent streams of N tokens, native
NDJSON (``POST /api/generate``) and OpenAI SSE (``POST /v1/chat/completions``, ``"stream":
true`` without ``include_usage``), from the generator upstream.

Per way: chunks (NDJSON lines / SSE events) received per second of wall time; time to first
token p50/p99 (request written → first body bytes, the upstream sending the first token
with its headers); CPU seconds of the process the client talks to, per 1,000 chunks, and
chunks per CPU-second (the relay rate on one core); responses with a wrong status or
count; for SSE, how many usage chunks reached the client (the proxy injects
``include_usage`` upstream and must strip that chunk again).
"""

from __future__ import annotations

import contextlib
import statistics
from typing import Any

from bench import client, litellm, procs
from bench.plan import Plan

FORMATS = ("ndjson", "sse")
MIN_CPU = 0.05


def payload(
    fmt: str, tokens: int, burst: int, interval_ms: int = 0
) -> tuple[bytes, bytes, bytes, int]:
    """(request head, body, marker, chunks expected per stream)."""
    knobs = b'"x_bench_burst":%d,"x_bench_interval_ms":%d}' % (burst, interval_ms)
    if fmt == "ndjson":
        body = b'{"model":"llama3.2","prompt":"Why is the sky blue?","options":'
        body += b'{"num_predict":%d},' % tokens + knobs
        return client.post("/api/generate", body), body, b"\n", tokens + 1
    body = b'{"model":"llama3.2","messages":[{"role":"user","content":"Why is the sky blue?"}],'
    body += b'"stream":true,"max_tokens":%d,' % tokens + knobs
    return client.post("/v1/chat/completions", body), body, b"\n\n", tokens + 2


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run(plan: Plan, log: Any, *, with_litellm: bool) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(procs.generator())
        ways: dict[str, procs.Server | str] = {
            "direct": upstream,
            "proxy": stack.enter_context(procs.our_proxy(upstream.url)),
            "nginx": stack.enter_context(procs.nginx_proxy(upstream.url)),
        }
        if with_litellm:
            try:
                ways["litellm"] = stack.enter_context(litellm.server(upstream.url, log))
            except litellm.NotMeasured as exc:
                ways["litellm"] = f"not measured: {exc}"
        for fmt in FORMATS:
            for concurrency, total in plan.streams.items():
                key = f"stream.{fmt}.c{concurrency}"
                results[key] = {"kind": "stream", "format": fmt, "concurrency": concurrency}
                results[key] |= {"streams": total, "tokens": plan.tokens}
                results[key]["lines_per_write"] = plan.burst.get(concurrency, 1)
                for way, server in ways.items():
                    if way == "litellm" and fmt != "sse":
                        continue
                    if isinstance(server, str):
                        results[key][way] = server
                        continue
                    count = total
                    if way == "litellm":
                        count = plan.litellm_streams.get(concurrency, 0)
                        if not count:
                            results[key][way] = (
                                f"not measured: {total} streams of {plan.tokens} tokens take "
                                "too long at LiteLLM's rate (see c64)"
                            )
                            continue
                    entry = measure(plan, server, upstream, fmt, concurrency, count, way=way)
                    results[key][way] = entry
                    log(key, way, entry)
                add_differences(results[key])
            # Paced: lines a model's pace apart, so the relay handles one line per read.
            key = f"stream.{fmt}.paced"
            results[key] = {"kind": "stream", "format": fmt, "paced": True}
            results[key] |= {"concurrency": plan.paced_streams, "streams": plan.paced_streams}
            results[key] |= {"tokens": plan.paced_tokens, "interval_ms": plan.paced_interval_ms}
            for way in ("direct", "proxy", "nginx"):
                server = ways[way]
                assert not isinstance(server, str)
                entry = measure(
                    plan,
                    server,
                    upstream,
                    fmt,
                    plan.paced_streams,
                    plan.paced_streams,
                    way=way,
                    tokens=plan.paced_tokens,
                    interval_ms=plan.paced_interval_ms,
                )
                results[key][way] = entry
                log(key, way, entry)
            add_differences(results[key])
    return results


def measure(
    plan: Plan,
    server: procs.Server,
    upstream: procs.Server,
    fmt: str,
    concurrency: int,
    total: int,
    *,
    way: str,
    tokens: int | None = None,
    interval_ms: int = 0,
) -> dict[str, Any]:
    head, body, marker, expected = payload(
        fmt, tokens or plan.tokens, plan.burst.get(concurrency, 1), interval_ms
    )
    watch = b'"usage"' if fmt == "sse" else None

    async def go() -> client.Batch:
        if not plan.smoke:
            warm = 1 if way == "litellm" else 8
            await client.many(
                server.port, head, body, concurrency=min(concurrency, warm), total=warm
            )
        server.refresh()
        return await client.many(
            server.port,
            head,
            body,
            concurrency=concurrency,
            total=total,
            marker=marker,
            watch=watch,
        )

    cpu, upstream_cpu = server.cpu(), upstream.cpu()
    batch: client.Batch = client.run(go())
    cpu, upstream_cpu = server.cpu() - cpu, upstream.cpu() - upstream_cpu
    chunks = sum(result.events for result in batch.results)
    pieces = sum(result.pieces for result in batch.results)
    ttfts = [result.ttft * 1e3 for result in batch.results]
    # LiteLLM re-renders the stream, so only its status is checked.
    wrong = [
        r for r in batch.results if r.status != 200 or (way != "litellm" and r.events != expected)
    ]
    return {
        "streams": len(batch.results),
        "chunks": chunks,
        "seconds": batch.seconds,
        "chunks_per_s": chunks / batch.seconds,
        "ttft_p50_ms": percentile(ttfts, 0.50),
        "ttft_p99_ms": percentile(ttfts, 0.99),
        "ttft_mean_ms": statistics.fmean(ttfts),
        "cpu_s": cpu,
        # None when the run was too short for /proc's 10 ms ticks.
        "cpu_s_per_1k_chunks": cpu / chunks * 1000 if chunks and cpu >= MIN_CPU else None,
        "chunks_per_cpu_s": chunks / cpu if cpu >= MIN_CPU else None,
        "upstream_cpu_s": upstream_cpu,
        "chunks_per_piece": chunks / pieces if pieces else 0.0,
        "errors": len(wrong),
        "usage_chunks_seen": sum(result.watched for result in batch.results) if watch else 0,
    }


def add_differences(result: dict[str, Any]) -> None:
    direct = result["direct"]
    for way in ("proxy", "nginx", "litellm"):
        entry = result.get(way)
        if not isinstance(entry, dict):
            continue
        entry["added_ttft_p50_ms"] = entry["ttft_p50_ms"] - direct["ttft_p50_ms"]
        entry["added_ttft_p99_ms"] = entry["ttft_p99_ms"] - direct["ttft_p99_ms"]
        entry["chunks_per_s_ratio_to_direct"] = entry["chunks_per_s"] / direct["chunks_per_s"]

"""Scenario 1, small requests: ``GET /api/tags`` and non-streamed ``POST /api/generate``
at concurrency 1 and 64, with wrk, against the static nginx upstream.

Per way: requests/s, latency p50/p99 (wrk ``--latency``), and the CPU seconds the process
the client talks to used per request (``/proc/PID/stat`` utime+stime before and after).
Added latency = proxied percentile − direct percentile of the same run.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from bench import procs, wrk
from bench.plan import Plan

CASES = (("tags", "/api/tags", False), ("generate", "/api/generate", True))
CONCURRENCY = (1, 64)


def run(plan: Plan, log: Any) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(procs.static_upstream())
        ways = {
            "direct": upstream,
            "proxy": stack.enter_context(procs.our_proxy(upstream.url)),
            "nginx": stack.enter_context(procs.nginx_proxy(upstream.url)),
        }
        for name, path, post in CASES:
            for connections in CONCURRENCY:
                key = f"small.{name}.c{connections}"
                results[key] = {"kind": "small", "path": path, "concurrency": connections}
                for way, server in ways.items():
                    results[key][way] = measure(
                        plan, server, upstream, path, connections, post=post
                    )
                    log(key, way, results[key][way])
                add_differences(results[key])
    return results


def measure(
    plan: Plan,
    server: procs.Server,
    upstream: procs.Server,
    path: str,
    connections: int,
    *,
    post: bool,
) -> dict[str, Any]:
    url = server.url + path
    if plan.warmup_seconds:
        wrk.run(url, connections=connections, seconds=plan.warmup_seconds, post=post)
    server.refresh()
    upstream.refresh()
    cpu, upstream_cpu = server.cpu(), upstream.cpu()
    started = time.perf_counter()
    found = wrk.run(url, connections=connections, seconds=plan.wrk_seconds, post=post)
    seconds = time.perf_counter() - started
    cpu, upstream_cpu = server.cpu() - cpu, upstream.cpu() - upstream_cpu
    return {
        "requests": found.requests,
        "rps": found.rps,
        "p50_ms": found.p50_ms,
        "p99_ms": found.p99_ms,
        "errors": found.errors,
        "seconds": seconds,
        "cpu_s": cpu,
        "cpu_us_per_request": cpu / max(found.requests, 1) * 1e6,
        "upstream_cpu_s": upstream_cpu,
    }


def add_differences(result: dict[str, Any]) -> None:
    direct = result["direct"]
    for way in ("proxy", "nginx"):
        entry = result.get(way)
        if not isinstance(entry, dict) or "rps" not in entry:
            continue
        entry["added_p50_ms"] = entry["p50_ms"] - direct["p50_ms"]
        entry["added_p99_ms"] = entry["p99_ms"] - direct["p99_ms"]
        entry["rps_ratio_to_direct"] = entry["rps"] / direct["rps"] if direct["rps"] else 0.0

"""The issue's targets, judged against a run's results, and the upstream check.

Each target has an id (the heading of its note in ``bench/notes.md``), what is compared,
the limit, the measured value and PASS/FAIL; a target whose scenario did not run, or whose
numbers come from a module that does not exist yet, has ``pass: None`` and a status.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

UPSTREAM_FACTOR = 5.0
PACED_DELIVERED = 0.9  # a paced run is valid when direct delivers this share of the offer


def describe_gap(measured: float, limit: float, goal: str, unit: str) -> str:
    gap = f"measured {measured:,.3g} {unit} against {goal}: off by {abs(measured - limit):,.3g}"
    gap += f" {unit}"
    if limit > 0 and measured > 0:
        gap += f" ({max(measured, limit) / min(measured, limit):.1f}×)"
    return gap


def _target(
    tid: str,
    what: str,
    goal: str,
    measured: float | None,
    unit: str,
    ok: Callable[[float], bool],
    limit: float,
) -> dict[str, Any]:
    if measured is None:
        return {
            "id": tid,
            "what": what,
            "goal": goal,
            "measured": None,
            "unit": unit,
            "pass": None,
            "status": "not measured (not run, or too short for /proc's 10 ms CPU ticks)",
            "gap": None,
        }
    passed = bool(ok(measured))
    gap = None if passed else describe_gap(measured, limit, goal, unit)
    return {
        "id": tid,
        "what": what,
        "goal": goal,
        "measured": measured,
        "unit": unit,
        "pass": passed,
        "status": "measured",
        "gap": gap,
    }


def _get(scenarios: dict[str, Any], key: str, way: str, field: str) -> float | None:
    entry = scenarios.get(key, {}).get(way)
    if not isinstance(entry, dict) or entry.get(field) is None:
        return None
    return float(entry[field])


DIAGNOSTICS_LIMIT_US = 5.0
# Issue 19: the added latency at c=1, the CPU of a small request at c=64 (analytics on), and
# the proxy's memory when it starts.
ADDED_P50_LIMIT_MS = 0.2
CPU_LIMIT_US = 120.0
RSS_START_LIMIT_MB = 70.0


def judge(
    scenarios: dict[str, Any],
    analytics: dict[str, Any] | None,
    micro: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for case in ("tags", "generate"):
        added = _get(scenarios, f"small.{case}.c1", "proxy", "added_p50_ms")
        found.append(
            _target(
                f"latency-{case}",
                f"small.{case}.c1: added latency p50 (proxy − direct)",
                f"≤ {ADDED_P50_LIMIT_MS:g} ms",
                added,
                "ms",
                lambda v: v <= ADDED_P50_LIMIT_MS,
                ADDED_P50_LIMIT_MS,
            )
        )
        cpu = _get(scenarios, f"small.{case}.c64", "proxy", "cpu_us_per_request")
        nginx_cpu = _get(scenarios, f"small.{case}.c64", "nginx", "cpu_us_per_request")
        beside = "" if nginx_cpu is None else f" (nginx: {nginx_cpu:.0f} µs in the same run)"
        found.append(
            _target(
                f"cpu-{case}",
                f"small.{case}.c64: proxy CPU per request, analytics on{beside}",
                f"≤ {CPU_LIMIT_US:g} µs",
                cpu,
                "µs",
                lambda v: v <= CPU_LIMIT_US,
                CPU_LIMIT_US,
            )
        )
        proxy = _get(scenarios, f"small.{case}.c64", "proxy", "rps")
        nginx = _get(scenarios, f"small.{case}.c64", "nginx", "rps")
        share = proxy / nginx * 100 if proxy is not None and nginx else None
        found.append(
            _target(
                f"throughput-{case}",
                f"small.{case}.c64: proxy req/s as % of nginx's",
                "≥ 20 %",
                share,
                "%",
                lambda v: v >= 20,
                20,
            )
        )
    for fmt in ("ndjson", "sse"):
        for concurrency in (1, 64, 256):
            key = f"stream.{fmt}.c{concurrency}"
            rate = _get(scenarios, key, "proxy", "chunks_per_cpu_s")
            found.append(
                _target(
                    f"relay-{fmt}-c{concurrency}",
                    f"{key}: chunks per proxy-CPU-second",
                    "≥ 20,000 chunks/s",
                    rate,
                    "chunks/s",
                    lambda v: v >= 20_000,
                    20_000,
                )
            )
        paced = f"stream.{fmt}.paced"
        found.append(
            _target(
                f"relay-{fmt}-paced",
                f"{paced}: chunks per proxy-CPU-second, one line per read (model pace)",
                "≥ 20,000 chunks/s",
                _get(scenarios, paced, "proxy", "chunks_per_cpu_s"),
                "chunks/s",
                lambda v: v >= 20_000,
                20_000,
            )
        )
        added = _get(scenarios, f"stream.{fmt}.c1", "proxy", "added_ttft_p50_ms")
        found.append(
            _target(
                f"ttft-{fmt}",
                f"stream.{fmt}.c1: added time to first token p50",
                "≤ 0.5 ms",
                added,
                "ms",
                lambda v: v <= 0.5,
                0.5,
            )
        )
    leaks = [
        _get(scenarios, f"stream.sse.c{c}", "proxy", "usage_chunks_seen") for c in (1, 64, 256)
    ]
    seen = None if all(v is None for v in leaks) else sum(v or 0 for v in leaks)
    found.append(
        _target(
            "usage-stripped",
            "stream.sse.*: injected usage chunks the client received",
            "= 0",
            seen,
            "chunks",
            lambda v: v == 0,
            0,
        )
    )
    for kind in ("stream", "upload"):
        growth = _get(scenarios, f"memory.{kind}", "proxy", "growth_mb")
        found.append(
            _target(
                f"memory-{kind}",
                f"memory.{kind}: proxy RSS growth over the transfer",
                "< 30 MB",
                growth,
                "MB",
                lambda v: v < 30,
                30,
            )
        )
    slope = _get(scenarios, "memory.series", "proxy", "slope_mb_per_100k")
    found.append(
        _target(
            "memory-series",
            "memory.series: proxy RSS trend (least squares)",
            "< 2 MB per 100k requests",
            slope,
            "MB/100k",
            lambda v: v < 2,
            2,
        )
    )
    found.append(
        _target(
            "rss-start",
            "memory.series: proxy RSS once it is ready, before its first request (a new store)",
            f"≤ {RSS_START_LIMIT_MB:g} MB",
            _get(scenarios, "memory.series", "proxy", "rss_ready_mb"),
            "MB",
            lambda v: v <= RSS_START_LIMIT_MB,
            RSS_START_LIMIT_MB,
        )
    )
    diagnostics = (micro or {}).get("diagnostics") or {}
    added = diagnostics.get("added_us")
    found.append(
        _target(
            "diagnostics-cost",
            "bench.diagnostics: what queue wait, stalls, client app, context, cold starts, "
            "placement and the diagnosis add per request",
            f"≤ {DIAGNOSTICS_LIMIT_US:g} µs",
            None if added is None else float(added),
            "µs",
            lambda v: v <= DIAGNOSTICS_LIMIT_US,
            DIAGNOSTICS_LIMIT_US,
        )
    )
    found.extend(analytics_targets(analytics))
    return found


ANALYTICS_GOALS = (
    ("analytics-sqlite_writer_records_per_s", "SQLite writer", "≥ 10000 records/s"),
    ("analytics-search_p95_ms", "search p95 at 1M records", "≤ 100 ms"),
    ("analytics-sqlite_stats_24h_ms", "stats hours=24 at 1M records", "≤ 500 ms"),
)


def analytics_targets(analytics: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The targets ``bench.analytics`` reports (``{metric: {"target": "≥ 10000", "pass":
    bool | None}}``, the metric's value under the same key), else the three pending."""
    status = "not run" if analytics is None else str(analytics.get("status", "pending"))
    reported = (analytics or {}).get("result")
    items = reported.get("targets") if isinstance(reported, dict) else None
    if status == "measured" and isinstance(items, dict) and items:
        assert isinstance(reported, dict)
        return [_analytics(key, item, reported.get(key)) for key, item in items.items()]
    if status == "measured":
        status = "measured, but bench.analytics reported no targets"
    return [
        {
            "id": tid,
            "what": f"analytics: {what}",
            "goal": goal,
            "measured": None,
            "unit": "",
            "pass": None,
            "status": status,
            "gap": None,
        }
        for tid, what, goal in ANALYTICS_GOALS
    ]


def _analytics(key: str, item: dict[str, Any], value: Any) -> dict[str, Any]:
    unit = "ms" if key.endswith("_ms") else "records/s" if key.endswith("_per_s") else ""
    goal = f"{item.get('target', '')} {unit}".strip()
    passed = item.get("pass")
    entry = {
        "id": f"analytics-{key}",
        "what": f"analytics: {key}",
        "goal": goal,
        "measured": value,
        "unit": unit,
        "pass": passed,
        "gap": None,
        "status": "measured" if passed is not None else "no value",
    }
    if passed is False and isinstance(value, int | float):
        limit = float(str(item.get("target", "0")).split()[-1])
        entry["gap"] = describe_gap(float(value), limit, goal, unit)
    return entry


def upstream_check(scenarios: dict[str, Any]) -> list[dict[str, Any]]:
    """Whether the upstream, not the path under test, set the pace, per small and stream
    scenario. Flat out: the proxied run's wall time over the upstream's CPU time in that
    run must be ≥ 5 (an upstream busy ≤ 20 % of one core could have served ≥ 5× as much).
    Paced (the upstream waits between lines on purpose, so its timers cost CPU however
    fast it is): the direct run must deliver ≥ 90 % of the offered rate (streams × one
    line per interval). Direct ÷ proxied throughput is there for information."""
    checks = []
    for key, entry in scenarios.items():
        field = {"small": "rps", "stream": "chunks_per_s"}.get(entry.get("kind", ""))
        proxy = entry.get("proxy")
        if field is None or not isinstance(proxy, dict):
            continue
        busy = proxy["upstream_cpu_s"] / proxy["seconds"] if proxy["seconds"] else 0.0
        direct = _get(scenarios, key, "direct", field)
        check = {
            "scenario": key,
            "field": field,
            "direct": direct,
            "proxy": proxy[field],
            "throughput_ratio": direct / proxy[field] if direct and proxy[field] else None,
            "upstream_busy": busy,
        }
        if entry.get("paced"):
            offered = entry["streams"] * 1000 / entry["interval_ms"]
            delivered = (direct or 0.0) / offered
            check |= {"rule": "paced", "offered": offered, "delivered": delivered}
            check |= {"ratio": delivered, "ok": delivered >= PACED_DELIVERED}
        else:
            factor = 1 / busy if busy else float("inf")
            check |= {"rule": "speed-up", "ratio": min(factor, 999.0)}
            check["ok"] = factor >= UPSTREAM_FACTOR
        checks.append(check)
    return checks

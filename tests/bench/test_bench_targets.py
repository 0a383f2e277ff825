"""The bench's validity check: the upstream, not the path under test, must set the pace."""

from __future__ import annotations

from typing import Any

from bench.memory import slope_per_100k
from bench.targets import upstream_check


def _run(rate: float, seconds: float, upstream_cpu_s: float) -> dict[str, float]:
    return {"chunks_per_s": rate, "seconds": seconds, "upstream_cpu_s": upstream_cpu_s}


def _scenario(direct: float, proxy_busy: float, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "stream",
        "direct": _run(direct, 10.0, 1.0),
        "proxy": _run(direct / 2, 10.0, 10.0 * proxy_busy),
        **extra,
    }


def test_flat_out_runs_need_an_upstream_five_times_faster() -> None:
    checks = upstream_check(
        {"stream.ndjson.c1": _scenario(1e6, 0.19), "stream.ndjson.c256": _scenario(1e6, 0.25)}
    )
    verdicts = {check["scenario"]: (check["rule"], check["ok"]) for check in checks}
    assert verdicts == {
        "stream.ndjson.c1": ("speed-up", True),
        "stream.ndjson.c256": ("speed-up", False),
    }
    assert abs(checks[1]["ratio"] - 4.0) < 1e-9


def test_paced_runs_are_judged_by_the_rate_direct_delivers_not_by_upstream_cpu() -> None:
    paced = {"paced": True, "streams": 256, "interval_ms": 10}  # offers 25,600 lines/s
    checks = upstream_check(
        {
            # a busy upstream (its timers) that still delivers what it offers is fine
            "stream.ndjson.paced": _scenario(24_400.0, 0.29, **paced),
            # one that falls behind its own pace is the bottleneck
            "stream.sse.paced": _scenario(20_000.0, 0.05, **paced),
        }
    )
    first, second = checks
    assert (first["rule"], first["ok"], first["offered"]) == ("paced", True, 25_600.0)
    assert abs(first["delivered"] - 24_400 / 25_600) < 1e-9
    assert (second["rule"], second["ok"]) == ("paced", False)


def test_scenarios_without_a_proxy_run_are_not_checked() -> None:
    assert upstream_check({"memory.series": {"kind": "series"}, "x": {"kind": "stream"}}) == []


def test_the_memory_trend_leaves_out_the_warm_up_but_sees_a_leak() -> None:
    # Measured shape: +19 MB in the first 20k requests, then flat.
    settled = [(0, 88.6), (10_000, 102.1), (20_000, 107.5)]
    settled += [(n, 107.5 + n * 1e-6) for n in range(30_000, 100_001, 10_000)]
    assert slope_per_100k(settled) < 0.5
    # A leak of 100 bytes per request keeps rising after the warm-up: ~9.5 MB per 100k.
    leaking = [(n, 90.0 + n * 100 / 2**20) for n in range(0, 100_001, 10_000)]
    assert 9 < slope_per_100k(leaking) < 11
    assert slope_per_100k([]) == 0.0
    assert slope_per_100k([(0, 1.0)]) == 0.0

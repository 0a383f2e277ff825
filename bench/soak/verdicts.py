"""The verdicts: trends over the series (the rule of ``bench.memory``) and the checks."""

from __future__ import annotations

from typing import Any

from bench import memory

TASK_SLACK = 2  # tasks the settled proxy may have above its baseline
FD_SLACK = 5  # fds not held by an idle upstream connection, above the baseline
# Trend limits (least squares after the warm-up, see trend()): per 100,000 requests.
RSS_LIMIT_MB = 2.0  # the memory-series target of python -m bench
OTHER_FDS_LIMIT = 100.0  # one fd leaked per 1,000 requests would be 100


def trend(series: list[dict[str, Any]], key: str) -> float:
    """``key``'s least-squares slope per 100,000 requests after the warm-up: the rule of
    ``bench.memory.slope_per_100k`` (the samples taken once the first 20 % of the requests
    were sent are fitted; allocator arenas, SQLite's page cache, the connection pools and
    the metric children settle before that, while a leak goes on rising). Only samples taken
    under full load count: not those of the drain after the deadline."""
    loaded = [row for row in series if row.get("load", True) and row.get(key) is not None]
    return memory.slope_per_100k([(row["requests"], float(row[key])) for row in loaded])


def fitted_rows(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples ``trend`` fits: under load, after the warm-up."""
    loaded = [row for row in series if row.get("load", True)]
    last = loaded[-1]["requests"] if loaded else 0
    return [row for row in loaded if row["requests"] >= memory.WARM_UP * last] or loaded


def judge(result: dict[str, Any], streams: int) -> list[dict[str, Any]]:
    series, baseline, end = result["series"], result["baseline"], result["end"]
    records, probe = result["records"], result["probe"]
    rss, other_fds, tasks = (trend(series, key) for key in ("rss_mb", "other_fds", "tasks"))
    fitted = fitted_rows(series)
    peak_upstream = max(row["upstream_established"] for row in series)
    # A dropped stream's upstream connection may still be closing when its client's next
    # request takes a new one; a leak grows past this.
    closing = max(2, streams // 20)
    held = end["fds"] - end["upstream_established"]
    held_before = baseline["fds"] - baseline["upstream_established"]

    def verdict(name: str, ok: bool | None, measured: str, goal: str) -> dict[str, Any]:
        return {"check": name, "pass": ok, "measured": measured, "goal": goal}

    return [
        verdict(
            "proxy-caused errors", result["proxy_errors"] == 0, str(result["proxy_errors"]), "0"
        ),
        verdict(
            "RSS trend",
            rss < RSS_LIMIT_MB,
            f"{rss:+.2f} MB/100k req ({fitted[0]['rss_mb']:.1f} → {fitted[-1]['rss_mb']:.1f} MB "
            f"from request {fitted[0]['requests']:,} to {fitted[-1]['requests']:,})",
            f"< {RSS_LIMIT_MB} MB/100k req",
        ),
        verdict(
            "fds trend (not live connections)",
            other_fds < OTHER_FDS_LIMIT,
            f"{other_fds:+.1f} fds/100k req",
            f"< {OTHER_FDS_LIMIT:.0f} fds/100k req",
        ),
        verdict(
            # Tasks move with the requests in flight; the settled count below is the test.
            "tasks trend (information)",
            None,
            f"{tasks:+.1f} tasks/100k req",
            "–",
        ),
        verdict(
            "fds after the load, less idle pool",
            held <= held_before + FD_SLACK,
            f"{held} (baseline {held_before})",
            f"≤ baseline + {FD_SLACK}",
        ),
        verdict(
            "tasks after the load",
            end["tasks"] is not None and end["tasks"] <= baseline["tasks"] + TASK_SLACK,
            f"{end['tasks']} (baseline {baseline['tasks']})",
            f"≤ baseline + {TASK_SLACK}",
        ),
        verdict(
            "upstream connections under load",
            peak_upstream <= streams + closing,
            f"peak {peak_upstream}",
            f"≤ {streams + closing} (one per client, a few closing)",
        ),
        verdict(
            "upstream sockets not established, after",
            end["upstream_other"] == 0 and end["in_flight"] == 0,
            f"{end['upstream_other']} (in flight {end['in_flight']})",
            "0 (no CLOSE_WAIT, nothing in flight)",
        ),
        verdict(
            "idle pool reused",
            probe["upstream_peak"] <= end["upstream_established"]
            and probe["ok"] == probe["streams"],
            f"{probe['ok']} of {probe['streams']} streams ok, peak {probe['upstream_peak']} "
            "connections",
            f"≤ {end['upstream_established']} (the idle pool)",
        ),
        verdict(
            "records stored = requests sent",
            records["stored"] == records["sent"] and records["dropped"] == 0,
            f"{records['stored']:,} of {records['sent']:,}, dropped {records['dropped']}",
            "equal, 0 dropped",
        ),
        verdict(
            "cancelled records = client disconnects",
            records["cancelled"] == result["client_disconnects"],
            f"{records['cancelled']:,} of {result['client_disconnects']:,}",
            "equal",
        ),
    ]


def passes(verdicts: list[dict[str, Any]]) -> bool:
    """Every judged check passed (``pass`` None is information only)."""
    return all(check["pass"] is not False for check in verdicts)

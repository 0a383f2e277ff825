"""The report: the markdown page, the JSON results and the console summary."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench.soak.clients import CUT_SHARE, INTERVAL_MS, NOT_STREAMED_SHARE, STALL_S, THINK_S, TOKENS
from bench.soak.run import SETTLE_S
from bench.soak.verdicts import FD_SLACK, OTHER_FDS_LIMIT, RSS_LIMIT_MB, TASK_SLACK, passes

SERIES_COLUMNS = (
    "t_s",
    "requests",
    "rss_mb",
    "rss_anon_mb",
    "fds",
    "other_fds",
    "tasks",
    "client_established",
    "upstream_established",
    "upstream_other",
    "in_flight",
    "queue_depth",
    "records_written",
    "dropped",
    "threads",
)


def render(data: dict[str, Any]) -> str:
    meta, info, result = data["meta"], data["machine"], data["result"]
    passed = passes(data["verdicts"])
    lines = [
        "# Load and soak",
        "",
        f"`{meta['command']}` — {meta['streams']} concurrent streaming clients for "
        f"{meta['minutes']:g} min (the last answers {result['drain_seconds']:.1f} s later), "
        f"{'**all checks pass**' if passed else '**SOME CHECKS FAIL**'}.",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, kernel {info['kernel']}, Python "
        f"{info['python']}, commit {info['commit']}, {info['date']}, load average at start "
        f"{info['load_average_at_start']}.",
        "",
        "## Verdicts",
        "",
        "| check | measured | goal | verdict |",
        "|---|---|---|---|",
        *(
            f"| {c['check']} | {c['measured']} | {c['goal']} | {_pass(c['pass'])} |"
            for c in data["verdicts"]
        ),
        "",
        "## Requests",
        "",
        f"{result['requests']:,} requests in the load ({result['events']:,} stream lines/events "
        f"received), {result['requests'] / result['load_seconds']:.1f} per second. Proxy-caused "
        "errors in full (the first 20) are in the JSON (`result.error_examples`).",
        "",
        "| outcome | count |",
        "|---|---|",
        *(f"| {name} | {count:,} |" for name, count in result["outcomes"].items()),
        "",
        "| request | count |",
        "|---|---|",
        *(f"| `{kind}` | {count:,} |" for kind, count in sorted(result["kinds"].items())),
        "",
        "## Before, after and the pool probe",
        "",
        "| | " + " | ".join(SERIES_COLUMNS[2:]) + " |",
        "|---|" + "---|" * len(SERIES_COLUMNS[2:]),
        *(
            f"| {label} | " + " | ".join(_cell(row.get(key)) for key in SERIES_COLUMNS[2:]) + " |"
            for label, row in (
                ("baseline (idle, warm)", result["baseline"]),
                ("settled after", result["end"]),
            )
        ),
        "",
        f"Pool probe: {result['probe']['streams']} concurrent streams on the settled proxy "
        f"({result['probe']['ok']} ok); "
        f"upstream connections peaked at {result['probe']['upstream_peak']} and "
        f"{result['probe']['upstream_after']} remain. Records: "
        + ", ".join(f"{key} {_cell(value)}" for key, value in result["records"].items())
        + ".",
        "",
        "## Series",
        "",
        "| " + " | ".join(SERIES_COLUMNS) + " |",
        "|" + "---|" * len(SERIES_COLUMNS),
        *(
            "| " + " | ".join(_cell(row.get(key)) for key in SERIES_COLUMNS) + " |"
            for row in result["series"]
        ),
        "",
        "## Method",
        "",
        METHOD,
    ]
    return "\n".join(lines)


def _pass(ok: bool | None) -> str:
    return {True: "PASS", False: "**FAIL**", None: "info"}[ok]


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


METHOD = f"""\
- **Setup.** `bench/upstream.py` (the generator) is the upstream; our proxy runs as
  `ollama-metrics proxy` does (metrics on, SQLite analytics in a temporary `ANALYTICS_DIR`,
  `PS_POLL_INTERVAL=0`), under a launcher that only adds a task counting
  `asyncio.all_tasks()` every 0.5 s (the product has no such figure); the clients run in the
  harness's own process (uvloop, httptools), one keep-alive connection each, started over
  the first 5 % of the run (at most 5 s).
- **Mix.** {NOT_STREAMED_SHARE:.0%} non-streamed `/api/generate` or `/api/chat`; the rest
  streamed, a third each `/api/chat`, `/api/generate` and `/v1/chat/completions` (SSE, no
  `include_usage`: the proxy asks for usage and must strip it), {TOKENS[0]}–{TOKENS[1]}
  tokens one every {INTERVAL_MS[0]}–{INTERVAL_MS[1]} ms. {CUT_SHARE:.0%} of the streams are
  dropped by the client after a random number of lines up to half (FIN or RST at random):
  client-caused, counted apart. Pause between requests 0–{THINK_S * 1000:.0f} ms.
- **Classes.** `ok`: 2xx, complete, exactly the expected lines/events and the final one
  (`"done":true` with `eval_count`; `data: [DONE]`), or the upstream's JSON for non-streamed.
  Proxy-caused: `refused` (no connection), `reset` (connection closed or reset before the
  answer ended), `stalled` (not complete after {STALL_S:.0f} s), `status` (non-2xx while the
  upstream was up), `truncated` / `extra` (fewer / more lines than the upstream sent: `extra`
  catches a leaked usage chunk), `missing_final`, `bad_body`. `upstream` is an error while
  the generator had exited (not the proxy's fault).
- **Samples** every `--sample-seconds` (default: a twelfth of the run, at most 10 s):
  VmRSS and RssAnon (`/proc/PID/status`), open fds (`/proc/PID/fd`), the proxy's TCP sockets
  to clients and to the upstream port by state (psutil), other fds = fds − established
  sockets, asyncio tasks, and from `/metrics` the in-flight requests, analytics queue depth,
  records written, drops and write errors.
- **Trend rule.** The one of `python -m bench`'s memory series (`bench.memory.slope_per_100k`):
  least squares over the samples taken after the first 20 % of the requests (warm-up:
  allocator arenas, SQLite's page cache, the pools and the metric children fill), in units
  per 100,000 requests; only samples under full load (not the drain after the deadline).
  Flat: RSS < {RSS_LIMIT_MB} MB/100k (the memory-series target: 20 bytes a request), other fds
  < {OTHER_FDS_LIMIT:.0f}/100k (one leaked per 1,000 requests would be 100). Fds are judged
  without the live connections, and tasks only after the load: both move with the requests
  in flight. Upstream connections under load may not exceed one per client plus 5 % (a
  dropped stream's connection may still be closing when its client's next request starts).
- **After the load.** The harness polls (up to {SETTLE_S:.0f} s) until nothing is in flight,
  no client socket is left, tasks are back within {TASK_SLACK} of the warm baseline and fds
  less the idle upstream connections within {FD_SLACK}. The idle upstream connections are
  the pool (the proxy keeps clean keep-alive connections, uncapped by default): a probe of
  that many concurrent streams must not open one more. Then the SQLite file must hold one
  row per request sent (warm-up and probe included), with as many `cancelled` rows as client
  disconnects, and `/metrics` must show no drop.
"""


def write(data: dict[str, Any], markdown: Path, json_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = json_path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(temporary, json_path)
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(render(data))


def summary(data: dict[str, Any]) -> None:
    result = data["result"]
    print(
        f"{result['requests']:,} requests; outcomes: "
        + ", ".join(f"{k} {v:,}" for k, v in result["outcomes"].items() if v)
    )
    for check in data["verdicts"]:
        print(
            f"  {_pass(check['pass']).strip('*'):<5} {check['check']:<42} "
            f"{check['measured']:<40} goal {check['goal']}"
        )
    for example in result["error_examples"][:5]:
        print(f"  proxy error: {example}")

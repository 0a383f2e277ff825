"""The markdown report (docs/benchmarks.md) rendered from a run's JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

NOTES = Path(__file__).with_name("notes.md")
WAYS = ("direct", "proxy", "nginx", "litellm")
SECTIONS = (
    "## Targets",
    "## Gaps",
    "## 1. Small requests",
    "## 2. Streaming relay",
    "## 3. Memory",
    "## 4. Analytics",
    "## 5. Categoriser, parsers and diagnostics",
    "## 6. Open WebUI polls",
    "## How each number is measured",
)
METHOD = """\
- **Ways.** Every scenario runs, in the same run and one after the other, *direct* to the
  upstream, through *our proxy* (`.venv/bin/ollama-metrics proxy`, metrics and analytics on,
  SQLite in a temporary `ANALYTICS_DIR`, `PS_POLL_INTERVAL=0`), and through *nginx* (the Debian
  package: `proxy_pass` to a keep-alive upstream pool over HTTP/1.1, `proxy_buffering off`,
  `proxy_request_buffering off`, `worker_processes auto`). *litellm* (optional) is LiteLLM's
  proxy with its Prometheus callback and an `ollama_chat/` model on the same upstream.
- **Upstreams.** Small requests: nginx answering canned Ollama JSON with `return 200`. Streams,
  uploads, the big stream and the request series: `bench/upstream.py`, uvloop with a raw
  protocol and pre-rendered bytes, one HTTP chunk per NDJSON line / SSE event, one `write` per
  stream per event-loop turn, the first token sent with the headers.
  The generator writes 8 lines (8 HTTP chunks; 32 for a single stream) per `write`: with one
  `write` per line it spends as much CPU per line as the proxy, which merges ~10 lines (one
  stream: ~300) per relayed chunk anyway.
  The run is valid only if the upstream was busy ≤ 20 % of one core (`/proc` CPU time ÷
  wall time) during every proxied small and stream run (table above).
- **Small requests** (wrk `--latency`, `-t1 -c1` or `-t2 -c64`, a Lua script for the POST):
  req/s and latency p50/p99 as wrk reports them; added = proxied − direct percentile; CPU
  µs/request from `/proc/PID/stat` utime+stime of the process the client talks to (summed
  with its children for nginx), before and after the timed run. A warm-up run precedes each.
- **Streams** (our asyncio + httptools client, one keep-alive connection per concurrent
  stream): chunks/s = NDJSON lines or SSE events received by the client ÷ wall time; TTFT =
  request written → first body bytes; CPU/1k chunks and chunks per CPU-second from
  `/proc/PID/stat` of the process the client talks to (for *direct*, the upstream itself);
  lines/HTTP chunk = NDJSON lines or SSE events per HTTP chunk the client received (1 from
  the generator; through a proxy, how many upstream lines it merged into one relayed chunk);
  errors = responses whose status is not 200 or whose chunk count is not the expected one;
  usage seen = `"usage"` occurrences the client received on SSE without asking for them.
- **Memory**: VmRSS/VmHWM from `/proc/PID/status` of the process the client talks to (for
  *direct*, the upstream). Growth = peak − VmRSS before, peak = VmHWM after if VmHWM rose,
  else the highest 50 ms sample. The series samples VmRSS every N requests; the slope is a
  least-squares fit after the first sample, in MB per 100,000 requests.
- **Analytics**: `bench/analytics.py` (its own method and targets).
- **Open WebUI polls**: `bench/openwebui.py`: records per endpoint read from the store;
  store growth = used pages after a WAL checkpoint, after − before; CPU per thread from
  `/proc/PID/task/*/stat` (the event loop is the main thread).
- **Micro-benchmarks**: `bench.categories.run` (µs per prompt, fastest of the rounds per
  prompt), `bench.parsers.run` (µs per stream chunk, fastest pass over a 1,000-token
  stream) and `bench.diagnostics.run` (µs per record through the Prometheus instruments with
  and without the diagnostics — queue wait, stream pause, client app — and per client-app
  classification; "added" is what the diagnostics cost one request).
"""


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def notes() -> dict[str, str]:
    if not NOTES.exists():
        return {}
    found: dict[str, str] = {}
    for part in re.split(r"^## ", NOTES.read_text(), flags=re.M)[1:]:
        name, _, text = part.partition("\n")
        found[name.strip()] = text.strip()
    return found


def _rows(scenarios: dict[str, Any], kind: str, columns: list[tuple[str, str]]) -> list[list[str]]:
    rows = []
    for key, entry in scenarios.items():
        if entry.get("kind") != kind:
            continue
        for way in WAYS:
            value = entry.get(way)
            if value is None:
                continue
            if isinstance(value, str):
                rows.append([key, way, value] + [""] * (len(columns) - 1))
                continue
            rows.append([key, way] + [_num(value.get(field)) for field, _ in columns])
    return rows


def _rule(check: dict[str, Any]) -> str:
    if check.get("rule") == "paced":
        return f"direct delivers {check['ratio'] * 100:.0f} % of {_num(check['offered'])}/s ≥ 90 %"
    return f"speed-up {check['ratio']:.1f} ≥ 5"


def render(data: dict[str, Any]) -> str:
    meta, machine, scenarios = data["meta"], data["machine"], data["scenarios"]
    out = ["# Benchmarks", ""]
    out += [
        "> **Warning:** these numbers come from a shared 2-core machine with other work running "
        "on it; take the ratios to *direct* and *nginx* from the same run more seriously than "
        "the absolute numbers. Regenerate with `make bench` (`.venv/bin/python -m bench`).",
        "",
    ]
    out += _table(
        ["machine", ""],
        [
            [key, _num(value) if not isinstance(value, list) else str(value)]
            for key, value in machine.items()
        ],
    )
    out += [
        f"Mode **{meta['mode']}** (`{meta['command']}`), {meta['seconds']:.0f} s. "
        f"Scenarios: {', '.join(meta['scenarios'])}.",
        "",
    ]
    verdict = "VALID" if meta["valid"] else "INVALID"
    out += [
        f"**Run {verdict}:** the upstream {'is' if meta['valid'] else 'is NOT'} fast enough "
        "in every small and stream scenario. Flat-out runs: speed-up = the proxied run's wall "
        "time ÷ the upstream's CPU time in that run, ≥ 5 (an upstream busy ≤ 20 % of one "
        "core could have served ≥ 5× as much). Paced runs (the upstream waits between lines "
        "on purpose): direct must deliver ≥ 90 % of the offered rate. Direct ÷ proxy "
        "throughput is shown too, though the direct path is often limited by the client.",
        "",
    ]
    checks = data.get("upstream_check", [])
    out += _table(
        ["scenario", "direct", "proxy", "direct ÷ proxy", "upstream busy", "rule", "ok"],
        [
            [
                c["scenario"],
                _num(c["direct"]),
                _num(c["proxy"]),
                _num(c["throughput_ratio"]),
                f"{c['upstream_busy'] * 100:.1f} %",
                _rule(c),
                "ok" if c["ok"] else "**NO**",
            ]
            for c in checks
        ],
    )
    out += ["## Targets", ""]
    out += _table(
        ["target", "what", "goal", "measured", "result"],
        [
            [
                t["id"],
                t["what"],
                t["goal"],
                f"{_num(t['measured'])} {t['unit']}".strip(),
                "PASS" if t["pass"] else ("**FAIL**" if t["pass"] is False else t["status"]),
            ]
            for t in data["targets"]
        ],
    )
    out += ["## Gaps", ""]
    failed = [t for t in data["targets"] if t["pass"] is False]
    written = notes()
    if not failed:
        out += ["No measured target fails.", ""]
    for target in failed:
        out += [f"### {target['id']}", "", f"**Gap:** {target['gap']}.", ""]
        note = (
            written.get(target["id"])
            or f"_TODO: add a `## {target['id']}` section to bench/notes.md._"
        )
        out += ["**Cause / what design would reach it** (from bench/notes.md):", "", note, ""]
    out += ["## 1. Small requests", ""]
    out += _table(
        [
            "scenario",
            "way",
            "req/s",
            "× direct",
            "p50 ms",
            "p99 ms",
            "added p50 ms",
            "added p99 ms",
            "CPU µs/req",
            "errors",
        ],
        _rows(
            scenarios,
            "small",
            [
                ("rps", ""),
                ("rps_ratio_to_direct", ""),
                ("p50_ms", ""),
                ("p99_ms", ""),
                ("added_p50_ms", ""),
                ("added_p99_ms", ""),
                ("cpu_us_per_request", ""),
                ("errors", ""),
            ],
        ),
    )
    out += ["## 2. Streaming relay", ""]
    out += _table(
        [
            "scenario",
            "way",
            "chunks/s",
            "× direct",
            "TTFT p50 ms",
            "TTFT p99 ms",
            "added TTFT p50",
            "added TTFT p99",
            "CPU s/1k chunks",
            "chunks/CPU-s",
            "lines/HTTP chunk",
            "errors",
            "usage seen",
        ],
        _rows(
            scenarios,
            "stream",
            [
                ("chunks_per_s", ""),
                ("chunks_per_s_ratio_to_direct", ""),
                ("ttft_p50_ms", ""),
                ("ttft_p99_ms", ""),
                ("added_ttft_p50_ms", ""),
                ("added_ttft_p99_ms", ""),
                ("cpu_s_per_1k_chunks", ""),
                ("chunks_per_cpu_s", ""),
                ("chunks_per_piece", ""),
                ("errors", ""),
                ("usage_chunks_seen", ""),
            ],
        ),
    )
    out += ["## 3. Memory", ""]
    out += _table(
        ["scenario", "way", "MB", "MB/s", "RSS before MB", "RSS peak MB", "growth MB", "status"],
        _rows(
            scenarios,
            "memory",
            [
                ("mb", ""),
                ("mb_per_s", ""),
                ("rss_before_mb", ""),
                ("rss_peak_mb", ""),
                ("growth_mb", ""),
                ("status", ""),
            ],
        ),
    )
    series = scenarios.get("memory.series", {})
    out += _table(
        ["way", "requests", "req/s", "slope MB/100k", "VmRSS MB every N requests"],
        [
            [
                way,
                _num(series[way]["requests"]),
                _num(series[way]["rps"]),
                _num(series[way]["slope_mb_per_100k"]),
                " ".join(f"{n}:{mb:.1f}" for n, mb in series[way]["rss_series_mb"]),
            ]
            for way in WAYS
            if isinstance(series.get(way), dict)
        ],
    )
    out += ["## 4. Analytics", ""]
    analytics = data.get("analytics")
    if analytics is None:
        out += ["Not run (`--only` left it out).", ""]
    elif analytics.get("status") == "pending":
        out += [f"**Pending:** {analytics.get('reason', '')}.", ""]
    else:
        body = json.dumps(analytics.get("result", analytics), indent=2, default=str)
        out += [f"Status: {analytics.get('status')}."]
        if analytics.get("postgres"):
            out += [f"PostgreSQL: {analytics['postgres']}."]
        out += ["", "```json", body, "```", ""]
    out += ["## 5. Categoriser, parsers and diagnostics", ""]
    micro = data.get("micro") or {}
    if "categories" in micro:
        cats = micro["categories"]
        out += [
            f"`categorise()` ({cats['mode']}), {cats['prompts']} prompts, fastest of "
            f"{cats['rounds']} rounds, µs per prompt:",
            "",
        ]
        out += _table(
            ["lengths", "n", "mean", "p50", "p99"],
            [
                [label, _num(v["n"]), _num(v["mean"]), _num(v["p50"]), _num(v["p99"])]
                for label, v in cats["us_per_prompt"].items()
            ],
        )
    if "parsers" in micro:
        out += _table(
            ["stream reader", "µs per chunk", "chunks/s"],
            [
                [key.removesuffix("_us_per_chunk"), _num(value), _num(1e6 / value)]
                for key, value in micro["parsers"].items()
            ],
        )
    if "diagnostics" in micro:
        out += _table(
            ["diagnostics", "µs"],
            [[key.removesuffix("_us"), _num(value)] for key, value in micro["diagnostics"].items()],
        )
    if not micro:
        out += ["Not run.", ""]
    out += ["## 6. Open WebUI polls", ""]
    polls = data.get("openwebui")
    if polls is None:
        out += ["Not run.", ""]
    else:
        shape = polls["shape"]
        out += [
            f"{shape['streams']} users streaming `/api/chat` ({shape['tokens']} tokens, "
            f"{shape['interval_ms']} ms a token) for {shape['seconds']:g} s, alone and with "
            f"{shape['tabs']} tabs asking `/api/tags` every {shape['tags_every']:g} s and "
            f"`/api/ps` every {shape['ps_every']:g} s (`bench/openwebui.py`):",
            "",
        ]
        out += _table(
            [
                "run",
                "chats",
                "polls",
                "records",
                "store growth KiB",
                "event loop CPU s",
                "other threads CPU s",
            ],
            [
                [
                    name,
                    _num(run["chats"]),
                    _num(run["polls"]),
                    _num(sum(run["records"].values())),
                    _num(run["store_growth_bytes"] / 1024),
                    _num(run["event_loop_cpu_s"]),
                    _num(run["other_threads_cpu_s"]),
                ]
                for name, run in (
                    ("chats", polls["chats"]),
                    ("chats + polls", polls["chats+polls"]),
                )
            ],
        )
        out += _table(
            ["what the polls cost", "value"],
            [[key, _num(value)] for key, value in polls["polls_cost"].items()],
        )
    out += ["## How each number is measured", "", METHOD]
    return "\n".join(out)

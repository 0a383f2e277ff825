"""``python -m bench``: the proxy's cost next to direct access and nginx, in one run.

Runs the scenarios (small requests, streaming relay, memory, analytics, micro-benchmarks)
each three ways, judges the issue's targets, and writes ``bench/results/<UTC>.json``,
``bench/results/latest.json`` and ``docs/benchmarks.md``. ``--quick`` and ``--smoke`` shrink
durations and sizes (see ``bench/plan.py``); ``--only small,stream`` picks scenarios.
``--rejudge FILE`` measures nothing: it judges a run's JSON again with the current rules and
notes and rewrites the report (for a change of rule or of ``bench/notes.md``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench import (
    categories,
    diagnostics,
    machine,
    memory,
    nginx,
    openwebui,
    parsers,
    procs,
    report,
    small,
    store,
    streams,
    wrk,
)
from bench import targets as judged
from bench.plan import PLANS, SCENARIOS

RESULTS = procs.ROOT / "bench" / "results"
MARKDOWN = procs.ROOT / "docs" / "benchmarks.md"


def options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="short durations (a few minutes)")
    size.add_argument("--smoke", action="store_true", help="tiny sizes (seconds); for the test")
    parser.add_argument("--only", help=f"comma list of {','.join(SCENARIOS)}")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM column")
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="JSON results folder")
    parser.add_argument("--markdown", type=Path, default=MARKDOWN, help="markdown report path")
    parser.add_argument("--rejudge", type=Path, help="judge this run's JSON again; no run")
    args = parser.parse_args(argv)
    chosen = [
        name.strip() for name in (args.only or ",".join(SCENARIOS)).split(",") if name.strip()
    ]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    args.scenarios = [name for name in SCENARIOS if name in chosen]
    return args


def log(key: str, way: str, entry: dict[str, Any]) -> None:
    shown = (
        "rps",
        "p50_ms",
        "chunks_per_s",
        "ttft_p50_ms",
        "chunks_per_cpu_s",
        "mb_per_s",
        "growth_mb",
        "slope_mb_per_100k",
        "errors",
    )
    text = "  ".join(f"{name}={_short(entry[name])}" for name in shown if name in entry)
    print(f"  {key:<22} {way:<8} {text}", flush=True)


def _short(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def micro(plan: Any) -> dict[str, Any]:
    return {
        "categories": categories.run(prompts=plan.category_prompts, rounds=plan.category_rounds),
        "parsers": parsers.run(rounds=plan.parser_rounds),
        "diagnostics": diagnostics.run(rounds=plan.parser_rounds, calls=plan.diagnostic_calls),
    }


def _stop(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C, so that every server this run started is stopped.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = options(argv)
    if args.rejudge is not None:
        return rejudge(args)
    signal.signal(signal.SIGTERM, _stop)
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    try:
        nginx.binary(), wrk.binary()
    except FileNotFoundError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    stamp = datetime.datetime.now(datetime.UTC)
    info = machine.describe()
    print(
        f"bench: {plan.mode} run of {', '.join(args.scenarios)} on {info['cpu']} "
        f"({info['cores']} cores), load {info['load_average_at_start']}",
        flush=True,
    )
    scenarios: dict[str, Any] = {}
    data: dict[str, Any] = {"analytics": None, "micro": None, "openwebui": None}
    if "small" in args.scenarios:
        print("small requests (wrk):", flush=True)
        scenarios |= small.run(plan, log)
    if "stream" in args.scenarios:
        print("streaming relay:", flush=True)
        scenarios |= streams.run(plan, log, with_litellm=not args.no_litellm)
    if "memory" in args.scenarios:
        print("memory:", flush=True)
        scenarios |= memory.run(plan, log)
    if "analytics" in args.scenarios:
        print("analytics (bench/analytics.py):", flush=True)
        data["analytics"] = store.run(plan)
        print(f"  {data['analytics'].get('status')}", flush=True)
    if "micro" in args.scenarios:
        print("categoriser, parsers and diagnostics:", flush=True)
        data["micro"] = micro(plan)
    if "openwebui" in args.scenarios:
        print("Open WebUI polls (bench/openwebui.py):", flush=True)
        shape = openwebui.SMOKE if plan.smoke else openwebui.Shape(seconds=plan.openwebui_seconds)
        data["openwebui"] = openwebui.run(shape)
        print(f"  {openwebui.summary(data['openwebui'])}", flush=True)
    checks = judged.upstream_check(scenarios)
    command = "python -m bench" + {"full": "", "quick": " --quick", "smoke": " --smoke"}[plan.mode]
    data = {
        "meta": {
            "mode": plan.mode,
            "command": command + ("" if args.only is None else f" --only {args.only}"),
            "scenarios": args.scenarios,
            "started": stamp.isoformat(),
            "seconds": time.monotonic() - started,
            "valid": all(check["ok"] for check in checks),
            "litellm": not args.no_litellm,
        },
        "machine": info,
        "upstream_check": checks,
        "scenarios": scenarios,
        **data,
        "targets": judged.judge(scenarios, data["analytics"], data.get("micro")),
    }
    write(args, data, stamp)
    summary(data)
    return 0


def rejudge(args: argparse.Namespace) -> int:
    """Derived numbers, the upstream check and the targets again from a run's raw data."""
    data = json.loads(args.rejudge.read_text())
    scenarios = data["scenarios"]
    for way in scenarios.get("memory.series", {}).values():
        if isinstance(way, dict) and "rss_series_mb" in way:
            way["slope_mb_per_100k"] = memory.slope_per_100k(
                [(n, mb) for n, mb in way["rss_series_mb"]]
            )
    checks = judged.upstream_check(scenarios)
    data["upstream_check"] = checks
    data["meta"]["valid"] = all(check["ok"] for check in checks)
    data["targets"] = judged.judge(scenarios, data["analytics"], data.get("micro"))
    stamp = datetime.datetime.fromisoformat(data["meta"]["started"])
    write(args, data, stamp)
    summary(data)
    return 0


def write(args: argparse.Namespace, data: dict[str, Any], stamp: datetime.datetime) -> None:
    args.output_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, default=str) + "\n"
    for name in (stamp.strftime("%Y%m%dT%H%M%SZ") + ".json", "latest.json"):
        temporary = args.output_dir / (name + ".tmp")
        temporary.write_text(text)
        os.replace(temporary, args.output_dir / name)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(report.render(data))
    print(f"wrote {args.output_dir / 'latest.json'} and {args.markdown}")


def summary(data: dict[str, Any]) -> None:
    print("upstream check (speed-up = proxied wall time ÷ upstream CPU time, ≥ 5; paced:")
    print("direct delivers ≥ 90 % of the offered rate):")
    for check in data["upstream_check"]:
        verdict = "ok" if check["ok"] else "TOO SLOW"
        ratio = check["throughput_ratio"] or 0.0
        print(
            f"  {check['scenario']:<22} {check['rule']} {check['ratio']:6.2f}  {verdict:<8}  "
            f"(direct ÷ proxy throughput {ratio:.1f})"
        )
    if not data["meta"]["valid"]:
        print("RUN INVALID: the upstream is not ≥ 5× faster than the proxied path everywhere")
    print("targets:")
    for target in data["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: target["status"]}[target["pass"]]
        measured = (
            "–" if target["measured"] is None else f"{target['measured']:,.3g} {target['unit']}"
        )
        print(f"  {verdict:<8} {target['id']:<22} {measured:<22} goal {target['goal']}")
    print(f"done in {data['meta']['seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())

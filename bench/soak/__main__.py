"""``python -m bench.soak``: load and soak — many concurrent streaming clients for minutes.

Options and the wiring: the generator and the proxy up, ``run.soak``, ``verdicts.judge``,
``report.write``. The package docstring describes the run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import sys
from pathlib import Path
from typing import Any

from bench import client, machine, procs
from bench.soak.report import summary, write
from bench.soak.run import soak
from bench.soak.verdicts import judge, passes
from bench.soak.watch import proxy_server

RESULTS = procs.ROOT / "bench" / "results" / "soak-latest.json"
MARKDOWN = procs.ROOT / "docs" / "soak.md"


def options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="load duration (default 10)")
    parser.add_argument("--streams", type=int, default=256, help="concurrent clients (default 256)")
    parser.add_argument("--output", type=Path, default=MARKDOWN, help="markdown report path")
    parser.add_argument("--json-output", type=Path, default=RESULTS, help="JSON results path")
    parser.add_argument(
        "--sample-seconds", type=float, help="sampling period (default: run/12, ≤ 10 s)"
    )
    parser.add_argument("--seed", type=int, default=1, help="the clients' random seed")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.streams < 1:
        parser.error("--minutes must be > 0 and --streams ≥ 1")
    if args.sample_seconds is None:
        args.sample_seconds = min(10.0, max(0.5, args.minutes * 60 / 12))
    return args


def describe() -> dict[str, Any]:
    """``bench.machine.describe()``; without nginx and wrk (the soak needs neither) its other
    facts."""
    try:
        return machine.describe()
    except FileNotFoundError:
        return {
            "cpu": machine.cpu_model(),
            "cores": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "commit": machine.commit(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
        }


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: every server started is stopped


def main(argv: list[str] | None = None) -> int:
    args = options(argv)
    signal.signal(signal.SIGTERM, _stop)
    info = describe()
    command = f"python -m bench.soak --minutes {args.minutes:g} --streams {args.streams}"
    print(
        f"{command}: {info['cpu']} ({info['cores']} cores), load {info['load_average_at_start']}",
        flush=True,
    )
    stamp = datetime.datetime.now(datetime.UTC)
    with procs.generator() as generator, proxy_server(generator) as proxy:
        result = client.run(soak(proxy, generator, args))
    verdicts = judge(result, args.streams)
    meta = {"command": command, "minutes": args.minutes, "streams": args.streams}
    meta |= {"sample_seconds": args.sample_seconds, "seed": args.seed, "started": stamp.isoformat()}
    data = {"meta": meta, "machine": info, "verdicts": verdicts, "result": result}
    write(data, args.output, args.json_output)
    summary(data)
    print(f"wrote {args.output} and {args.json_output}")
    return 0 if passes(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Small requests with wrk: requests/s and latency percentiles, parsed from ``--latency``."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

POST_SCRIPT = Path(__file__).with_name("post.lua")
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_PERCENTILE = re.compile(r"^\s+(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)


@dataclass(frozen=True)
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise FileNotFoundError("wrk is not installed (apt-get install wrk)")
    return found


def version() -> str:
    done = subprocess.run([binary(), "-v"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0].strip()


def parse(output: str) -> WrkResult:
    percentiles = {
        int(p): float(value) * _UNITS[unit] for p, value, unit in _PERCENTILE.findall(output)
    }
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    done = re.search(r"(\d+) requests in", output)
    if rps is None or done is None or 50 not in percentiles or 99 not in percentiles:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        errors += sum(int(n) for n in sockets.groups())
    return WrkResult(
        int(done.group(1)), float(rps.group(1)), percentiles[50], percentiles[99], errors
    )


def run(url: str, *, connections: int, seconds: float, post: bool) -> WrkResult:
    threads = 1 if connections == 1 else 2
    command = [
        binary(),
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(seconds))}s",
    ]
    command += ["--latency", "--timeout", "10s"]
    if post:
        command += ["-s", str(POST_SCRIPT)]
    done = subprocess.run([*command, url], capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse(done.stdout)

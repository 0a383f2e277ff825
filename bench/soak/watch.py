"""The proxy under test: its process under ``LAUNCHER``, and how to read its state.

``proxy_server`` starts it; ``Proxy`` reads its task count, TCP sockets and SQLite rows;
``scrape`` reads ``/metrics``, ``status_kb`` ``/proc``; ``sample`` is one row of the series.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from bench import procs
from bench.soak.clients import Tally

LAUNCHER = """\
import asyncio, os, sys, time
import uvicorn
from app import cli

_serve = uvicorn.Server.serve
_path = os.environ["SOAK_TASKS_FILE"]

async def _count_tasks():
    while True:
        with open(_path + ".tmp", "w") as out:
            out.write(f"{time.time()} {len(asyncio.all_tasks())}")
        os.replace(_path + ".tmp", _path)
        await asyncio.sleep(0.5)

async def serve(self, sockets=None):
    counter = asyncio.ensure_future(_count_tasks())
    try:
        await _serve(self, sockets)
    finally:
        counter.cancel()

uvicorn.Server.serve = serve
sys.exit(cli.main(sys.argv[1:]))
"""


@dataclass
class Proxy:
    """Our proxy's process, ports and side files, and how to read its state."""

    server: procs.Server
    upstream_port: int
    tasks_file: Path
    database: Path

    @property
    def pid(self) -> int:
        return self.server.process.pid

    async def tasks(self, newer_than: float = 0.0) -> int | None:
        """The launcher's first task count written after ``newer_than`` (Unix time)."""
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                stamp, count = self.tasks_file.read_text().split()
                if float(stamp) > newer_than:
                    return int(count)
            await asyncio.sleep(0.05)
        return None

    def sockets(self) -> dict[str, int]:
        """The proxy's TCP sockets: to clients and to the upstream, by state."""
        found = Counter[str]()
        for conn in psutil.Process(self.pid).net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                continue
            if conn.raddr and conn.raddr.port == self.upstream_port:
                side = "upstream"
            elif conn.laddr and conn.laddr.port == self.server.port:
                side = "client"
            else:
                side = "other"
            state = "established" if conn.status == psutil.CONN_ESTABLISHED else "other"
            found[f"{side}_{state}"] += 1
        return {name: found[name] for name in SOCKET_KINDS}

    def records(self) -> dict[str, int]:
        """Rows in the analytics database: all, cancelled, status 200 and not cancelled."""
        if not self.database.exists():
            return {"stored": 0, "cancelled": 0, "completed": 0}
        uri = f"file:{self.database}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
            row = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(cancelled), 0),"
                " COALESCE(SUM(status = 200 AND NOT cancelled), 0) FROM requests"
            ).fetchone()
        return {"stored": row[0], "cancelled": row[1], "completed": row[2]}


SOCKET_KINDS = (
    "client_established",
    "client_other",
    "upstream_established",
    "upstream_other",
    "other_established",
    "other_other",
)
METRICS = {
    "in_flight": "ollama_requests_in_flight",
    "queue_depth": "ollama_analytics_queue_depth",
    "records_written": "ollama_analytics_records_written_total",
    "dropped": "ollama_analytics_dropped_total",
    "write_errors": "ollama_analytics_write_errors_total",
    "upstream_errors": "ollama_upstream_errors_total",
}


async def scrape(port: int) -> dict[str, float]:
    """The /metrics figures above, each summed over its labels."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        body = _unchunk(body)
    sums = dict.fromkeys(METRICS, 0.0)
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            for key, name in METRICS.items():
                if sample.name == name:
                    sums[key] += sample.value
    return sums


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if not size:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


def status_kb(pid: int) -> dict[str, float]:
    found = {"VmRSS": 0.0, "RssAnon": 0.0, "Threads": 0.0}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in found:
                found[key] = float(value.split()[0])
    return found


async def sample(proxy: Proxy, started: float, tally: Tally) -> dict[str, Any]:
    """One row of the series: process, sockets, tasks, /metrics, requests so far."""
    now = time.time()
    status = status_kb(proxy.pid)
    fds = len(os.listdir(f"/proc/{proxy.pid}/fd"))
    sockets = proxy.sockets()
    row: dict[str, Any] = {
        "t_s": round(time.monotonic() - started, 1),
        "requests": tally.sent,
        "rss_mb": round(status["VmRSS"] / 1024, 2),
        "rss_anon_mb": round(status["RssAnon"] / 1024, 2),
        "threads": int(status["Threads"]),
        "fds": fds,
        **sockets,
        # Fds that are not a live connection: files, pipes, half-closed sockets. Constant
        # unless something leaks; the socket counts move with the load.
        "other_fds": fds - sockets["client_established"] - sockets["upstream_established"],
        "tasks": await proxy.tasks(now),
    }
    row |= {key: int(value) for key, value in (await scrape(proxy.server.port)).items()}
    return row


@contextlib.contextmanager
def proxy_server(upstream: procs.Server) -> Iterator[Proxy]:
    """Our proxy, configured as ``procs.our_proxy`` does, under ``LAUNCHER``."""
    port = procs.free_port()
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    command = [sys.executable, "-c", LAUNCHER, "proxy", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--upstream", upstream.url, "--log-level", "warning"]
    env = {**os.environ, "ANALYTICS_DIR": str(work), "PS_POLL_INTERVAL": "0"}
    env |= {"ANALYTICS_BACKEND": "sqlite", "LOG_LEVEL": "warning"}
    env |= {"SOAK_TASKS_FILE": str(work / "tasks"), "PYTHONPATH": str(procs.ROOT)}
    try:
        with procs.started("proxy", command, port, env=env) as server:
            yield Proxy(server, upstream.port, work / "tasks", work / "analytics.db")
    finally:
        shutil.rmtree(work, ignore_errors=True)

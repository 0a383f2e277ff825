"""Where a small request's CPU goes: the proxy with one layer after another taken away.

Each variant is the proxy as ``ollama-metrics proxy`` runs it (SQLite store, metrics, the
static nginx upstream) with what the variants before it removed, and one thing more:

- ``full``: nothing removed;
- ``no_store_write``: the store's ``write`` does nothing (rows are still made and queued);
- ``no_store``: no analytics backend at all (no rows);
- ``no_metrics``: nor the Prometheus instruments' ``started``/``finished``;
- ``no_record``: nor the record (the tap's ``close``);
- ``no_tap``: nor the tap (a null tap: the forwarder and its upstream pool alone);
- ``bare_uvicorn``: a constant ASGI answer under the same uvicorn (httptools, uvloop).

The differences between neighbours are the cost of each layer. The variants run one after
another in ``rounds`` interleaved rounds (wrk at ``connections``); CPU per request is read
per thread from ``/proc`` (the event loop is the main thread). ``python -m bench.ablation``
prints a table and the JSON; ``serve VARIANT PORT UPSTREAM`` is what each variant runs as.
Nothing here changes the product: the removals are made in the variant's own process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench import procs, wrk

VARIANTS = (
    "full",
    "no_store_write",
    "no_store",
    "no_metrics",
    "no_record",
    "no_tap",
    "bare_uvicorn",
)


def _replace(owner: Any, name: str, value: Any) -> None:
    """Put ``value`` in place of ``owner.name``, which must exist: a renamed target fails the
    variant instead of silently measuring nothing."""
    if not hasattr(owner, name):
        raise AttributeError(f"{owner!r} has no {name!r}: bench.ablation needs updating")
    setattr(owner, name, value)


def _no_store_write() -> None:
    from app.analytics.sql import SqlStore

    _replace(SqlStore, "write", lambda self, rows: None)


def _no_metrics() -> None:
    from app.metrics.instruments import Instruments

    _replace(Instruments, "started", lambda self, request_id, endpoint, model: None)
    _replace(Instruments, "finished", lambda self, record: None)


def _no_record() -> None:
    from app.exchange import ExchangeTap

    _replace(ExchangeTap, "close", lambda self, **ended: None)


class _NullTap:
    request_bytes = 0
    inspect_request = False

    def begin(self, body: bytes | None) -> bytes | None:
        return body

    def response_start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        return None

    def response_chunk(self, chunk: bytes) -> bytes:
        return chunk

    def response_end(self) -> bytes:
        return b""

    def close(self, **ended: object) -> None:
        return None


class _NullTaps:
    def open(self, scope: object) -> _NullTap:
        return _NullTap()


def _no_tap() -> None:
    from app import main
    from app.proxy.relay import Forwarder

    class NullTapForwarder(Forwarder):
        def __init__(self, upstream: Any, taps: Any) -> None:
            super().__init__(upstream, _NullTaps())

    _replace(main, "Forwarder", NullTapForwarder)


# What each variant removes beyond the one before it.
_REMOVALS: dict[str, Callable[[], None]] = {
    "no_store_write": _no_store_write,
    "no_metrics": _no_metrics,
    "no_record": _no_record,
    "no_tap": _no_tap,
}


def serve(variant: str, port: int, upstream: str) -> None:
    """Run ``variant`` on ``port`` until terminated."""
    index = VARIANTS.index(variant)
    os.environ |= {"PS_POLL_INTERVAL": "0", "ANALYTICS_DIR": tempfile.mkdtemp()}
    stored = index < VARIANTS.index("no_store")
    os.environ["ANALYTICS_BACKEND"] = "sqlite" if stored else "none"
    if variant == "bare_uvicorn":
        _bare(port)
        return
    for removed in VARIANTS[1 : index + 1]:
        if removed in _REMOVALS:
            _REMOVALS[removed]()
    from app.config import Settings
    from app.logs import configure_logging
    from app.server import run_proxy

    configure_logging("warning", "text")
    run_proxy(Settings(proxy_host="127.0.0.1", proxy_port=port, ollama_upstream=upstream))


def _bare(port: int) -> None:
    import uvicorn

    body = b'{"models":[]}'
    head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": head})
            await send({"type": "http.response.body", "body": body})

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="auto",
        lifespan="off",
        access_log=False,
        log_config=None,
    )


def measure(
    variant: str, upstream: str, *, path: str, connections: int, seconds: float
) -> dict[str, float]:
    """One run of ``variant``: requests/s and CPU µs per request (event loop, other threads)."""
    port = procs.free_port()
    command = [sys.executable, "-m", "bench.ablation", "serve", variant, str(port), upstream]
    with procs.started(variant, command, port) as server:
        url = f"{server.url}{path}"
        post = path == "/api/generate"
        wrk.run(url, connections=connections, seconds=1, post=post)  # warm-up
        loop_before, other_before = procs.thread_cpu(server.process.pid)
        result = wrk.run(url, connections=connections, seconds=seconds, post=post)
        loop_after, other_after = procs.thread_cpu(server.process.pid)
    loop, other = loop_after - loop_before, other_after - other_before
    requests = max(result.requests, 1)
    return {
        "rps": result.rps,
        "errors": result.errors,
        "requests": result.requests,
        "event_loop_us": loop / requests * 1e6,
        "other_us": other / requests * 1e6,
        "total_us": (loop + other) / requests * 1e6,
    }


def run(
    *,
    path: str = "/api/tags",
    connections: int = 64,
    seconds: float = 6,
    rounds: int = 2,
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, Any]:
    """Every variant, ``rounds`` times interleaved; the median of each figure per variant."""
    runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in variants}
    with procs.static_upstream() as upstream:
        for _ in range(rounds):
            for variant in variants:
                runs[variant].append(
                    measure(
                        variant, upstream.url, path=path, connections=connections, seconds=seconds
                    )
                )
    medians = {
        variant: {key: statistics.median(run[key] for run in done) for key in done[0]}
        for variant, done in runs.items()
    }
    return {"path": path, "connections": connections, "seconds": seconds, "variants": medians}


def table(result: dict[str, Any]) -> str:
    """The result as a markdown table, with each layer's cost (the step to the next row)."""
    rows = list(result["variants"].items())
    lines = [
        f"`{result['path']}` at c={result['connections']}, CPU µs per request:",
        "",
        "| variant | req/s | event loop | other threads | total | this layer |",
        "|---|---|---|---|---|---|",
    ]
    for index, (variant, figures) in enumerate(rows):
        after = rows[index + 1][1]["total_us"] if index + 1 < len(rows) else 0.0
        lines.append(
            f"| {variant} | {figures['rps']:,.0f} | {figures['event_loop_us']:.0f} "
            f"| {figures['other_us']:.0f} | {figures['total_us']:.0f} "
            f"| {figures['total_us'] - after:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "serve":
        serve(args[1], int(args[2]), args[3])
        return
    parser = argparse.ArgumentParser(prog="python -m bench.ablation", description=__doc__)
    parser.add_argument("--path", default="/api/tags", choices=["/api/tags", "/api/generate"])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args(args)
    started = time.monotonic()
    result = run(
        path=options.path,
        connections=options.connections,
        seconds=options.seconds,
        rounds=options.rounds,
    )
    print(table(result))
    print(json.dumps({**result, "wall_s": round(time.monotonic() - started, 1)}, indent=2))


if __name__ == "__main__":
    main()

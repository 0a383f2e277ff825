"""What the per-request diagnostics cost: ``python -m bench.diagnostics``.

A finished record goes to the Prometheus instruments once with its diagnostics (queue wait,
longest stream pause, client app) and once without; the difference is what they add per
request. The client-app classifier is timed on a repeated User-Agent (the cache) and on
new ones. Each figure is the fastest of the rounds, in µs per call.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from app.categories.apps import ClientApps
from app.metrics.instruments import Instruments
from app.record import ExchangeRecord, new_record_id

CALLS = 20_000
USER_AGENT = "ollama-python/0.6.3 (x86_64 linux) Python/3.11.7"


def _record() -> ExchangeRecord:
    return ExchangeRecord(
        id=new_record_id(),
        timestamp=time.time(),
        method="POST",
        path="/api/chat",
        endpoint="/api/chat",
        operation="chat",
        model="llama3.2:latest",
        category="question",
        client="127.0.0.1",
        user_agent=USER_AGENT,
        status=200,
        streamed=True,
        prompt="Why is the sky blue?",
        request_body="{}",
        response="Rayleigh scattering.",
        thinking="",
        duration_s=1.2,
        ttft_s=0.2,
        ollama_total_s=1.1,
        ollama_load_s=0.01,
        ollama_prompt_eval_s=0.05,
        ollama_eval_s=0.9,
        prompt_tokens=26,
        completion_tokens=120,
    )


def _fastest(call: Callable[[], object], calls: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for _ in range(calls):
            call()
        best = min(best, time.perf_counter_ns() - started)
    return best / calls / 1000


def _finished_us(record: ExchangeRecord, calls: int, rounds: int) -> float:
    instruments = Instruments(CollectorRegistry())

    def one() -> None:
        instruments.started(record.id, record.endpoint, record.model)
        instruments.finished(record)

    one()  # the series exist before timing
    return _fastest(one, calls, rounds)


def run(*, rounds: int = 5, calls: int = CALLS) -> dict[str, float]:
    base = _record()
    without = dataclasses.replace(base, queue_wait_s=None, max_gap_s=None, client_app="")
    with_them = dataclasses.replace(
        base, queue_wait_s=0.14, max_gap_s=0.08, client_app="ollama-python"
    )
    plain = _finished_us(without, calls, rounds)
    diagnosed = _finished_us(with_them, calls, rounds)
    apps = ClientApps()
    cached = _fastest(lambda: apps(USER_AGENT), calls, rounds)
    fresh = iter(range(10**9))
    cold = _fastest(lambda: ClientApps()(f"app{next(fresh)}/1.0 (linux)"), calls // 10, rounds)
    return {
        "metrics_without_us": plain,
        "metrics_with_us": diagnosed,
        "added_us": diagnosed - plain + cached,
        "client_app_cached_us": cached,
        "client_app_cold_us": cold,
    }


LABELS = {
    "metrics_without_us": "instruments, a record without diagnostics",
    "metrics_with_us": "instruments, a record with them",
    "added_us": "added per request (metrics + client app)",
    "client_app_cached_us": "client app, repeated User-Agent",
    "client_app_cold_us": "client app, a new User-Agent",
}


def main() -> None:
    for key, value in run().items():
        print(f"{LABELS[key]:<44} {value:7.2f} µs")


if __name__ == "__main__":
    main()

"""What the per-request diagnostics cost: ``python -m bench.diagnostics``.

A finished record goes to the Prometheus instruments once with its diagnostics (queue wait,
longest stream pause, client app, context, cold start) and once without; the difference is
what they add per request there. Beside it, what the request path pays for the rest: the
client-app classifier on a repeated User-Agent (the cache) and on new ones, the residency's
``arrive`` + ``leave`` + placement and context look-ups of one request (``app.ollama.residency``)
and the plain-words diagnosis of a record with findings and of one without
(``app.diagnosis``). "added" is what a warm request pays (a short queue wait, its stream's
pauses, its context, on the GPU: nothing to say): the instruments' difference, the cached
classifier, the residency round trip and its diagnosis; "added_worst" the same for a request
with every finding (a cold start, a long queue wait, partly on the CPU). Each figure is the
fastest of the rounds, in µs per call.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from app.categories.apps import ClientApps
from app.diagnosis import explain
from app.metrics.instruments import Instruments
from app.ollama.residency import LoadedModel, Residency
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


def _finished_us(records: list[ExchangeRecord], calls: int, rounds: int) -> list[float]:
    """µs per record through the instruments, for each of ``records``; the rounds of each are
    interleaved, so a machine that slows down meanwhile slows them all alike."""
    runs: list[Callable[[], None]] = []
    for record in records:
        instruments = Instruments(CollectorRegistry())

        def one(instruments: Instruments = instruments, record: ExchangeRecord = record) -> None:
            instruments.started(record.id, record.endpoint, record.model)
            instruments.finished(record)

        one()  # the series exist before timing
        runs.append(one)
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for i, one in enumerate(runs):
            best[i] = min(best[i], _fastest(one, calls, 1))
    return best


def _residency_us(calls: int, rounds: int) -> float:
    """One request's round trip through the residency, as the tap makes it."""
    residency = Residency()
    residency.observe([LoadedModel("llama3.2:latest", 3 << 30, 3 << 30, 4096)], 1e9)
    options = (("num_ctx", "4096"),)

    def one() -> None:
        arrival = residency.arrive("llama3.2:latest", options, 4096)
        residency.leave(arrival, answered=True, load_s=0.01)

    return _fastest(one, calls, rounds)


def run(*, rounds: int = 5, calls: int = CALLS) -> dict[str, float]:
    base = _record()
    without = dataclasses.replace(base, queue_wait_s=None, max_gap_s=None, client_app="")
    with_them = dataclasses.replace(
        base,
        queue_wait_s=0.14,
        max_gap_s=0.08,
        client_app="ollama-python",
        context_tokens=4096,
        cold_cause="evicted",
        cold_detail="by qwen3:8b",
        placement="mixed",
        gpu_share=0.62,
        requests_ahead=2,
    )
    # A warm request as most are: a short queue wait, its stream's pauses, its context.
    typical = dataclasses.replace(
        base,
        queue_wait_s=0.004,
        max_gap_s=0.03,
        client_app="ollama-python",
        context_tokens=4096,
        placement="gpu",
        gpu_share=1.0,
        requests_ahead=0,
    )
    plain, warm, diagnosed = _finished_us([without, typical, with_them], calls, rounds * 2)
    apps = ClientApps()
    cached = _fastest(lambda: apps(USER_AGENT), calls, rounds)
    fresh = iter(range(10**9))
    cold = _fastest(lambda: ClientApps()(f"app{next(fresh)}/1.0 (linux)"), calls // 10, rounds)
    residency = _residency_us(calls, rounds)
    said = _fastest(lambda: explain(with_them), calls, rounds)
    quiet = _fastest(lambda: explain(typical), calls, rounds)
    return {
        "metrics_without_us": plain,
        "metrics_warm_us": warm,
        "metrics_with_us": diagnosed,
        "added_us": warm - plain + cached + residency + quiet,
        "added_worst_us": diagnosed - plain + cached + residency + said,
        "client_app_cached_us": cached,
        "client_app_cold_us": cold,
        "residency_us": residency,
        "diagnosis_us": said,
        "diagnosis_none_us": quiet,
    }


LABELS = {
    "metrics_without_us": "instruments, a record without diagnostics",
    "metrics_warm_us": "instruments, a warm request's record",
    "metrics_with_us": "instruments, a record with every finding",
    "added_us": "added per warm request (all of the diagnostics)",
    "added_worst_us": "added per request with every finding",
    "client_app_cached_us": "client app, repeated User-Agent",
    "client_app_cold_us": "client app, a new User-Agent",
    "residency_us": "residency: arrive and leave (placement, context)",
    "diagnosis_us": "diagnosis of a record with findings",
    "diagnosis_none_us": "diagnosis of a warm request's record",
}


def main() -> None:
    for key, value in run().items():
        print(f"{LABELS[key]:<44} {value:7.2f} µs")


if __name__ == "__main__":
    main()

"""Instruments on a fresh registry, fed synthetic records."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from app import __version__
from app.metrics.instruments import FastCounter, FastHistogram, Instruments
from app.record import ExchangeRecord, new_record_id
from tests.support import sample_record

BASE = sample_record(id="01JTEST0000000000000000000")


@pytest.fixture
def metrics() -> tuple[Instruments, CollectorRegistry]:
    registry = CollectorRegistry()
    return Instruments(registry, max_models=2), registry


def finish(instruments: Instruments, **changes: object) -> ExchangeRecord:
    record = dataclasses.replace(BASE, id=new_record_id(), **changes)  # type: ignore[arg-type]
    instruments.started(record.id, record.endpoint, record.model)
    instruments.finished(record)
    return record


def test_one_record_updates_every_family(metrics: tuple[Instruments, CollectorRegistry]) -> None:
    instruments, registry = metrics
    finish(instruments)
    value = registry.get_sample_value
    model = {"model": "llama3.2:latest"}
    assert (
        value(
            "ollama_requests_total",
            {"endpoint": "/api/chat", "status": "200", "category": "question", **model},
        )
        == 1
    )
    assert value("ollama_tokens_total", {"type": "prompt", "category": "question", **model}) == 20
    assert (
        value("ollama_tokens_total", {"type": "completion", "category": "question", **model}) == 30
    )
    assert value("ollama_request_duration_seconds_sum", {"endpoint": "/api/chat", **model}) == 2.0
    assert (
        value("ollama_time_to_first_token_seconds_sum", {"endpoint": "/api/chat", **model}) == 0.5
    )
    assert value("ollama_tokens_per_second_sum", {"phase": "generation", **model}) == 20.0
    assert value("ollama_tokens_per_second_sum", {"phase": "prompt", **model}) == 100.0
    assert value("ollama_load_duration_seconds_sum", model) == 0.1
    assert value("ollama_eval_duration_seconds_count", model) == 1
    genai = {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "ollama",
        "gen_ai_request_model": "llama3.2:latest",
    }
    assert value("gen_ai_client_token_usage_sum", {**genai, "gen_ai_token_type": "input"}) == 20
    assert value("gen_ai_client_token_usage_sum", {**genai, "gen_ai_token_type": "output"}) == 30
    assert value("gen_ai_client_operation_duration_seconds_count", {**genai, "error_type": ""}) == 1
    assert value("gen_ai_server_time_to_first_token_seconds_sum", genai) == 0.5
    assert value("gen_ai_server_time_per_output_token_seconds_sum", genai) == pytest.approx(0.05)
    assert value("ollama_upstream_up") == 1
    # A model's first request is in flight under its own name, never under "other".
    assert value("ollama_requests_in_flight", {"endpoint": "/api/chat", **model}) == 0
    assert value("ollama_requests_in_flight", {"endpoint": "/api/chat", "model": "other"}) is None


def test_in_flight_requests_carry_their_model_and_route(
    metrics: tuple[Instruments, CollectorRegistry],
) -> None:
    instruments, registry = metrics
    value = registry.get_sample_value
    instruments.started("a", "/api/chat", "llama3.2:latest")
    instruments.started("b", "/api/tags", "")
    assert (
        value("ollama_requests_in_flight", {"endpoint": "/api/chat", "model": "llama3.2:latest"})
        == 1
    )
    assert value("ollama_requests_in_flight", {"endpoint": "/api/tags", "model": ""}) == 1
    assert value("ollama_requests_in_flight", {"endpoint": "/api/chat", "model": "other"}) is None


def test_a_refused_name_leaves_no_in_flight_series(
    metrics: tuple[Instruments, CollectorRegistry],
) -> None:
    instruments, registry = metrics
    value = registry.get_sample_value
    labels = {"endpoint": "/api/chat", "model": "junk:latest"}
    first = dataclasses.replace(BASE, id="1", model="junk:latest", status=404)
    second = dataclasses.replace(BASE, id="2", model="junk:latest", status=404)
    instruments.started(first.id, first.endpoint, first.model)
    instruments.started(second.id, second.endpoint, second.model)
    assert value("ollama_requests_in_flight", labels) == 2
    instruments.finished(first)
    assert value("ollama_requests_in_flight", labels) == 1
    instruments.finished(second)
    # Ollama refused the name: once its last request ends, its series is gone.
    assert value("ollama_requests_in_flight", labels) is None
    assert "junk:latest" not in instruments.model_label.held


def test_held_names_are_bounded_too(metrics: tuple[Instruments, CollectorRegistry]) -> None:
    instruments, registry = metrics  # max_models=2
    value = registry.get_sample_value
    for i in range(4):
        instruments.started(str(i), "/api/chat", f"m{i}")
    in_flight = {
        labels["model"]: sample
        for labels, sample in (
            (s.labels, s.value)
            for metric in registry.collect()
            if metric.name == "ollama_requests_in_flight"
            for s in metric.samples
        )
    }
    assert in_flight == {"m0": 1, "m1": 1, "other": 2}
    for i in range(4):
        instruments.finished(dataclasses.replace(BASE, id=str(i), model=f"m{i}", status=404))
    assert value("ollama_requests_in_flight", {"endpoint": "/api/chat", "model": "other"}) == 0
    assert instruments.model_label.held == {}


def test_failures_are_labelled_and_not_timed_as_successes(
    metrics: tuple[Instruments, CollectorRegistry],
) -> None:
    instruments, registry = metrics
    finish(instruments, upstream_error="midstream", completion_tokens=3)
    finish(
        instruments,
        status=502,
        upstream_error="connect",
        prompt_tokens=None,
        completion_tokens=None,
        ttft_s=None,
    )
    value = registry.get_sample_value
    assert value("ollama_upstream_errors_total", {"reason": "midstream"}) == 1
    assert value("ollama_upstream_errors_total", {"reason": "connect"}) == 1
    assert value("ollama_upstream_up") == 0
    genai = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "ollama"}
    assert (
        value(
            "gen_ai_client_operation_duration_seconds_count",
            {**genai, "gen_ai_request_model": "llama3.2:latest", "error_type": "midstream"},
        )
        == 1
    )
    # TTFT and time per token are for successful responses only.
    assert (
        value(
            "gen_ai_server_time_to_first_token_seconds_count",
            {**genai, "gen_ai_request_model": "llama3.2:latest"},
        )
        is None
    )


def test_model_labels_are_bounded_and_refused_names_take_no_slot(
    metrics: tuple[Instruments, CollectorRegistry],
) -> None:
    instruments, registry = metrics
    finish(instruments, model="junk:latest", status=404)
    finish(instruments, model="a:latest")
    finish(instruments, model="b:latest")
    finish(instruments, model="c:latest")
    requests = {
        s.labels["model"]
        for metric in registry.collect()
        if metric.name == "ollama_requests"
        for s in metric.samples
    }
    assert requests == {"a:latest", "b:latest", "other"}


def test_in_flight_balances_when_a_model_is_admitted_meanwhile(
    metrics: tuple[Instruments, CollectorRegistry],
) -> None:
    instruments, registry = metrics
    first = dataclasses.replace(BASE, id=new_record_id(), model="new:latest")
    second = dataclasses.replace(BASE, id=new_record_id(), model="new:latest")
    instruments.started(first.id, first.endpoint, first.model)
    instruments.started(second.id, second.endpoint, second.model)
    instruments.finished(first)  # admits "new:latest"
    instruments.finished(second)
    for model in ("new:latest", "other"):
        value = registry.get_sample_value(
            "ollama_requests_in_flight", {"endpoint": "/api/chat", "model": model}
        )
        assert value in (0, None)


def test_exemplars_only_in_openmetrics(metrics: tuple[Instruments, CollectorRegistry]) -> None:
    instruments, registry = metrics
    record = finish(instruments)
    assert f'request_id="{record.id}"' in generate_openmetrics(registry).decode()
    assert "request_id" not in generate_latest(registry).decode()


def test_record_ids_sort_by_time_and_are_unique() -> None:
    ids = [new_record_id(1_700_000_000 + i) for i in range(100)]
    assert ids == sorted(ids)
    assert len({new_record_id(1.0) for _ in range(1000)}) == 1000
    assert all(len(i) == 26 for i in ids)


def test_diagnostics_are_counted_per_model_and_client_app(
    metrics: tuple[Instruments, CollectorRegistry],
) -> None:
    instruments, registry = metrics
    value = registry.get_sample_value
    model = {"model": "llama3.2:latest"}
    finish(instruments, queue_wait_s=0.4, max_gap_s=1.5, client_app="ollama-python")
    finish(instruments, queue_wait_s=0.0, max_gap_s=None, client_app="ollama-python")
    finish(instruments, queue_wait_s=None, client_app="curl", prompt_tokens=None)
    assert value("ollama_queue_wait_seconds_count", model) == 2
    assert value("ollama_queue_wait_seconds_sum", model) == pytest.approx(0.4)
    assert value("ollama_stream_max_gap_seconds_count", model) == 1
    assert value("ollama_stream_max_gap_seconds_sum", model) == 1.5
    assert value("ollama_client_requests_total", {"client_app": "ollama-python"}) == 2
    assert value("ollama_client_requests_total", {"client_app": "curl"}) == 1
    tokens = {"client_app": "ollama-python", "type": "prompt"}
    assert value("ollama_client_tokens_total", tokens) == 2 * BASE.prompt_tokens  # type: ignore[operator]
    assert value("ollama_client_tokens_total", {"client_app": "curl", "type": "prompt"}) is None
    assert value("ollama_client_tokens_total", {"client_app": "curl", "type": "completion"}) == (
        BASE.completion_tokens
    )


def test_context_use_and_truncations_are_counted(
    metrics: tuple[Instruments, CollectorRegistry],
) -> None:
    instruments, registry = metrics
    value = registry.get_sample_value
    model = {"model": "llama3.2:latest"}
    finish(
        instruments, context_tokens=100, prompt_tokens=60, completion_tokens=30, truncation="prompt"
    )
    finish(instruments, context_tokens=None, truncation="output")
    finish(instruments, context_tokens=1000, prompt_tokens=10, completion_tokens=0)
    assert value("ollama_context_utilization_ratio_count", model) == 2
    assert value("ollama_context_utilization_ratio_sum", model) == pytest.approx(0.9 + 0.01)
    assert value("ollama_truncations_total", {**model, "kind": "prompt"}) == 1
    assert value("ollama_truncations_total", {**model, "kind": "output"}) == 1


def test_cold_starts_come_from_records_and_loads_from_the_residency(
    metrics: tuple[Instruments, CollectorRegistry],
) -> None:
    instruments, registry = metrics
    value = registry.get_sample_value
    model = {"model": "llama3.2:latest"}
    finish(instruments, cold_cause="first_load", ollama_load_s=3.0)
    finish(instruments, cold_cause=None)
    finish(instruments, cold_cause="options")
    assert value("ollama_cold_starts_total", model) == 2
    instruments.model_loaded("llama3.2:latest", reload=False)
    instruments.model_unloaded("llama3.2:latest")
    instruments.model_loaded("llama3.2:latest", reload=True)
    assert value("ollama_model_loads_total", model) == 2
    assert value("ollama_model_unloads_total", model) == 1
    assert value("ollama_model_reloads_total", model) == 1
    assert value("ollama_model_reloads_total", {"model": "qwen3:8b"}) is None


def test_load_events_share_the_model_bound(metrics: tuple[Instruments, CollectorRegistry]) -> None:
    registry = CollectorRegistry()
    instruments = Instruments(registry, max_models=2)
    for name in ("a", "b", "c", "d"):
        instruments.model_loaded(name, reload=False)
    labels = {
        s.labels["model"]
        for family in registry.collect()
        if family.name == "ollama_model_loads"
        for s in family.samples
        if s.name == "ollama_model_loads_total"
    }
    assert labels == {"a", "b", "other"}


def test_the_info_series_names_the_node_and_the_version() -> None:
    registry = CollectorRegistry()
    Instruments(registry, node="gpu-7")
    labels = {"node": "gpu-7", "version": __version__}
    assert registry.get_sample_value("ollama_proxy_info", labels) == 1
    series = [s for f in registry.collect() if f.name == "ollama_proxy_info" for s in f.samples]
    assert len(series) == 1


_BOUNDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_AMOUNTS = st.one_of(
    st.sampled_from((*_BOUNDS, 0.0, -1.0, float("inf"), float("-inf"), float("nan"))),
    st.floats(min_value=-1, max_value=20, allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(
    observations=st.lists(st.tuples(st.sampled_from("ab"), _AMOUNTS, st.booleans()), max_size=30)
)
def test_the_fast_histogram_exports_what_prometheus_clients_does(
    observations: list[tuple[str, float, bool]],
) -> None:
    # Bucket edges, infinities, NaN (in the sum, in no bucket), negative amounts, exemplars.
    exported = []
    for kind in (Histogram, FastHistogram):
        registry = CollectorRegistry()
        histogram = kind("h_seconds", "h", ("model",), buckets=_BOUNDS, registry=registry)
        for model, amount, with_exemplar in observations:
            exemplar = {"request_id": "01JABCDEFGHJKMNPQRSTVWXYZ0"} if with_exemplar else None
            histogram.labels(model).observe(amount, exemplar)
        exported.append(_comparable(generate_openmetrics(registry)))
    assert exported[0] == exported[1]


@settings(max_examples=100, deadline=None)
@given(amounts=st.lists(st.floats(min_value=-5, max_value=1e9, allow_nan=False), max_size=20))
def test_the_fast_counter_counts_and_refuses_as_prometheus_clients_does(
    amounts: list[float],
) -> None:
    outcomes = []
    for kind in (Counter, FastCounter):
        registry = CollectorRegistry()
        child = kind("c", "c", ("model",), registry=registry).labels("a")
        refused = []
        for amount in amounts:
            try:
                child.inc(amount)
            except ValueError as error:
                refused.append(str(error))
        child.inc()  # the default amount
        outcomes.append((_comparable(generate_latest(registry)), refused))
    assert outcomes[0] == outcomes[1]


def _comparable(text: bytes) -> bytes:
    """The exposition without what two runs cannot share: the time each exemplar was taken
    and the ``_created`` series (there unless an ``Instruments`` turned them off)."""
    lines = (line for line in text.splitlines(keepends=True) if b"_created" not in line)
    return re.sub(rb"(# \{[^}]*\} \S+) \S+\n", rb"\1\n", b"".join(lines))

"""The proxy's Prometheus instruments, all on one registry built by the app factory.

``Instruments`` is a sink of ``app.exchange``: it turns each finished ``ExchangeRecord`` into
counter and histogram updates, in memory. The metric names are a public contract,
documented in ``docs/metrics.md``.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    values,
)
from prometheus_client.samples import Exemplar

from app import __version__
from app.metrics.labels import OTHER, BoundedLabel
from app.record import ExchangeRecord

UPSTREAM_ERROR_REASONS = ("connect", "timeout", "reset", "protocol", "midstream")

# Cold model loads take minutes: the duration buckets reach 300 s.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 180, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
OLLAMA_PHASE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
CONTEXT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0, 1.25, 1.5, 2.0)
TRUNCATION_KINDS = ("prompt", "output")
RATE_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000, 10000)

# OpenTelemetry GenAI semantic conventions: the spec's explicit bucket boundaries.
GENAI_TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
GENAI_DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
GENAI_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
GENAI_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)

GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")


class _LoopValue:
    """A metric value that only the event loop's thread changes (every ``Instruments`` update
    runs on it), so it needs no lock: with the GIL a lone writer's ``+=`` loses nothing, and
    the exposition, on any thread, reads a whole float. prometheus_client's ``MutexValue``
    takes a lock for each of a request's ~40 updates."""

    __slots__ = ("_exemplar", "_value")
    _multiprocess = False

    def __init__(self) -> None:
        self._value = 0.0
        self._exemplar: Exemplar | None = None

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def set_exemplar(self, exemplar: Exemplar) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> Exemplar | None:
        return self._exemplar


# prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR) keeps values in files:
# then its own value class stays.
_UNLOCKED = values.ValueClass is values.MutexValue


class FastCounter(Counter):
    """``Counter`` on unlocked values (``_LoopValue``) whose ``inc`` on a labelled child skips
    the check a child never fails (that it is not a labelled parent). The exposition is
    prometheus_client's own; ``test_instruments`` holds its samples equal to ``Counter``'s."""

    def _metric_init(self) -> None:
        super()._metric_init()
        if _UNLOCKED:
            self._value = _LoopValue()

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if exemplar is not None or amount < 0:
            super().inc(amount, exemplar)  # the checks, the error and the exemplar
            return
        self._value.inc(amount)


class FastHistogram(Histogram):
    """``Histogram`` on unlocked values (``_LoopValue``) whose ``observe`` finds the bucket by
    bisection instead of walking every bound, and takes the proxy's only exemplar
    (``{"request_id": <26-character id>}``, well within the 128-character limit) without
    validating its label names each time. The exposition is prometheus_client's own;
    ``test_instruments`` holds its samples equal to ``Histogram``'s."""

    def _metric_init(self) -> None:
        super()._metric_init()
        if _UNLOCKED:
            self._sum = _LoopValue()
            self._buckets = [_LoopValue() for _ in self._buckets]

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        self._sum.inc(amount)
        if amount != amount:  # NaN: in no bucket, as in Histogram.observe
            return
        # The first bound >= amount; the last bound is +Inf.
        bucket = self._buckets[bisect_left(self._upper_bounds, amount)]
        bucket.inc(1)
        if exemplar:
            bucket.set_exemplar(Exemplar(exemplar, amount, time.time()))


M = TypeVar("M", Counter, Gauge, Histogram)


class Children(Generic[M]):
    """A metric's labelled children, looked up by their label values.

    ``labels()`` validates the values and takes a lock on every call, ten times a request; a
    dict lookup does not. Every label value is bounded, so this cache is too.
    """

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._cache: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._cache.get(values)
        if child is None:
            child = self._cache[values] = self._metric.labels(*values)
        return child

    def remove(self, *values: str) -> None:
        """Drop the series: it is no longer exported."""
        if self._cache.pop(values, None) is not None:
            self._metric.remove(*values)


class Instruments:
    """Every metric the proxy exports about the requests it forwards."""

    def __init__(
        self, registry: CollectorRegistry, *, max_models: int = 100, node: str = ""
    ) -> None:
        self.registry = registry
        self.model_label = BoundedLabel("model", max_models)
        # The labels each in-flight request was counted under, to decrement the same ones,
        # and the model it held (see BoundedLabel.hold), or None.
        self._in_flight: dict[str, tuple[tuple[str, str], str | None]] = {}
        # How many requests are in flight under each (endpoint, model) of a held model.
        self._in_flight_holders: dict[tuple[str, str], int] = {}
        # The *_created series double the exposition for no use in Grafana.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return FastCounter(name, doc, labels, registry=registry)

        def histogram(
            name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]
        ) -> Histogram:
            return FastHistogram(name, doc, labels, buckets=buckets, registry=registry)

        self.requests = counter(
            "ollama_requests",
            "Requests forwarded to Ollama, by endpoint, model, HTTP status and prompt category.",
            ("endpoint", "model", "status", "category"),
        )
        self.duration = histogram(
            "ollama_request_duration_seconds",
            "Time from request arrival to the last byte of the answer.",
            ("endpoint", "model"),
            DURATION_BUCKETS,
        )
        self.ttft = histogram(
            "ollama_time_to_first_token_seconds",
            "Streamed requests: time from request arrival to the first generated token.",
            ("endpoint", "model"),
            TTFT_BUCKETS,
        )
        self.tokens = counter(
            "ollama_tokens",
            "Tokens as Ollama counted them: type is prompt (prompt_eval_count) or completion.",
            ("model", "type", "category"),
        )
        self.tokens_per_second = histogram(
            "ollama_tokens_per_second",
            "Speed from Ollama's own durations: phase prompt (evaluation) or generation.",
            ("model", "phase"),
            RATE_BUCKETS,
        )
        self.load_duration = histogram(
            "ollama_load_duration_seconds",
            "Ollama's load_duration: queueing plus model load (cold) or lookup (warm).",
            ("model",),
            OLLAMA_PHASE_BUCKETS,
        )
        self.prompt_eval_duration = histogram(
            "ollama_prompt_eval_duration_seconds",
            "Ollama's prompt_eval_duration: time to evaluate the new prompt tokens.",
            ("model",),
            OLLAMA_PHASE_BUCKETS,
        )
        self.eval_duration = histogram(
            "ollama_eval_duration_seconds",
            "Ollama's eval_duration: time spent generating the completion.",
            ("model",),
            DURATION_BUCKETS,
        )
        self.queue_wait = histogram(
            "ollama_queue_wait_seconds",
            "Time Ollama held a request without working on it: total − load − prompt eval − "
            "eval (mostly the wait for a free parallel slot). Native generate and chat.",
            ("model",),
            OLLAMA_PHASE_BUCKETS,
        )
        self.stream_max_gap = histogram(
            "ollama_stream_max_gap_seconds",
            "Streams: the longest pause between two chunks of the answer.",
            ("model",),
            OLLAMA_PHASE_BUCKETS,
        )
        self.context_utilization = histogram(
            "ollama_context_utilization_ratio",
            "(prompt + generated tokens) / the request's context (options.num_ctx, else the "
            "loaded model's context_length); requests whose context is unknown are left out.",
            ("model",),
            CONTEXT_BUCKETS,
        )
        self.truncations = counter(
            "ollama_truncations",
            "Requests whose prompt reached the length Ollama cuts prompts to (kind=prompt) or "
            "whose generation stopped at its token limit (kind=output).",
            ("model", "kind"),
        )
        self.cold_starts = counter(
            "ollama_cold_starts",
            "Requests that waited for their model to be loaded (a cold start): a load_duration "
            "far above the model's warm level, or the model absent from /api/ps on arrival.",
            ("model",),
        )
        self.model_loads = counter(
            "ollama_model_loads",
            "Times a model came into Ollama's memory (from /api/ps changes and cold starts).",
            ("model",),
        )
        self.model_unloads = counter(
            "ollama_model_unloads",
            "Times a model left Ollama's memory (keep-alive expiry, eviction, unload, reload).",
            ("model",),
        )
        self.model_reloads = counter(
            "ollama_model_reloads",
            "Loads within RELOAD_WINDOW seconds of the same model's unload: thrashing.",
            ("model",),
        )
        self.client_requests = counter(
            "ollama_client_requests",
            "Requests by the application that sent them (User-Agent, X-Title, X-Client-Name).",
            ("client_app",),
        )
        self.client_tokens = counter(
            "ollama_client_tokens",
            "Tokens as Ollama counted them, by the application that asked: type is prompt or "
            "completion.",
            ("client_app", "type"),
        )
        self.in_flight = Gauge(
            "ollama_requests_in_flight",
            "Requests forwarded to Ollama and not yet answered in full.",
            ("endpoint", "model"),
            registry=registry,
        )
        # Which machine this is and what runs on it: the series a fleet's views join on.
        info = Gauge(
            "ollama_proxy_info",
            "1, labelled with this proxy's node (PROXY_NODE) and version.",
            ("node", "version"),
            registry=registry,
        )
        info.labels(node, __version__).set(1)
        # Set only by upstream_answered: its callers are the only judges of "reached".
        self._upstream_up = Gauge(
            "ollama_upstream_up",
            "1 when the last attempt to reach Ollama succeeded, 0 when it could not connect.",
            registry=registry,
        )
        self.upstream_errors = counter(
            "ollama_upstream_errors",
            "Requests that could not reach Ollama or that it broke off, by reason.",
            ("reason",),
        )
        for reason in UPSTREAM_ERROR_REASONS:
            self.upstream_errors.labels(reason)

        self.genai_tokens = histogram(
            "gen_ai_client_token_usage",
            "OpenTelemetry GenAI: tokens used per operation (input or output).",
            (*GENAI_LABELS, "gen_ai_token_type"),
            GENAI_TOKEN_BUCKETS,
        )
        self.genai_duration = histogram(
            "gen_ai_client_operation_duration_seconds",
            "OpenTelemetry GenAI: duration of the operation as the proxy saw it.",
            (*GENAI_LABELS, "error_type"),
            GENAI_DURATION_BUCKETS,
        )
        self.genai_ttft = histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "OpenTelemetry GenAI: time to the first generated token of successful streams.",
            GENAI_LABELS,
            GENAI_TTFT_BUCKETS,
        )
        self.genai_tpot = histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "OpenTelemetry GenAI: time per output token after the first, for successes.",
            GENAI_LABELS,
            GENAI_TPOT_BUCKETS,
        )
        # The same children, without labels()' cost per call (see Children).
        self._duration = Children(self.duration)
        self._eval_duration = Children(self.eval_duration)
        self._genai_duration = Children(self.genai_duration)
        self._genai_tokens = Children(self.genai_tokens)
        self._genai_tpot = Children(self.genai_tpot)
        self._genai_ttft = Children(self.genai_ttft)
        self._in_flight_gauge = Children(self.in_flight)
        self._load_duration = Children(self.load_duration)
        self._prompt_eval_duration = Children(self.prompt_eval_duration)
        self._requests = Children(self.requests)
        self._tokens = Children(self.tokens)
        self._tokens_per_second = Children(self.tokens_per_second)
        self._ttft = Children(self.ttft)
        self._upstream_errors = Children(self.upstream_errors)
        self._queue_wait = Children(self.queue_wait)
        self._stream_max_gap = Children(self.stream_max_gap)
        self._client_requests = Children(self.client_requests)
        self._context_utilization = Children(self.context_utilization)
        self._truncations = Children(self.truncations)
        self._client_tokens = Children(self.client_tokens)
        self._cold_starts = Children(self.cold_starts)
        self._model_loads = Children(self.model_loads)
        self._model_unloads = Children(self.model_unloads)
        self._model_reloads = Children(self.model_reloads)

    # -- the sink interface of app.exchange ------------------------------------------------

    def started(self, request_id: str, endpoint: str, model: str) -> None:
        # Not admitted yet (a name is only trusted once Ollama answered it without error),
        # but held: in flight under its own name while it is in use, within the bound.
        admitted = model in self.model_label.admitted
        label = self.model_label.hold(model)
        held = None if admitted or label == OTHER else model
        labels = (endpoint, label)
        self._in_flight[request_id] = (labels, held)
        if held is not None:
            self._in_flight_holders[labels] = self._in_flight_holders.get(labels, 0) + 1
        self._in_flight_gauge(*labels).inc()

    def _ended(self, request_id: str) -> None:
        """The in-flight request is over: decrement its series; a held model's series goes
        when its last request ends, unless Ollama proved the name real meanwhile."""
        entry = self._in_flight.pop(request_id, None)
        if entry is None:
            return
        labels, held = entry
        self._in_flight_gauge(*labels).dec()
        if held is None:
            return
        self.model_label.release(held)
        holders = self._in_flight_holders[labels] - 1
        if holders:
            self._in_flight_holders[labels] = holders
            return
        del self._in_flight_holders[labels]
        if held not in self.model_label.admitted:
            self._in_flight_gauge.remove(*labels)

    def upstream_answered(self, ok: bool) -> None:
        """The last attempt to reach Ollama (a proxied request, ``/test``, the ``/api/ps``
        poll) succeeded (``ok``) or could not connect: ``ollama_upstream_up``."""
        self._upstream_up.set(1 if ok else 0)

    # -- the listener of app.ollama.residency ------------------------------------------------

    def model_loaded(self, model: str, *, reload: bool) -> None:
        """A model came into Ollama's memory (``reload``: soon after it had left)."""
        label = self.model_label(model)  # Ollama holds it: a real name
        self._model_loads(label).inc()
        if reload:
            self._model_reloads(label).inc()

    def model_unloaded(self, model: str) -> None:
        self._model_unloads(self.model_label(model)).inc()

    def finished(self, record: ExchangeRecord) -> None:
        model = self.model_label(record.model, admit=record.status < 400)
        self._ended(record.id)
        endpoint = record.endpoint
        exemplar = {"request_id": record.id}
        self._requests(endpoint, model, str(record.status), record.category).inc()
        self._duration(endpoint, model).observe(record.duration_s, exemplar)
        if record.ttft_s is not None:
            self._ttft(endpoint, model).observe(record.ttft_s, exemplar)
        if record.upstream_error is not None:
            self._upstream_errors(record.upstream_error).inc()
        self.upstream_answered(record.upstream_error != "connect")

        if record.prompt_tokens:
            self._tokens(model, "prompt", record.category).inc(record.prompt_tokens)
        if record.completion_tokens:
            self._tokens(model, "completion", record.category).inc(record.completion_tokens)
        if record.ollama_load_s is not None:
            self._load_duration(model).observe(record.ollama_load_s)
        if record.ollama_prompt_eval_s is not None:
            self._prompt_eval_duration(model).observe(record.ollama_prompt_eval_s)
        if record.ollama_eval_s is not None:
            self._eval_duration(model).observe(record.ollama_eval_s)
        if (rate := record.prompt_tokens_per_second) is not None:
            self._tokens_per_second(model, "prompt").observe(rate)
        if (rate := record.tokens_per_second) is not None:
            self._tokens_per_second(model, "generation").observe(rate)
        if record.queue_wait_s is not None:
            self._queue_wait(model).observe(record.queue_wait_s, exemplar)
        if record.max_gap_s is not None:
            self._stream_max_gap(model).observe(record.max_gap_s, exemplar)
        if (ratio := record.context_ratio) is not None:
            self._context_utilization(model).observe(ratio)
        if record.truncation in TRUNCATION_KINDS:
            self._truncations(model, record.truncation).inc()
        if record.cold_cause is not None:
            self._cold_starts(model).inc()
        app = record.client_app
        self._client_requests(app).inc()
        if record.prompt_tokens:
            self._client_tokens(app, "prompt").inc(record.prompt_tokens)
        if record.completion_tokens:
            self._client_tokens(app, "completion").inc(record.completion_tokens)
        self._genai(record, model, exemplar)

    def _genai(self, record: ExchangeRecord, model: str, exemplar: dict[str, str]) -> None:
        operation = record.operation
        if operation is None:
            return
        labels = (operation, "ollama", model)
        failed = record.status >= 400 or record.upstream_error is not None or record.cancelled
        error_type = _error_type(record) if failed else ""
        self._genai_duration(*labels, error_type).observe(record.duration_s, exemplar)
        if record.prompt_tokens:
            self._genai_tokens(*labels, "input").observe(record.prompt_tokens)
        if record.completion_tokens:
            self._genai_tokens(*labels, "output").observe(record.completion_tokens)
        if failed:
            return
        if record.ttft_s is not None:
            self._genai_ttft(*labels).observe(record.ttft_s, exemplar)
        per_token = _time_per_output_token(record)
        if per_token is not None:
            self._genai_tpot(*labels).observe(per_token)


def _error_type(record: ExchangeRecord) -> str:
    if record.cancelled:
        return "cancelled"
    if record.upstream_error is not None:
        return record.upstream_error
    return str(record.status)


def _time_per_output_token(record: ExchangeRecord) -> float | None:
    """Ollama's own eval_duration / eval_count when it reports them (native API); otherwise
    the time after the first token spread over the remaining tokens of a stream."""
    tokens = record.completion_tokens
    if not tokens:
        return None
    if record.ollama_eval_s:
        return record.ollama_eval_s / tokens
    if record.ttft_s is not None and tokens > 1:
        return max(record.duration_s - record.ttft_s, 0.0) / (tokens - 1)
    return None

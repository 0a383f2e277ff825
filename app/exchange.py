"""Watching one request go by: the tap the forwarder feeds, and the recorder that makes taps.

The forwarder (``app.proxy``) hands every request to a tap: the request body (which may be
rewritten for usage injection), each response chunk (which may be filtered), and the end.
The tap reads them with ``app.ollama`` and, at the end, builds one ``ExchangeRecord`` that the
recorder hands to its sinks (Prometheus instruments; analytics). Sinks are called in the
request's task and must not block: metrics are in memory, analytics only enqueue.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from app.auth import SCOPE_KEY
from app.ollama.endpoints import Endpoint, classify
from app.ollama.models import normalise_model, recorded_model
from app.ollama.requests import NO_FACTS, RequestFacts, path_facts, read_request
from app.ollama.residency import Arrival, ColdStart, Residency
from app.ollama.streams import Answer, Reader, reader_for
from app.proxy.headers import STREAM_CONTENT_TYPES
from app.record import ExchangeRecord, new_record_id
from app.text import valid_text
from app.types import Scope

log = logging.getLogger(__name__)

# Label value for requests that carry no prompt to categorise.
NO_CATEGORY = "none"
NATIVE = ("generate", "chat")
# What loads a model: the requests whose model Ollama's scheduler must have in memory.
INFERENCE = ("chat", "text_completion", "embeddings")


class Sink(Protocol):
    def started(self, request_id: str, endpoint: str, model: str) -> None: ...

    def finished(self, record: ExchangeRecord) -> None: ...


class Recorder:
    """Makes a tap for each request and hands each finished record to the sinks."""

    def __init__(
        self,
        *,
        sinks: Sequence[Sink],
        categorise: Callable[[str], str],
        client_app: Callable[[str, str, str], str] = lambda user_agent, title, name: "",
        residency: Residency | None = None,
        node: str = "",
        inject_usage: bool = True,
        text_limit: int = 1 << 20,
        max_json_bytes: int = 64 << 20,
    ) -> None:
        self.sinks = tuple(sinks)
        self.categorise = categorise
        self.client_app = client_app
        # What Ollama holds in memory (from /api/ps and the requests); None: not watched.
        self.residency = residency
        self.node = node  # PROXY_NODE: on every record
        self.inject_usage = inject_usage
        self.text_limit = text_limit
        self.max_json_bytes = max_json_bytes

    def open(self, scope: Scope) -> ExchangeTap:
        return ExchangeTap(self, scope)

    def started(self, request_id: str, endpoint: str, model: str) -> None:
        for sink in self.sinks:
            try:
                sink.started(request_id, endpoint, model)
            except Exception:
                log.exception("metrics sink %r failed", sink)

    def finished(self, record: ExchangeRecord) -> None:
        for sink in self.sinks:
            try:
                sink.finished(record)
            except Exception:
                log.exception("sink %r failed on record %s", sink, record.id)


class ExchangeTap:
    """The observer of one request; implements ``app.proxy.relay.Tap``."""

    __slots__ = (
        "answer",
        "arrival",
        "begun",
        "category",
        "endpoint",
        "facts",
        "id",
        "last_chunk_at",
        "max_gap",
        "reader",
        "recorder",
        "request_bytes",
        "request_text",
        "response_bytes",
        "scope",
        "started",
        "started_wall",
        "status",
        "streamed",
    )

    def __init__(self, recorder: Recorder, scope: Scope) -> None:
        self.recorder = recorder
        self.scope = scope
        self.started = time.perf_counter()
        self.started_wall = time.time()
        self.id = new_record_id(self.started_wall)
        self.endpoint: Endpoint = classify(scope["path"])
        self.facts: RequestFacts = NO_FACTS
        self.category = NO_CATEGORY
        self.status = 0
        self.answer: Answer | None = None
        self.reader: Reader | None = None
        self.request_bytes = 0
        self.response_bytes = 0
        self.begun = False
        self.streamed = False
        self.request_text = ""
        self.last_chunk_at: float | None = None
        self.max_gap = 0.0
        self.arrival: Arrival | None = None

    @property
    def inspect_request(self) -> bool:
        """Whether the forwarder should hand over the whole request body before sending it
        (``DELETE /api/delete`` has one too)."""
        return self.endpoint.reads_body and self.scope["method"] not in ("GET", "HEAD")

    def begin(self, body: bytes | None) -> bytes | None:
        """Called once before the request goes upstream; returns the body to send."""
        if body is not None:
            self.request_bytes = len(body)
            # Kept as the client sent it (before any usage injection), capped.
            self.request_text = body[: self.recorder.text_limit].decode("utf-8", "replace")
            facts, body = read_request(self.endpoint, body, inject_usage=self.recorder.inject_usage)
            # A JSON-escaped lone surrogate (\ud800) cannot be encoded: as a metric label it
            # would break /metrics, in a record it would stall the SQL writer on that record.
            model, prompt = valid_text(facts.model), valid_text(facts.prompt)
            if model is not facts.model or prompt is not facts.prompt:
                facts = dataclasses.replace(facts, model=model, prompt=prompt)
            self.facts = facts
            if self.endpoint.operation in ("chat", "text_completion"):
                self.category = self.recorder.categorise(self.facts.prompt)
        else:
            self.facts = path_facts(self.endpoint, self.scope["path"])
        self._started()
        return body

    def _started(self) -> None:
        self.begun = True
        model = normalise_model(self.facts.model)
        self.recorder.started(self.id, self.endpoint.label, model)
        residency = self.recorder.residency
        if residency is not None and model and self.endpoint.operation in INFERENCE:
            facts = self.facts
            self.arrival = residency.arrive(model, facts.reload_options, facts.num_ctx)

    def response_start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
        self.streamed = content_type.lower().startswith(STREAM_CONTENT_TYPES)
        self.answer = Answer(text_limit=self.recorder.text_limit)
        self.reader = reader_for(
            self.answer,
            self.endpoint.shape,
            content_type,
            status=status,
            strip_usage=self.facts.usage_injected and status == 200,
            max_json_bytes=self.recorder.max_json_bytes,
        )

    def response_chunk(self, chunk: bytes) -> bytes:
        self.response_bytes += len(chunk)
        if self.reader is None:
            return chunk
        now = time.perf_counter()
        if self.last_chunk_at is not None and now - self.last_chunk_at > self.max_gap:
            self.max_gap = now - self.last_chunk_at
        self.last_chunk_at = now
        try:
            return self.reader.feed(chunk, now)
        except Exception:
            # A reader bug must never cost the client its answer: stop reading, pass bytes on.
            log.exception("could not read the answer to %s", self.scope["path"])
            self.reader = None
            return chunk

    def response_end(self) -> bytes:
        if self.reader is None:
            return b""
        try:
            return self.reader.end(time.perf_counter())
        except Exception:
            log.exception("could not read the end of the answer to %s", self.scope["path"])
            return b""

    def close(self, *, client_gone: bool, error_reason: str | None, error: str | None) -> None:
        """The exchange is over; build its record. Never raises."""
        if not self.begun:
            # The client left before the request went upstream: balance the in-flight count.
            self._started()
        try:
            self.recorder.finished(self._record(client_gone, error_reason, error))
        except Exception:
            log.exception("could not record %s %s", self.scope["method"], self.scope["path"])

    def _record(
        self, client_gone: bool, error_reason: str | None, error: str | None
    ) -> ExchangeRecord:
        now = time.perf_counter()
        answer = self.answer or Answer(text_limit=0)
        status = self.status or (499 if client_gone else 502)
        streamed = self.streamed
        # Only a stream whose reader knows its end marker can be judged cut short.
        judged = streamed and self.reader is not None
        # An error line that is the route's answer (pull of an unknown model) is the
        # client's error, not Ollama failing.
        if answer.error is not None:
            broken = not self.endpoint.stream_errors_are_answers
        else:
            broken = not answer.complete
        if error_reason is None and not client_gone and judged and status == 200 and broken:
            # Ollama reported a failure inside the stream, or the stream stopped early.
            error_reason = "midstream"
        if error is None:
            error = answer.error
        if error is None and error_reason == "midstream":
            error = "the stream ended before Ollama finished it"
        ttft = None
        if streamed and answer.first_token_at is not None:
            ttft = answer.first_token_at - self.started
        scope = self.scope
        client = scope.get("client")
        user_agent, title, client_name = _naming_headers(scope)
        model = recorded_model(self.facts.model or answer.model or "", status)
        residency = self.recorder.residency
        cold: ColdStart | None = None
        placement, gpu_share, context = None, None, self.facts.num_ctx
        if self.arrival is not None and residency is not None:
            answered = 200 <= status < 300 and error_reason is None and not client_gone
            load = answer.load_duration_ns
            cold, placement, gpu_share, loaded_context = residency.leave(
                self.arrival,
                answered=answered and answer.error is None,
                load_s=None if load is None else load / 1e9,
                unload=answer.done_reason == "unload",
            )
            if context is None:
                context = loaded_context
        if self.endpoint.operation not in ("chat", "text_completion"):
            context = None
        return ExchangeRecord(
            id=self.id,
            timestamp=self.started_wall,
            method=scope["method"],
            path=scope["path"],
            endpoint=self.endpoint.label,
            operation=self.endpoint.operation,
            # What the request named; for one too large to read, what the answer named.
            model=model,
            category=self.category,
            client=client[0] if client else "",
            user_agent=user_agent,
            status=status,
            streamed=streamed,
            prompt=self.facts.prompt,
            request_body=self.request_text,
            response=str(answer.text),
            thinking=str(answer.thinking),
            tool_calls=tuple(answer.tool_calls),
            error=error,
            upstream_error=error_reason,
            done_reason=answer.done_reason,
            cancelled=client_gone,
            text_truncated=answer.text.truncated or answer.thinking.truncated,
            duration_s=now - self.started,
            ttft_s=ttft,
            ollama_total_s=_seconds(answer.total_duration_ns),
            ollama_load_s=_seconds(answer.load_duration_ns),
            ollama_prompt_eval_s=_seconds(answer.prompt_eval_duration_ns),
            ollama_eval_s=_seconds(answer.eval_duration_ns),
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            request_bytes=self.request_bytes,
            response_bytes=self.response_bytes,
            usage_injected=self.facts.usage_injected,
            api_key=scope.get(SCOPE_KEY),
            client_app=self.recorder.client_app(user_agent, title, client_name),
            # Only native generate and chat report every phase (an embed has no prompt eval).
            queue_wait_s=_queue_wait(answer) if self.endpoint.shape in NATIVE else None,
            max_gap_s=self.max_gap if streamed and self.last_chunk_at is not None else None,
            context_tokens=context,
            truncation=_truncation(answer, context),
            cold_cause=None if cold is None else cold.cause,
            cold_detail=None if cold is None else cold.detail or None,
            placement=placement,
            gpu_share=gpu_share,
            requests_ahead=None if self.arrival is None else self.arrival.ahead,
            node=self.recorder.node,
        )


# The done reasons of a generation that stopped at its token limit: native and OpenAI
# ("length"), Anthropic ("max_tokens"), the Responses API ("max_output_tokens").
_OUTPUT_LIMIT = frozenset({"length", "max_tokens", "max_output_tokens"})


def _truncation(answer: Answer, context: int | None) -> str | None:
    """``prompt`` when the prompt reached the length Ollama cuts an over-long prompt to, with
    context shift on (llm/llama_server.go ``contextShiftPromptLimit(num_ctx, num_keep + 1)``,
    num_keep 4): its start was cut, or it alone filled half the context; ``output`` when the
    generation stopped at its limit."""
    prompt = answer.prompt_tokens
    if context and context > 1 and prompt is not None and prompt >= _cut_length(context):
        return "prompt"
    if answer.done_reason in _OUTPUT_LIMIT:
        return "output"
    return None


def _cut_length(context: int) -> int:
    return context - max((context - 5) // 2, 1)


def _queue_wait(answer: Answer) -> float | None:
    """total − load − prompt eval − eval, at least 0: where Ollama measures nothing else, the
    wait for a free parallel slot (server/routes.go; llm/llama_server.go sem.Acquire)."""
    if not answer.total_duration_ns:
        return None
    worked = (
        (answer.load_duration_ns or 0)
        + (answer.prompt_eval_duration_ns or 0)
        + (answer.eval_duration_ns or 0)
    )
    return max(answer.total_duration_ns - worked, 0) / 1e9


def _seconds(ns: int | None) -> float | None:
    return None if not ns else ns / 1e9


_NAMING = {b"user-agent": 0, b"x-title": 1, b"x-client-name": 2}


def _naming_headers(scope: Scope) -> tuple[str, str, str]:
    """User-Agent, X-Title and X-Client-Name (the first of each; "" when not sent), in one
    pass over the headers."""
    found: list[str | None] = [None, None, None]
    for key, value in scope["headers"]:
        index = _NAMING.get(key.lower())
        if index is not None and found[index] is None:
            found[index] = str(value.decode("latin-1"))
    user_agent, title, client_name = (value or "" for value in found)
    return user_agent, title, client_name

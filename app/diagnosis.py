"""Why a request was slow or cut, said in plain words from what its record knows.

``explain`` reads a finished record (``app.record.ExchangeRecord``; ``Explained`` names the
fields it reads, so this module imports nothing of the app) (the fields are measured elsewhere: the
durations by Ollama, the queue wait and stalls by ``app.exchange``, cold starts and placement
by ``app.ollama.residency``) and returns one line, the findings joined by "; ", e.g.
"cold start: 6.4 s loading qwen3:8b, reloaded because num_ctx 8192 ≠ loaded 4096; model
38 % on CPU". None when there is nothing to explain. The wording is this module's alone:
the API returns it and the page shows it.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["QUEUE_NOTE_S", "STALL_NOTE_S", "Explained", "explain"]

QUEUE_NOTE_S = 0.1
"""A queue wait shorter than this is not worth a word."""
STALL_NOTE_S = 2.0
"""A pause between two chunks of a stream at least this long is a stall."""


class Explained(Protocol):
    """What ``explain`` reads: the fields of ``app.record.ExchangeRecord`` it names."""

    @property
    def model(self) -> str: ...
    @property
    def done_reason(self) -> str | None: ...
    @property
    def ollama_load_s(self) -> float | None: ...
    @property
    def queue_wait_s(self) -> float | None: ...
    @property
    def requests_ahead(self) -> int | None: ...
    @property
    def max_gap_s(self) -> float | None: ...
    @property
    def context_tokens(self) -> int | None: ...
    @property
    def truncation(self) -> str | None: ...
    @property
    def cold_cause(self) -> str | None: ...
    @property
    def cold_detail(self) -> str | None: ...
    @property
    def placement(self) -> str | None: ...
    @property
    def gpu_share(self) -> float | None: ...


_WHY = {
    "first_load": "not in memory before",
    "expired": "loaded again after its keep-alive expired",
    "evicted": "loaded again after another model evicted it",
    "unloaded": "loaded again after it was unloaded",
    "options": "reloaded because the request's options differ",
    "unknown": "",
}


def explain(record: Explained) -> str | None:
    found = [
        finding
        for finding in (
            _cold(record),
            _queued(record),
            _placed(record),
            _cut(record),
            _stalled(record),
        )
        if finding
    ]
    return "; ".join(found) or None


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value:.2f} s"
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def _cold(record: Explained) -> str:
    cause = record.cold_cause
    if cause is None:
        return ""
    model = record.model or "the model"
    load = record.ollama_load_s
    head = f"cold start: {_seconds(load)} loading {model}" if load else f"cold start of {model}"
    detail = record.cold_detail or ""
    if cause == "options" and detail:
        why = f"reloaded because {detail}"
    elif cause == "evicted" and detail.startswith("by "):
        why = f"loaded again after it was evicted {detail}"
    else:
        why = _WHY.get(cause, "")
    return f"{head}, {why}" if why else head


def _queued(record: Explained) -> str:
    wait = record.queue_wait_s
    if wait is None or wait < QUEUE_NOTE_S:
        return ""
    text = f"waited {_seconds(wait)} for a free slot"
    ahead = record.requests_ahead
    if ahead:
        were = "request was" if ahead == 1 else "requests were"
        text += f" ({ahead} {were} in flight for this model when it arrived)"
    return text


def _placed(record: Explained) -> str:
    if record.placement == "cpu":
        return "model 100 % on CPU"
    if record.placement == "mixed" and record.gpu_share is not None:
        on_cpu = min(max(round((1 - record.gpu_share) * 100), 1), 99)
        return f"model {on_cpu} % on CPU"
    return ""


def _cut(record: Explained) -> str:
    if record.truncation == "prompt":
        context = record.context_tokens
        size = f"the {context}-token context" if context else "the context"
        return f"prompt filled {size}: the start was cut"
    if record.truncation == "output":
        return f"output stopped at its token limit (done_reason {record.done_reason})"
    return ""


def _stalled(record: Explained) -> str:
    gap = record.max_gap_s
    if gap is None or gap < STALL_NOTE_S:
        return ""
    return f"the stream stalled for {_seconds(gap)}"

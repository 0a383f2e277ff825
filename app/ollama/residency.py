"""What Ollama holds in memory and why a model had to be loaded: ``/api/ps`` and cold starts.

Ollama's scheduler (server/sched.go) keeps each loaded model in a runner; ``GET /api/ps``
lists the runners (not one being loaded), each with ``size``, ``size_vram`` (placement:
``size_vram < size`` is partly on the CPU), the per-slot ``context_length`` it was launched
with and ``expires_at`` (Go's zero time until the runner first goes idle). ``parse_ps`` reads
that answer; ``Residency`` keeps, per model, what the answers and the requests going by say:

- **loads, unloads and reloads**, from the changes between two answers (a model that
  appears, one that disappears, a ``context_length`` that changed) and from the requests
  themselves: a request answered for a model the last answer did not list proves a load the
  poll missed, a cold start forced by new options proves a reload. A reload is a load within
  ``reload_window`` seconds of the same model's unload (thrash: too few slots for models,
  keep-alive too short, memory too small, or clients sending different options);
- **why a model left**: its keep-alive had expired (``expires_at`` passed), another model
  came in meanwhile (evicted), or neither (an explicit unload, a crash);
- **cold starts**: ``arrive`` notes what was known of a request's model when it arrived,
  ``leave`` judges the request (``ColdStart`` or None) when it is over. With Ollama's
  ``load_duration`` (native routes) a cold start is a load of at least ``COLD_FLOOR_S`` for a
  model absent from a fresh answer when the request arrived, else a load of ``COLD_FACTOR``
  times the model's warm level (``COLD_FACTOR × COLD_FLOOR_S`` before one is known; the
  floor alone without a fresh answer); without (the OpenAI- and Anthropic-compatible routes
  report no durations) the model was absent from a fresh answer and no request for it was
  answered since. Its cause: options that force a reload
  (server/sched.go ``needsReload``: ``num_ctx`` against the loaded ``context_length``, the
  other launch options against those of the last request it served), else what happened
  to the model last: never seen loaded (first load), keep-alive expiry, eviction, unload.

Pure state: no I/O, time comes from ``clock``; fed from the event loop only (the poller, the
request taps), so it needs no lock. Memory is bounded by ``MAX_TRACKED`` models.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol

__all__ = [
    "COLD_CAUSES",
    "COLD_FACTOR",
    "COLD_FLOOR_S",
    "MAX_TRACKED",
    "PLACEMENTS",
    "Arrival",
    "ColdCause",
    "ColdStart",
    "Departure",
    "LoadedModel",
    "Memory",
    "Placement",
    "PsFormatError",
    "Residency",
    "ResidencyListener",
    "parse_ps",
    "placement",
]

COLD_FLOOR_S = 0.25
"""A load shorter than this is warm whatever the model's warm level."""
COLD_FACTOR = 5.0
"""A load this many times the model's warm level (and at least ``COLD_FLOOR_S``) is cold."""
MAX_TRACKED = 256
"""Models whose history is kept; beyond it, the least recently seen unloaded one is dropped."""
# A warm load folds into the level with this weight: it follows a machine that got slower.
_WARM_WEIGHT = 0.2

ColdCause = Literal["first_load", "expired", "evicted", "unloaded", "options", "unknown"]
COLD_CAUSES: tuple[ColdCause, ...] = (
    "first_load",
    "expired",
    "evicted",
    "unloaded",
    "options",
    "unknown",
)
Placement = Literal["gpu", "mixed", "cpu"]
PLACEMENTS: tuple[Placement, ...] = ("gpu", "mixed", "cpu")
_GO_ZERO_YEAR = 1  # Go's zero time, 0001-01-01: "not set yet"


class PsFormatError(ValueError):
    """An ``/api/ps`` answer not shaped as Ollama's; the message names what is wrong."""


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """One entry of ``/api/ps``; a value is None when Ollama left it out (or sent junk)."""

    model: str
    size: int | None
    size_vram: int | None
    # The context the model was launched with (per parallel slot).
    context_length: int | None = None
    # When its keep-alive runs out (Unix seconds); None while Ollama reports the zero time.
    expires_at: float | None = None


def parse_ps(document: Any) -> list[LoadedModel]:
    """The models of a decoded ``/api/ps`` answer; raises ``PsFormatError`` for one that is
    not shaped ``{"models": [{"model"|"name": ..., ...}]}`` or has a size that is no count.
    Fields older servers leave out, or that hold junk, are None (unknown), never guessed."""
    if not isinstance(document, Mapping) or not isinstance(document.get("models"), list):
        raise PsFormatError('answer is not shaped like {"models": [...]}')
    return [_entry(item) for item in document["models"]]


def _entry(item: Any) -> LoadedModel:
    if not isinstance(item, Mapping):
        raise PsFormatError("a models[] entry is not an object")
    name = next(
        (v for v in (item.get("model"), item.get("name")) if isinstance(v, str) and v), None
    )
    if name is None:
        raise PsFormatError("a models[] entry has neither model nor name")
    context = item.get("context_length")
    if isinstance(context, bool) or not isinstance(context, int) or not 0 < context < 1 << 31:
        context = None
    return LoadedModel(
        name,
        _size(item, name, "size"),
        _size(item, name, "size_vram"),
        context,
        _expiry(item.get("expires_at")),
    )


def _size(item: Mapping[str, Any], name: str, key: str) -> int | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PsFormatError(f"{key} of {name!r} is {value!r}")
    return value


def _expiry(value: Any) -> float | None:
    """RFC 3339 with up to nanoseconds (Go's ``time.Time``) as Unix seconds; None for the
    zero time and for anything unreadable."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    text = value.replace("Z", "+00:00").replace("z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Python reads at most 6 fractional digits
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None or moment.year <= _GO_ZERO_YEAR:
        return None
    try:
        return moment.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def placement(size: int | None, size_vram: int | None) -> tuple[Placement | None, float | None]:
    """Where a loaded model runs, as ``ollama ps`` says it (cmd/cmd.go): ``gpu`` when all of
    it is in VRAM, ``cpu`` when none is, ``mixed`` between; and the share in VRAM."""
    if size is None or size_vram is None or size <= 0:
        return None, None
    share = min(size_vram / size, 1.0)
    if share >= 1.0:
        return "gpu", 1.0
    if size_vram == 0:
        return "cpu", 0.0
    return "mixed", share


@dataclass(frozen=True, slots=True)
class ColdStart:
    """Why a request waited for its model to be loaded; ``detail`` says it in a few words
    (``num_ctx 8192 ≠ loaded 4096``, ``by qwen3:8b``) or is empty."""

    cause: ColdCause
    detail: str = ""


class Arrival(NamedTuple):
    """What was known of a request's model when it arrived (a tuple: made per request)."""

    model: str
    at: float
    options: tuple[tuple[str, str], ...]
    known: bool  # a fresh /api/ps answer (else nothing below is known)
    listed: bool  # loaded: in that answer, or proven loaded by a request since
    context_length: int | None  # what it is loaded with, when listed
    ahead: int  # requests for the same model in flight already
    num_ctx: int | None = None


class Departure(NamedTuple):
    """What the record of a finished request says about its model's memory."""

    cold: ColdStart | None  # None: warm, or not judged
    placement: Placement | None  # where the model runs, from a fresh /api/ps answer
    gpu_share: float | None
    context_length: int | None  # what it is loaded with, from a fresh answer


_NOT_JUDGED = Departure(None, None, None, None)


class Memory(NamedTuple):
    """What a fresh ``/api/ps`` answer says of a model: where it runs, with what context."""

    placement: Placement | None
    gpu_share: float | None
    context_length: int | None


_UNKNOWN = Memory(None, None, None)


class ResidencyListener(Protocol):
    def model_loaded(self, model: str, *, reload: bool) -> None: ...

    def model_unloaded(self, model: str) -> None: ...


class _Model:
    __slots__ = (
        "context_length",
        "evicted_by",
        "expires_at",
        "in_flight",
        "listed",
        "loaded",
        "loaded_at",
        "options",
        "placement",
        "seen",
        "share",
        "unload_cause",
        "unloaded_at",
        "warm_load",
    )

    def __init__(self) -> None:
        self.loaded = False  # in memory, as far as the proxy knows
        self.listed = False  # in the last /api/ps answer
        self.loaded_at: float | None = None  # when the proxy saw it come in
        self.unloaded_at: float | None = None
        self.unload_cause: ColdCause | None = None
        self.evicted_by = ""
        self.context_length: int | None = None
        self.expires_at: float | None = None
        self.placement: Placement | None = None
        self.share: float | None = None
        self.options: tuple[tuple[str, str], ...] | None = None  # of the last request served
        self.warm_load: float | None = None
        self.in_flight = 0
        self.seen = 0.0


class Residency:
    """Per model: in memory or not, since when, with what; why it left; its warm load level.

    ``observe`` takes each good ``/api/ps`` answer (``fresh_for``: how long it stands for the
    truth: after that, what it said is unknown); ``arrive`` / ``leave`` bracket each inference
    request. Events go to the ``listener`` (the metrics); ``wake`` is called on a cold start,
    so the poller looks again at once.
    """

    def __init__(
        self,
        *,
        reload_window: float = 600.0,
        listener: ResidencyListener | None = None,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reload_window = reload_window
        self.listener = listener
        self.wake = wake
        self.clock = clock
        self._models: dict[str, _Model] = {}
        self._fresh_until = -math.inf
        self._observed_at: float | None = None  # the last answer's time

    # -- /api/ps ---------------------------------------------------------------------------

    def observe(self, models: Iterable[LoadedModel], fresh_for: float) -> None:
        now = self.clock()
        first = self._observed_at is None
        previous_at = self._observed_at if self._observed_at is not None else now
        listed: dict[str, LoadedModel] = {}
        for entry in models:
            listed.setdefault(entry.model, entry)
        for name in list(listed)[:MAX_TRACKED]:
            entry = listed[name]
            state = self._state(name, now)
            if not first:
                if not state.loaded:
                    self._loaded(name, state, now)
                elif (
                    state.context_length is not None
                    and entry.context_length is not None
                    and entry.context_length != state.context_length
                    and (state.loaded_at is None or state.loaded_at < previous_at)
                ):
                    # Launched again with another context: a reload the requests did not show.
                    self._unloaded(name, state, now, "options")
                    self._loaded(name, state, now)
            state.loaded = state.listed = True  # on the first answer: loaded before we looked
            state.context_length = entry.context_length
            state.expires_at = entry.expires_at
            state.placement, state.share = placement(entry.size, entry.size_vram)
        # Who could have pushed a model out: those that came in since the last answer, and
        # those being loaded now (requests in flight for a model not listed).
        arrived = [
            name
            for name, state in self._models.items()
            if (state.loaded_at is not None and state.loaded_at >= previous_at)
            or (state.in_flight and name not in listed)
        ]
        for name, state in self._models.items():
            if name in listed or not state.loaded:
                state.listed = name in listed
                continue
            state.listed = False
            if state.in_flight:
                continue  # a request is using it: still loaded, or loading again
            expired = state.expires_at is not None and state.expires_at <= now
            others = [other for other in arrived if other != name]
            cause: ColdCause = "expired" if expired else "evicted" if others else "unloaded"
            self._unloaded(name, state, now, cause)
            state.evicted_by = ", ".join(sorted(others)[:3]) if cause == "evicted" else ""
        self._observed_at = now
        self._fresh_until = now + fresh_for

    def known(self) -> bool:
        """Whether a fresh ``/api/ps`` answer stands."""
        return self.clock() < self._fresh_until

    def memory(self, model: str) -> Memory:
        """Where ``model`` runs and the context it is loaded with, when a fresh answer
        listed it (else all unknown)."""
        state = self._models.get(model)
        return _UNKNOWN if state is None else self._memory(state, self.clock())

    def _memory(self, state: _Model, now: float) -> Memory:
        if not state.listed or now >= self._fresh_until:
            return _UNKNOWN
        return Memory(state.placement, state.share, state.context_length)

    # -- requests --------------------------------------------------------------------------

    def arrive(
        self, model: str, options: tuple[tuple[str, str], ...], num_ctx: int | None = None
    ) -> Arrival:
        now = self.clock()
        known = now < self._fresh_until
        state = self._models.get(model)
        if state is None:
            state = self._state(model, now)
        else:
            state.seen = now
        # Positional: this runs for every inference request.
        arrival = Arrival(
            model,
            now,
            options,
            known,
            known and state.loaded,
            state.context_length if known and state.listed else None,
            state.in_flight,
            num_ctx,
        )
        state.in_flight += 1
        return arrival

    def leave(
        self, arrival: Arrival, *, answered: bool, load_s: float | None, unload: bool = False
    ) -> Departure:
        """The request that ``arrive`` returned ``arrival`` for is over: ``answered`` when
        Ollama answered it (a 2xx), with ``load_s`` its ``load_duration`` when reported;
        ``unload`` for a request that asked for the model to be unloaded. Returns its cold
        start (None when it was warm or cannot be judged) and what a fresh ``/api/ps``
        answer says of its model now."""
        now = self.clock()
        state = self._models.get(arrival.model)
        if state is None:  # dropped meanwhile (more than MAX_TRACKED models)
            state = self._state(arrival.model, now)
        else:
            state.seen = now
        state.in_flight = max(state.in_flight - 1, 0)
        if not answered:
            return _NOT_JUDGED
        if unload:
            state.options = None
            return _NOT_JUDGED
        cause = None
        if self._cold(arrival, state, load_s):
            cause = self._cause(arrival, state)
            if state.loaded and (state.loaded_at is None or state.loaded_at < arrival.at):
                # Listed, yet loaded again for this request: the runner was replaced.
                self._unloaded(arrival.model, state, now, cause.cause)
                self._loaded(arrival.model, state, now)
            self.wake()
        if arrival.known and not state.loaded:
            # Answered, so loaded: a load that the last answer did not show.
            self._loaded(arrival.model, state, now)
        state.options = arrival.options
        return Departure(cause, *self._memory(state, now))

    def _cold(self, arrival: Arrival, state: _Model, load_s: float | None) -> bool:
        if load_s is None:
            # No durations: absent when it arrived, and no request for it answered since.
            return arrival.known and not arrival.listed
        level = state.warm_load
        if load_s < COLD_FLOOR_S:
            cold = False
        elif arrival.known and not arrival.listed:
            cold = True  # not in memory when it arrived, and a load that took time
        elif level is not None:
            cold = load_s >= COLD_FACTOR * level
        else:  # listed (or unknown) and no warm level yet: only a load no warm one reaches
            cold = load_s >= COLD_FACTOR * COLD_FLOOR_S or not arrival.known
        if not cold:
            state.warm_load = load_s if level is None else level + _WARM_WEIGHT * (load_s - level)
        return cold

    def _cause(self, arrival: Arrival, state: _Model) -> ColdStart:
        changed = _changed_option(arrival, state)
        if changed is not None:
            return ColdStart("options", changed)
        if not arrival.known:
            return ColdStart("unknown")
        if arrival.listed:
            return ColdStart("unknown")  # listed, same options: went between poll and arrival
        if state.unload_cause is None:
            return ColdStart("first_load")
        if state.unload_cause == "evicted" and state.evicted_by:
            return ColdStart("evicted", f"by {state.evicted_by}")
        return ColdStart(state.unload_cause)

    # -- bookkeeping -----------------------------------------------------------------------

    def _state(self, model: str, now: float) -> _Model:
        state = self._models.get(model)
        if state is None:
            if len(self._models) >= MAX_TRACKED:
                self._forget_one()
            state = self._models[model] = _Model()
        state.seen = now
        return state

    def _forget_one(self) -> None:
        idle = [(s.seen, n) for n, s in self._models.items() if not s.loaded and not s.in_flight]
        pool = idle or [(s.seen, n) for n, s in self._models.items()]
        del self._models[min(pool)[1]]

    def _loaded(self, model: str, state: _Model, now: float) -> None:
        reload = state.unloaded_at is not None and now - state.unloaded_at <= self.reload_window
        state.loaded = True
        state.loaded_at = now
        if self.listener is not None:
            self.listener.model_loaded(model, reload=reload)

    def _unloaded(self, model: str, state: _Model, now: float, cause: ColdCause) -> None:
        state.loaded = state.listed = False
        state.unloaded_at = now
        state.unload_cause = cause
        if self.listener is not None:
            self.listener.model_unloaded(model)


def _changed_option(arrival: Arrival, state: _Model) -> str | None:
    """The first launch option in which the request differs from the loaded runner, said
    as ``num_ctx 8192 ≠ loaded 4096``; None when none is known to differ."""
    asked = dict(arrival.options)
    loaded_ctx = arrival.context_length
    if arrival.num_ctx is not None and loaded_ctx is not None and arrival.num_ctx != loaded_ctx:
        return f"num_ctx {arrival.num_ctx} ≠ loaded {arrival.context_length}"
    if state.options is None:
        return None
    launched = dict(state.options)
    for name in sorted(asked.keys() | launched.keys()):
        if name == "num_ctx" and arrival.context_length is not None and name in asked:
            continue  # compared with what /api/ps says it is loaded with, above
        new, old = asked.get(name), launched.get(name)
        if new != old:
            loaded = old if old is not None else "default"
            return f"{name} {new if new is not None else 'default'} ≠ loaded {loaded}"
    return None

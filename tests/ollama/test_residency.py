"""``app.ollama.residency``: /api/ps answers and requests → loads, unloads, reloads, cold
starts and their causes, placement. In process, with a clock the test moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from app.ollama.residency import (
    COLD_FACTOR,
    COLD_FLOOR_S,
    MAX_TRACKED,
    ColdStart,
    Departure,
    LoadedModel,
    PsFormatError,
    Residency,
    parse_ps,
    placement,
)

FRESH = 30.0  # how long an answer stands, as the poller says (3 intervals of 10 s)
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Events:
    """A ResidencyListener that keeps what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def model_loaded(self, model: str, *, reload: bool) -> None:
        self.seen.append(("reload" if reload else "load", model))

    def model_unloaded(self, model: str) -> None:
        self.seen.append(("unload", model))

    def take(self) -> list[tuple[str, str]]:
        seen, self.seen = self.seen, []
        return seen


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def residency(clock: Clock, events: Events) -> Residency:
    return Residency(reload_window=600, listener=events, clock=clock)


def ps(*models: str, context: int = 4096, expires_in: float | None = 300.0) -> list[LoadedModel]:
    expires = None if expires_in is None else T0 + expires_in
    return [LoadedModel(m, 100, 100, context, expires) for m in models]


def request(
    residency: Residency,
    model: str,
    *,
    load_s: float | None,
    options: tuple[tuple[str, str], ...] = (),
    num_ctx: int | None = None,
    answered: bool = True,
) -> ColdStart | None:
    arrival = residency.arrive(model, options, num_ctx)
    return residency.leave(arrival, answered=answered, load_s=load_s).cold


# -- /api/ps answers ------------------------------------------------------------------------


def go_time(moment: datetime) -> str:
    """RFC 3339 with nanoseconds and a local offset, as Ollama's Go encoder writes it."""
    return moment.isoformat(timespec="microseconds").replace("+", "123+", 1)


def test_parse_reads_what_ollama_sends_and_leaves_junk_unknown() -> None:
    expiry = datetime(2026, 12, 3, 10, 0, 5, 250000, tzinfo=timezone(timedelta(hours=1)))
    document: dict[str, Any] = {
        "models": [
            {
                "name": "llama3.2:latest",
                "model": "llama3.2:latest",
                "size": 3_000,
                "size_vram": 1_200,
                "context_length": 8192,
                "expires_at": go_time(expiry),
            },
            # An older server: no context, no sizes; a zero time while the first request runs.
            {"name": "qwen3:8b", "expires_at": "0001-01-01T00:00:00Z"},
            {"model": "gemma:2b", "context_length": "big", "expires_at": "soon"},
        ]
    }
    first, second, third = parse_ps(document)
    assert first == LoadedModel("llama3.2:latest", 3_000, 1_200, 8192, expiry.timestamp())
    assert second == LoadedModel("qwen3:8b", None, None, None, None)
    assert third == LoadedModel("gemma:2b", None, None, None, None)
    assert parse_ps({"models": []}) == []


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "shaped like"),
        ({"models": {}}, "shaped like"),
        ({"models": ["x"]}, "not an object"),
        ({"models": [{"size": 1}]}, "neither model nor name"),
        ({"models": [{"model": "m", "size": -1}]}, "size of 'm'"),
        ({"models": [{"model": "m", "size_vram": True}]}, "size_vram of 'm'"),
    ],
)
def test_parse_refuses_answers_not_shaped_as_ollamas(document: Any, message: str) -> None:
    with pytest.raises(PsFormatError, match=message):
        parse_ps(document)


@pytest.mark.parametrize(
    ("size", "vram", "expected"),
    [
        (100, 100, ("gpu", 1.0)),
        (100, 120, ("gpu", 1.0)),
        (100, 0, ("cpu", 0.0)),
        (100, 62, ("mixed", 0.62)),
        (100, None, (None, None)),
        (0, 0, (None, None)),
    ],
)
def test_placement_is_what_ollama_ps_prints(
    size: int, vram: int | None, expected: tuple[str | None, float | None]
) -> None:
    assert placement(size, vram) == expected


# -- loads, unloads, reloads ------------------------------------------------------------------


def test_the_first_answer_is_a_baseline_then_changes_are_loads_and_unloads(
    residency: Residency, clock: Clock, events: Events
) -> None:
    residency.observe(ps("a"), FRESH)
    assert events.take() == []  # loaded before the proxy looked
    clock.now += 10
    residency.observe(ps("a", "b"), FRESH)
    assert events.take() == [("load", "b")]
    clock.now += 400  # past a's expiry (T0 + 300)
    residency.observe(ps("b", expires_in=1000), FRESH)
    assert events.take() == [("unload", "a")]
    clock.now += 100  # within the reload window of a's unload
    residency.observe(ps("a", "b", expires_in=1000), FRESH)
    assert events.take() == [("reload", "a")]
    clock.now += 10
    residency.observe(ps("b", expires_in=1000), FRESH)
    clock.now += 601  # a loads again after the window: a load, not a reload
    residency.observe(ps("a", "b", expires_in=10_000), FRESH)
    assert events.take() == [("unload", "a"), ("load", "a")]


def test_a_load_shorter_than_the_poll_interval_is_not_missed(
    residency: Residency, clock: Clock, events: Events
) -> None:
    woken: list[bool] = []
    residency.wake = lambda: woken.append(True)
    residency.observe(ps(), FRESH)
    clock.now += 1
    cold = request(residency, "a", load_s=2.0)  # loaded, answered, unloaded before a poll
    assert cold == ColdStart("first_load")
    assert events.take() == [("load", "a")]
    assert woken == [True]  # the poller is asked to look at once
    clock.now += 5
    residency.observe(ps(), FRESH)
    assert events.take() == [("unload", "a")]


def test_an_answered_request_proves_a_load_the_poll_did_not_show(
    residency: Residency, clock: Clock, events: Events
) -> None:
    residency.observe(ps(), FRESH)
    # No durations (an OpenAI-compatible route): absent from a fresh answer, so cold.
    assert request(residency, "a", load_s=None) == ColdStart("first_load")
    assert events.take() == [("load", "a")]
    assert request(residency, "a", load_s=None) is None  # answered since: warm
    clock.now += 1
    residency.observe(ps("a"), FRESH)
    assert events.take() == []  # the poll confirms the load; not counted twice


def test_a_model_in_use_is_not_unloaded_by_an_answer_taken_while_it_loads(
    residency: Residency, clock: Clock, events: Events
) -> None:
    residency.observe(ps(), FRESH)
    first = residency.arrive("a", ())
    clock.now += 1
    residency.observe(ps(), FRESH)  # still loading: Ollama lists it only once it runs
    assert events.take() == []
    assert residency.leave(first, answered=True, load_s=3.0).cold == ColdStart("first_load")
    assert events.take() == [("load", "a")]


# -- cold starts ---------------------------------------------------------------------------


def test_a_warm_request_is_never_a_cold_start(residency: Residency) -> None:
    residency.observe(ps("a"), FRESH)
    assert request(residency, "a", load_s=0.004) is None
    assert request(residency, "a", load_s=0.004 * (COLD_FACTOR - 0.5)) is None
    assert request(residency, "a", load_s=COLD_FLOOR_S * 1.5) is not None  # listed, yet loaded


def test_an_absent_model_is_cold_from_the_floor_on(residency: Residency) -> None:
    residency.observe(ps(), FRESH)
    assert request(residency, "b", load_s=COLD_FLOOR_S * 0.99) is None
    assert request(residency, "c", load_s=COLD_FLOOR_S * 1.01) == ColdStart("first_load")


def test_cold_is_judged_against_the_models_warm_level(residency: Residency) -> None:
    residency.observe(ps("slow"), FRESH)
    for _ in range(5):  # a slow machine: half a second of scheduling on every warm request
        assert request(residency, "slow", load_s=0.5) is None
    assert request(residency, "slow", load_s=0.5 * (COLD_FACTOR - 1)) is None
    assert request(residency, "slow", load_s=0.6 * (COLD_FACTOR + 2)) is not None
    residency.observe(ps("fresh"), FRESH)
    # Listed and no warm level yet: only a load no warm one reaches.
    assert request(residency, "fresh", load_s=COLD_FACTOR * COLD_FLOOR_S * 0.9) is None


def test_requests_queued_behind_one_load_are_all_cold_and_it_is_one_load(
    residency: Residency, clock: Clock, events: Events
) -> None:
    residency.observe(ps(), FRESH)
    arrivals = [residency.arrive("a", ()) for _ in range(3)]
    assert [a.ahead for a in arrivals] == [0, 1, 2]
    clock.now += 3
    causes = [residency.leave(a, answered=True, load_s=None).cold for a in arrivals]
    assert causes == [ColdStart("first_load")] * 3
    assert events.take() == [("load", "a")]


def test_after_expiry_after_eviction_and_after_an_unload(
    residency: Residency, clock: Clock, events: Events
) -> None:
    residency.observe(ps("a", "b", "c"), FRESH)
    clock.now += 400  # a, b and c were due at T0 + 300: expired
    residency.observe(ps(), FRESH)
    assert request(residency, "a", load_s=2.0) == ColdStart("expired")
    clock.now += 1
    residency.observe(ps("a", expires_in=10_000), FRESH)
    request(residency, "b", load_s=2.5)  # b comes in; a goes before its expiry: evicted
    clock.now += 1
    residency.observe(ps("b", expires_in=10_000), FRESH)
    assert request(residency, "a", load_s=2.0) == ColdStart("evicted", "by b")
    clock.now += 1
    residency.observe(ps("a", "b", expires_in=10_000), FRESH)
    clock.now += 1
    residency.observe(ps("b", expires_in=10_000), FRESH)  # gone, nothing came in, not due
    assert request(residency, "a", load_s=2.0) == ColdStart("unloaded")


def test_a_reload_forced_by_num_ctx_is_named_and_counted_once(
    residency: Residency, clock: Clock, events: Events
) -> None:
    residency.observe(ps("a", context=4096), FRESH)
    options = (("num_ctx", "8192"),)
    cold = request(residency, "a", load_s=4.0, options=options, num_ctx=8192)
    assert cold == ColdStart("options", "num_ctx 8192 ≠ loaded 4096")
    assert events.take() == [("unload", "a"), ("reload", "a")]
    clock.now += 1
    residency.observe(ps("a", context=8192), FRESH)
    assert events.take() == []  # the poll sees the new context: the same reload
    assert residency.memory("a").context_length == 8192
    assert request(residency, "a", load_s=0.01, options=options, num_ctx=8192) is None


def test_a_context_change_only_the_poll_saw_is_a_reload(
    residency: Residency, clock: Clock, events: Events
) -> None:
    residency.observe(ps("a", context=4096), FRESH)
    clock.now += 10  # someone bypassing the proxy asked for another context
    residency.observe(ps("a", context=32768), FRESH)
    assert events.take() == [("unload", "a"), ("reload", "a")]


def test_other_launch_options_are_compared_with_the_last_request_served(
    residency: Residency,
) -> None:
    residency.observe(ps("a"), FRESH)
    assert request(residency, "a", load_s=0.01) is None  # served with the defaults
    batch = (("num_batch", "1024"),)
    assert request(residency, "a", load_s=3.0, options=batch) == ColdStart(
        "options", "num_batch 1024 ≠ loaded default"
    )
    assert request(residency, "a", load_s=3.0) == ColdStart(
        "options", "num_batch default ≠ loaded 1024"
    )


def test_without_a_fresh_answer_nothing_is_guessed(residency: Residency, clock: Clock) -> None:
    assert not residency.known()
    assert request(residency, "a", load_s=None) is None  # no durations, no answer: unknown
    assert request(residency, "a", load_s=3.0) == ColdStart("unknown")
    residency.observe(ps("a"), FRESH)
    assert residency.memory("a").context_length == 4096
    clock.now += FRESH + 1  # the poller stopped answering
    assert residency.memory("a").context_length is None
    assert residency.memory("a") == (None, None, None)
    assert request(residency, "a", load_s=3.0) == ColdStart("unknown")


def test_failed_and_unload_requests_are_not_judged(residency: Residency) -> None:
    residency.observe(ps(), FRESH)
    assert request(residency, "a", load_s=5.0, answered=False) is None
    arrival = residency.arrive("a", ())
    assert residency.leave(arrival, answered=True, load_s=None, unload=True).cold is None
    assert residency.arrive("a", ()).ahead == 0  # every arrival was balanced by its leave


def test_the_history_is_bounded(residency: Residency, events: Events) -> None:
    residency.observe(ps(), FRESH)
    for i in range(MAX_TRACKED + 50):
        request(residency, f"model-{i}", load_s=None)
    assert len(residency._models) <= MAX_TRACKED
    assert len(events.take()) == MAX_TRACKED + 50  # every load still counted


def test_expiry_times_in_any_offset_are_the_same_instant() -> None:
    utc = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    for offset in (-8, 0, 5.5):
        local = utc.astimezone(timezone(timedelta(hours=offset)))
        (entry,) = parse_ps({"models": [{"model": "m", "expires_at": go_time(local)}]})
        assert entry.expires_at == utc.timestamp()


def test_leaving_says_where_the_model_runs_and_its_context(
    residency: Residency, clock: Clock
) -> None:
    residency.observe([LoadedModel("a", 1000, 250, 8192, None)], FRESH)
    left = residency.leave(residency.arrive("a", ()), answered=True, load_s=0.01)
    assert left == Departure(None, "mixed", 0.25, 8192)
    clock.now += FRESH  # the answer is no longer fresh: unknown
    left = residency.leave(residency.arrive("a", ()), answered=True, load_s=0.01)
    assert left == Departure(None, None, None, None)


def test_a_model_pushed_out_while_another_loads_was_evicted_by_it(
    residency: Residency, clock: Clock, events: Events
) -> None:
    residency.observe(ps("a"), FRESH)
    loading = residency.arrive("b", ())  # b is being loaded: Ollama lists neither now
    clock.now += 1
    residency.observe(ps(), FRESH)
    assert events.take() == [("unload", "a")]
    residency.leave(loading, answered=True, load_s=3.0)
    assert request(residency, "a", load_s=3.0) == ColdStart("evicted", "by b")

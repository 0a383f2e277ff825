"""Bounded label values (app.metrics.labels): the limit, folding into ``other``, admission."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, Counter

from app.metrics.labels import OTHER, BoundedLabel


def test_bounded_label() -> None:
    label = BoundedLabel("model", 1)
    assert label("x", admit=False) == "other"
    assert label("x") == "x"
    assert label("y") == "other"
    assert label("x", admit=False) == "x"


def test_the_first_limit_distinct_values_are_admitted_and_later_ones_fold() -> None:
    label = BoundedLabel("model", 3)
    assert [label(v) for v in ("a", "b", "a", "c", "d", "e", "b")] == [
        "a",
        "b",
        "a",
        "c",
        OTHER,
        OTHER,
        "b",
    ]
    assert label.admitted == {"a", "b", "c"}
    assert OTHER == "other"


def test_values_not_admitted_take_no_slot() -> None:
    label = BoundedLabel("model", 2)
    # Names Ollama refused: they are labelled ``other`` and never crowd out real models.
    assert {label(f"junk-{n}", admit=False) for n in range(1000)} == {OTHER}
    assert label.admitted == set()
    assert label("llama3.2:latest") == "llama3.2:latest"
    assert label("qwen3:latest") == "qwen3:latest"
    assert label("junk-1") == OTHER  # the slots are taken now


def test_an_admitted_value_stays_admitted() -> None:
    label = BoundedLabel("model", 1)
    assert label("kept") == "kept"
    for n in range(100):
        assert label(f"new-{n}") == OTHER
    assert label("kept") == "kept"
    assert label("kept", admit=False) == "kept"


def test_a_limit_of_zero_labels_everything_other() -> None:
    label = BoundedLabel("model", 0)
    assert {label(v) for v in ("a", "b", "")} == {OTHER}
    assert label.admitted == set()


def test_the_first_overflow_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    label = BoundedLabel("model", 1)
    with caplog.at_level(logging.WARNING, logger="app.metrics.labels"):
        label("a")
        label("b", admit=False)  # refused, not an overflow
        assert caplog.records == []
        label("b")
        label("c")
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "more than 1 distinct model values: further ones are labelled 'other'"
    )


def test_a_counter_labelled_through_it_keeps_bounded_series() -> None:
    registry = CollectorRegistry()
    requests = Counter("requests", "Requests.", ["model"], registry=registry)
    label = BoundedLabel("model", 5)
    for n in range(500):
        requests.labels(label(f"model-{n % 50}")).inc()
    series = {
        sample.labels["model"]: sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "requests_total"
    }
    assert series == {
        "model-0": 10.0,
        "model-1": 10.0,
        "model-2": 10.0,
        "model-3": 10.0,
        "model-4": 10.0,
        OTHER: 450.0,
    }


def test_a_held_value_is_its_own_label_until_released() -> None:
    label = BoundedLabel("model", 2)
    assert label.hold("new:latest") == "new:latest"
    assert label.hold("new:latest") == "new:latest"
    assert label.held == {"new:latest": 2}
    assert "new:latest" not in label.admitted  # held, not trusted
    label.release("new:latest")
    label.release("new:latest")
    assert label.held == {}


def test_held_values_are_bounded_and_the_rest_fold() -> None:
    label = BoundedLabel("model", 2)
    assert [label.hold(v) for v in ("a", "b", "c")] == ["a", "b", OTHER]
    label.release("a")
    assert label.hold("c") == "c"  # a slot came free


def test_an_admitted_value_needs_no_hold() -> None:
    label = BoundedLabel("model", 1)
    assert label("a") == "a"
    assert label.hold("a") == "a"
    assert label.held == {}
    assert label.hold("b") == "b"  # holds are bounded apart from admissions

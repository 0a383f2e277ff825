"""The finished record: its ids (ULIDs), the rates it derives, and the ``STORED`` declarations."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from app.record import STORED, ExchangeRecord, Stored, new_record_id, ulid_floor, ulid_ms
from tests.support import sample_record

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")  # no I, L, O, U
STAMPS = [0.0, 1.0005, 1_469_918_176.385, 1_796_212_900.25, time.time()]


# -- record ids --------------------------------------------------------------------------------


@pytest.mark.parametrize("stamp", STAMPS)
def test_a_record_id_is_a_ulid_of_its_millisecond(stamp: float) -> None:
    record_id = new_record_id(stamp)
    assert len(record_id) == 26
    assert set(record_id) <= CROCKFORD
    assert ulid_ms(record_id) == int(stamp * 1000)


def test_ulids_encode_time_as_the_specification_does() -> None:
    # The example of the ULID specification's reference implementation (encodeTime).
    assert ulid_floor(1_469_918_176_385)[:10] == "01ARYZ6S41"
    assert ulid_ms("01ARYZ6S41" + "TSV4RRFFQ69G5FAV") == 1_469_918_176_385


def test_an_id_without_a_time_is_made_now() -> None:
    before = int(time.time() * 1000)
    record_id = new_record_id()
    after = int(time.time() * 1000)
    assert before <= ulid_ms(record_id) <= after


def test_ids_sort_by_time_and_differ_within_a_millisecond() -> None:
    in_order = [new_record_id(stamp) for stamp in sorted(STAMPS)]
    assert sorted(in_order) == in_order
    same_ms = {new_record_id(1_796_212_900.25) for _ in range(1000)}
    assert len(same_ms) == 1000  # 80 random bits each


@pytest.mark.parametrize("stamp", STAMPS)
def test_the_floor_of_a_millisecond_bounds_its_ids(stamp: float) -> None:
    ms = int(stamp * 1000)
    floor = ulid_floor(ms)
    assert ulid_ms(floor) == ms
    for _ in range(100):
        assert floor <= new_record_id(stamp) < ulid_floor(ms + 1)


def test_the_floor_is_clamped_to_what_a_ulid_can_hold() -> None:
    assert ulid_floor(-5) == ulid_floor(0)
    assert ulid_ms(ulid_floor(0)) == 0
    highest = (1 << 48) - 1
    assert ulid_floor(highest + 1000) == ulid_floor(highest)
    assert ulid_ms(ulid_floor(highest)) == highest


# -- rates -------------------------------------------------------------------------------------


def test_rates_are_tokens_over_ollamas_durations() -> None:
    record = sample_record(
        prompt_tokens=26, ollama_prompt_eval_s=0.5, completion_tokens=30, ollama_eval_s=1.5
    )
    assert record.prompt_tokens_per_second == pytest.approx(26 / 0.5)
    assert record.tokens_per_second == pytest.approx(30 / 1.5)


@pytest.mark.parametrize(
    ("tokens", "seconds"), [(None, 1.5), (0, 1.5), (30, None), (30, 0.0), (None, None)]
)
def test_a_rate_without_a_count_or_a_duration_is_none(
    tokens: int | None, seconds: float | None
) -> None:
    record = sample_record(
        prompt_tokens=tokens,
        ollama_prompt_eval_s=seconds,
        completion_tokens=tokens,
        ollama_eval_s=seconds,
    )
    assert record.prompt_tokens_per_second is None
    assert record.tokens_per_second is None


# -- the STORED declarations -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "size"), [("label", None), ("flag", 1), ("seconds", 8), ("integer", 4)]
)
def test_a_size_belongs_to_labels_and_texts(kind: Any, size: int | None) -> None:
    with pytest.raises(ValueError, match="size"):
        Stored("x", kind, size)


def test_every_stored_field_is_read_from_the_record() -> None:
    # A Stored line whose name the record lacks would fail at the first write (getattr),
    # after the migration has run: found here instead. ``truncated`` is the one field
    # made in storage (the record's text_truncated, or a text cut to the budget).
    attributes = {f.name for f in dataclasses.fields(ExchangeRecord)}
    attributes |= {
        name for name, value in vars(ExchangeRecord).items() if isinstance(value, property)
    }
    assert [f.name for f in STORED if f.name not in attributes] == ["truncated"]
    assert "text_truncated" in attributes


def test_each_field_is_stored_once_and_the_id_alone_is_the_key() -> None:
    names = [field.name for field in STORED]
    assert len(set(names)) == len(names)
    assert [field.name for field in STORED if field.key] == ["id"]

"""A finished record as a row (``to_row``): declared fields in order, texts cut, privacy kept."""

from __future__ import annotations

import json

import pytest

from app.analytics.jsonl import compact_json
from app.analytics.rows import to_row
from app.record import STORED, Stored
from tests.analytics import BUDGET, DERIVED, STRINGS, names
from tests.support import sample_record


def test_rows_have_the_declared_fields_in_order() -> None:
    row = to_row(sample_record(), store_prompts=True, max_text_bytes=BUDGET)
    assert list(row) == names(STORED)
    # The JSON line (JSONL file, Loki entry) is the row, key for key.
    assert list(json.loads(compact_json(row))) == names(STORED)


@pytest.mark.parametrize(
    "field",
    [f for f in STORED if f.size and not f.key and f.name not in DERIVED],
    ids=lambda f: str(f.name),
)
def test_a_sized_string_is_cut_to_its_size(field: Stored) -> None:
    record = sample_record(**{field.name: "é" * (field.size or 0) + "overflow"})
    row = to_row(record, store_prompts=True, max_text_bytes=BUDGET)
    assert row[field.name] == "é" * (field.size or 0)
    assert row["truncated"] is False  # only the text budget sets it


def test_budget_texts_are_cut_in_utf8_bytes_and_mark_the_row() -> None:
    budgeted = [f.name for f in STORED if f.kind == "text" and f.size is None]
    record = sample_record(**{name: "€" * BUDGET for name in budgeted if name != "tool_calls"})
    row = to_row(record, store_prompts=True, max_text_bytes=BUDGET)
    for name in budgeted:
        if name != "tool_calls":
            assert row[name] == "€" * (BUDGET // 3), name  # whole characters only
    assert row["truncated"] is True


def test_without_stored_prompts_only_private_texts_are_emptied() -> None:
    record = sample_record(thinking="hm", tool_calls=({"f": 1},), error="boom")
    row = to_row(record, store_prompts=False, max_text_bytes=BUDGET)
    full = to_row(record, store_prompts=True, max_text_bytes=BUDGET)
    for field in STORED:
        expected = "" if field.private else full[field.name]
        assert row[field.name] == expected, field.name
    assert full["tool_calls"] == '[{"f": 1}]'


def test_missing_strings_are_stored_as_declared() -> None:
    row = to_row(
        sample_record(error=None, done_reason="", api_key=None),
        store_prompts=True,
        max_text_bytes=BUDGET,
    )
    assert (row["error"], row["done_reason"], row["api_key"]) == ("", None, None)


def test_rows_hold_no_text_a_store_refuses() -> None:
    record = sample_record(**{name: "a\x00b\udcffc" for name in STRINGS})
    row = to_row(record, store_prompts=True, max_text_bytes=BUDGET)
    for name in STRINGS:
        assert row[name] == "a\ufffdb\ufffdc", name
        row[name].encode("utf-8")


def test_rows_respect_privacy_and_caps() -> None:
    record = sample_record(prompt="é" * 100, response="secret answer", error="upstream said no")
    capped = to_row(record, store_prompts=True, max_text_bytes=11)
    assert capped["prompt"] == "é" * 5  # 10 bytes: a 2-byte character is never cut in half
    assert capped["truncated"] is True
    private = to_row(record, store_prompts=False, max_text_bytes=1000)
    assert private["prompt"] == private["response"] == private["request_body"] == ""
    assert private["error"] == "upstream said no"
    assert private["prompt_tokens"] == 20


def test_a_record_cut_before_storage_is_marked_truncated() -> None:
    # The proxy caps what it reads (text_truncated); the row says so though nothing is cut.
    cut = to_row(sample_record(text_truncated=True), store_prompts=True, max_text_bytes=BUDGET)
    whole = to_row(sample_record(), store_prompts=True, max_text_bytes=BUDGET)
    assert (cut["truncated"], whole["truncated"]) == (True, False)
    assert cut["prompt"] == whole["prompt"]


def test_tool_calls_are_stored_as_their_json_text() -> None:
    calls = ({"function": {"name": "météo", "arguments": {"ville": "Zürich"}}},)
    row = to_row(sample_record(tool_calls=calls), store_prompts=True, max_text_bytes=BUDGET)
    assert json.loads(row["tool_calls"]) == list(calls)
    assert "météo" in row["tool_calls"]  # as written, not as \u escapes
    none = to_row(sample_record(tool_calls=()), store_prompts=True, max_text_bytes=BUDGET)
    assert none["tool_calls"] == ""

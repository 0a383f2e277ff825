"""``/analytics/search`` on SQLite and the real PostgreSQL: filters, windows, paging, full text."""

from __future__ import annotations

import re
from typing import Any

import pytest

from app.analytics import search
from app.analytics.search import SearchQuery
from app.analytics.sql import SqlStore
from tests.support import NOW, analytics_rows, newest_first

ROWS = analytics_rows()


def test_paging_returns_every_record_once_newest_first(loaded_store: SqlStore) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        rows, cursor = loaded_store.search(
            SearchQuery(model="qwen3:latest", limit=333, cursor=cursor)
        )
        seen += [row["id"] for row in rows]
        if cursor is None:
            break
    assert seen == [r["id"] for r in newest_first(model="qwen3:latest")]


def test_queue_wait_and_client_app_filter(loaded_store: SqlStore) -> None:
    rows, _ = loaded_store.search(SearchQuery(min_queue_wait=2.5, client_app="curl", limit=1000))
    expected = [
        r["id"]
        for r in newest_first(client_app="curl")
        if r["queue_wait_s"] is not None and r["queue_wait_s"] >= 2.5
    ]
    assert expected
    assert [r["id"] for r in rows] == expected


def test_cold_start_and_placement_filters(loaded_store: SqlStore) -> None:
    def ids(**query: Any) -> list[str]:
        rows, _ = loaded_store.search(SearchQuery(limit=1000, start_time=NOW - 86400, **query))
        return [r["id"] for r in rows]

    def expected(keep: Any) -> list[str]:
        return [r["id"] for r in newest_first() if r["timestamp"] >= NOW - 86400 and keep(r)]

    cold = ids(cold_start=True)
    assert cold
    assert cold == expected(lambda r: r["cold_cause"] is not None)
    assert ids(cold_start=False) == expected(lambda r: r["cold_cause"] is None)
    assert ids(cold_cause="options") == expected(lambda r: r["cold_cause"] == "options")
    both = ids(cold_start=True, placement="mixed")
    assert both == expected(lambda r: r["cold_cause"] is not None and r["placement"] == "mixed")
    assert both


def test_a_model_is_found_by_the_name_as_ollama_resolves_it(loaded_store: SqlStore) -> None:
    resolved, _ = loaded_store.search(SearchQuery(model="qwen3:latest", limit=1000))
    as_typed, _ = loaded_store.search(SearchQuery(model="qwen3", limit=1000))
    assert resolved
    assert [r["id"] for r in as_typed] == [r["id"] for r in resolved]


@pytest.mark.parametrize(
    "filters",
    [
        {"endpoint": "/api/generate"},
        {"category": "code", "status": 404},
        {"model": "gemma:2b", "endpoint": "/v1/chat/completions"},
    ],
)
def test_filters(loaded_store: SqlStore, filters: dict[str, Any]) -> None:
    rows, _ = loaded_store.search(SearchQuery(limit=1000, **filters))
    assert [r["id"] for r in rows] == [r["id"] for r in newest_first(**filters)][:1000]


def test_time_window_and_min_duration(loaded_store: SqlStore) -> None:
    start, end = NOW - 86400, NOW - 43200
    rows, _ = loaded_store.search(
        SearchQuery(start_time=start, end_time=end, min_duration=20, limit=1000)
    )
    want = [
        r["id"] for r in newest_first() if start <= r["timestamp"] < end and r["duration_s"] >= 20
    ]
    assert [r["id"] for r in rows] == want
    assert want


def test_full_text_search_finds_words_in_prompt_or_response(loaded_store: SqlStore) -> None:
    rows, _ = loaded_store.search(SearchQuery(prompt_search="number1234", limit=10))
    assert [r["id"] for r in rows] == [ROWS[1234]["id"]]
    rows, _ = loaded_store.search(SearchQuery(prompt_search="ocean garden", limit=1000))
    want = [
        r["id"]
        for r in newest_first()
        if {"ocean", "garden"} <= set((r["prompt"] + " " + r["response"]).split())
    ]
    assert sorted(r["id"] for r in rows) == sorted(want[:1000])


@pytest.mark.parametrize(
    "hostile",
    [
        "' OR 1=1 --",
        '"; DROP TABLE requests; --',
        "sky OR blue",
        "NEAR(sky blue)",
        "sky*",
        '"unbalanced',
        "-sky",
        "prompt:sky",
        "\\x00",
        "%",
        "💥",
    ],
)
def test_hostile_search_strings_are_plain_words(loaded_store: SqlStore, hostile: str) -> None:
    rows, _ = loaded_store.search(SearchQuery(prompt_search=hostile, limit=1000))
    words = re.findall(r"\w+", hostile.lower())
    # Whatever the string, it means "all these words": no operator, no SQL, no error.
    for row in rows:
        present = set(re.findall(r"\w+", (row["prompt"] + " " + row["response"]).lower()))
        assert set(words) <= present
    if hostile in ("sky OR blue", "NEAR(sky blue)"):
        assert rows == []  # OR and NEAR are words here, and no record contains them
    assert loaded_store.search(SearchQuery(limit=1))[0], "the table is still there"


@pytest.mark.parametrize("words", ["sky", "ocean garden", "blue", "number1234"])
def test_common_words_are_paged_newest_first_slice_by_slice(
    loaded_store: SqlStore, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every word counts as common here, so SQLite takes the slice-by-slice path.
    monkeypatch.setattr(search, "RARE_DOCS", 0)
    monkeypatch.setattr(search, "FIRST_SLICE_MS", 1000)
    want = [
        r["id"]
        for r in newest_first()
        if set(words.split()) <= set((r["prompt"] + " " + r["response"]).split())
    ]
    seen: list[str] = []
    cursor = None
    while True:
        rows, cursor = loaded_store.search(
            SearchQuery(prompt_search=words, limit=97, cursor=cursor)
        )
        seen += [row["id"] for row in rows]
        if cursor is None:
            break
    assert seen == want
    start, end = NOW - 86400, NOW - 40000
    rows, _ = loaded_store.search(
        SearchQuery(prompt_search=words, model="gemma:2b", start_time=start, end_time=end)
    )
    assert [r["id"] for r in rows] == [
        i
        for i in want
        if (row := next(r for r in ROWS if r["id"] == i))["model"] == "gemma:2b"
        and start <= row["timestamp"] < end
    ][:50]


@pytest.mark.parametrize("hostile", ["' OR 1=1 --", '"; DROP TABLE requests; --', "sky*", "💥"])
def test_hostile_strings_on_the_slice_path(
    loaded_store: SqlStore, hostile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search, "RARE_DOCS", 0)
    rows, _ = loaded_store.search(SearchQuery(prompt_search=hostile, limit=20))
    words = {w.lower() for w in hostile.replace("*", " ").split() if w.isalnum()}
    for row in rows:
        assert words <= set((row["prompt"] + " " + row["response"]).lower().split())
    assert loaded_store.search(SearchQuery(limit=1))[0]

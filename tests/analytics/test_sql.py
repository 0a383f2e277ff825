"""The SQL store, the same suite on SQLite and on the real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from app.analytics.sql import SearchQuery, SqlStore, create_store_engine, database_url
from tests.support import analytics_rows

ROWS = analytics_rows()


def test_a_retried_batch_is_not_stored_twice(loaded_store: SqlStore) -> None:
    loaded_store.write(ROWS[:10])
    rows, _ = loaded_store.search(
        SearchQuery(limit=1000, start_time=ROWS[0]["timestamp"] - 1, end_time=ROWS[10]["timestamp"])
    )
    assert len(rows) == 10


def test_retention_deletes_only_old_rows(tmp_path: Path) -> None:
    store = SqlStore(create_store_engine(database_url(None, tmp_path)))
    store.write(ROWS[:100])
    cutoff = ROWS[40]["timestamp"]
    assert store.delete_older_than(cutoff) == 40
    rows, _ = store.search(SearchQuery(limit=1000))
    assert len(rows) == 60
    rows, _ = store.search(SearchQuery(prompt_search="number5", limit=10))
    assert rows == []  # the full-text index forgot them too
    store.close()


def test_client_chosen_strings_fit_their_columns(loaded_store: SqlStore) -> None:
    from app.analytics.rows import to_row
    from tests.support import sample_record

    record = sample_record(
        model="m" * 5000, path="/" + "p" * 5000, user_agent="u" * 5000, done_reason="d" * 100
    )
    loaded_store.write([to_row(record, store_prompts=True, max_text_bytes=1000)])
    stored = loaded_store.get(record.id)
    assert stored is not None
    assert stored["model"] == "m" * 255

"""The SQL store, the same suite on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy

from app.analytics import migrate
from app.analytics.sql import (
    POSTGRES_CONNECTION,
    RETENTION_EVERY,
    SearchQuery,
    SqlStore,
    create_store_engine,
    database_url,
    postgres_connect_args,
)
from tests.conftest import PostgresDatabases
from tests.support import NODES, NOW, SQL_STORES, analytics_rows, newest_first

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


# -- a fleet: many proxies on one database ----------------------------------------------------


@pytest.fixture(params=SQL_STORES)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database that several stores (several proxies) share."""
    if request.param == "sqlite":
        return database_url(None, tmp_path)
    databases: PostgresDatabases = request.getfixturevalue("postgres")
    return database_url(databases.create(), tmp_path)


@pytest.mark.parametrize("complete", [True, False], ids=["every-column", "a-column-lacking"])
def test_a_half_stored_retried_batch_adds_only_its_new_rows(
    shared_url: str, complete: bool
) -> None:
    # The first attempt's commit reached the database, then the writer retried the batch
    # with more rows: only the new ones are stored, counted in the rollups and indexed.
    # analytics_rows() lack api_key (they fit every schema since 0001, for the migration
    # tests): with it, rows take SQLite's prepared insert; without, the general insert.
    batch = [{**row, "api_key": None} if complete else row for row in ROWS[:12]]
    store = SqlStore(create_store_engine(shared_url))
    store.write(batch[:5])
    store.write(batch)
    rows, _ = store.search(SearchQuery(limit=1000))
    assert sorted(row["id"] for row in rows) == sorted(row["id"] for row in ROWS[:12])
    stats = store.stats(ROWS[0]["timestamp"] - 7200)
    assert stats["total_requests"] == 12
    assert sum(hour["requests"] for hour in stats["hourly"]) == 12
    for row in ROWS[:12]:
        word = row["prompt"].split()[-1]  # numberN: one record's own word
        found, _ = store.search(SearchQuery(prompt_search=word, limit=10))
        assert [hit["id"] for hit in found] == [row["id"]]
    store.close()


def test_retention_runs_once_for_the_whole_fleet(shared_url: str) -> None:
    first, second = (SqlStore(create_store_engine(shared_url)) for _ in range(2))
    first.write(ROWS[:100])
    cutoff = ROWS[40]["timestamp"]
    now = time.time()
    assert first.delete_older_than(cutoff, now=now) == 40
    second.write(ROWS[:10])  # a late batch of old records, after the first proxy's run
    # The second proxy's hourly run comes soon after: the fleet's retention has just run.
    assert second.delete_older_than(cutoff, now=now + 60) == 0
    # An interval later, whichever proxy asks first runs it again.
    assert second.delete_older_than(cutoff, now=now + RETENTION_EVERY + 1) == 10
    assert first.delete_older_than(cutoff, now=now + RETENTION_EVERY + 2) == 0
    rows, _ = first.search(SearchQuery(limit=1000))
    assert len(rows) == 60
    for store in (first, second):
        store.close()


@pytest.mark.postgres
def test_proxies_starting_at_once_migrate_an_empty_database_once(
    postgres: PostgresDatabases, tmp_path: Path
) -> None:
    url = database_url(postgres.create(), tmp_path)
    stores = [SqlStore(create_store_engine(url), node=f"gpu-{i}") for i in range(4)]
    errors: list[BaseException] = []

    def start(store: SqlStore) -> None:
        try:
            store.migrate()  # what each proxy does at start-up
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=start, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert migrate.current(stores[0].engine) == migrate.head(stores[0].engine)
    migrate.check(stores[0].engine)
    for store in stores:
        store.close()


def test_each_node_is_found_and_counted(loaded_store: SqlStore) -> None:
    for node in NODES:
        rows, _ = loaded_store.search(SearchQuery(node=node, limit=1000, start_time=NOW - 86400))
        expected = [r["id"] for r in newest_first(node=node) if r["timestamp"] >= NOW - 86400]
        assert [r["id"] for r in rows] == expected
        assert expected
    stats = loaded_store.stats(NOW - 86400)
    window = [r for r in ROWS if r["timestamp"] >= NOW - 86400]
    nodes = {n["name"]: n for n in stats["nodes"]}
    assert set(NODES) <= set(nodes)  # other tests of the module add rows of their own
    for node in NODES:
        entry = nodes[node]
        mine = [r for r in window if r["node"] == node]
        assert entry["requests"] == len(mine)
        assert entry["errors"] == sum(1 for r in mine if r["status"] >= 400)
        assert entry["completion_tokens"] == sum(r["completion_tokens"] for r in mine)
        assert entry["avg_duration_s"] == pytest.approx(
            sum(r["duration_s"] for r in mine) / len(mine)
        )
    assert sum(n["requests"] for n in stats["nodes"]) == stats["total_requests"]


def test_a_postgresql_that_never_answers_fails_the_write_instead_of_hanging_it() -> None:
    """A server that accepts the connection and then says nothing (a host gone mid-way, a
    half-open link): the writer's attempt ends after connect_timeout, the URL's own value
    winning over the default, so the batch is retried rather than the writer stuck."""
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True).start()
    port = silent.getsockname()[1]
    url = f"postgresql://postgres@127.0.0.1:{port}/test?connect_timeout=1"
    assert postgres_connect_args(url)["tcp_user_timeout"] == POSTGRES_CONNECTION["tcp_user_timeout"]
    assert "connect_timeout" not in postgres_connect_args(url)
    assert postgres_connect_args(url[: url.index("?")]) == POSTGRES_CONNECTION
    store = SqlStore(create_store_engine(url))
    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError, match="timeout"):
        store.write(ROWS[:1])
    assert time.monotonic() - started < POSTGRES_CONNECTION["connect_timeout"]
    assert held, "the proxy never reached the server"
    store.close()
    for sock in (*held, silent):
        sock.close()

"""Alembic driven from the app, on SQLite and the real PostgreSQL: upgrade, downgrade, check."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.util.exc import CommandError
from sqlalchemy import create_engine, inspect, text

from app.analytics import migrate
from app.analytics.sql import SearchQuery, SqlStore, create_store_engine, database_url
from tests.conftest import PostgresDatabases
from tests.support import ROOT, SQL_STORES, sample_row


def test_migrations_leave_no_drift_and_go_both_ways(loaded_store: SqlStore) -> None:
    assert migrate.current(loaded_store.engine) == migrate.head(loaded_store.engine)
    migrate.check(loaded_store.engine)  # alembic check: models == database


@pytest.mark.postgres
def test_migrations_downgrade_and_upgrade_cleanly(
    tmp_path: Path, postgres: PostgresDatabases
) -> None:
    for url in (database_url(None, tmp_path), database_url(postgres.create(), tmp_path)):
        engine = create_store_engine(url)
        migrate.upgrade(engine)
        assert "requests" in inspect(engine).get_table_names()
        migrate.downgrade(engine, "base")
        assert migrate.current(engine) is None
        assert "requests" not in inspect(engine).get_table_names()
        migrate.upgrade(engine)
        migrate.check(engine)
        engine.dispose()


@pytest.mark.parametrize("kind", SQL_STORES)
def test_check_finds_a_database_that_differs_from_the_models(
    kind: str, tmp_path: Path, postgres: PostgresDatabases
) -> None:
    engine = create_store_engine(
        database_url(postgres.create() if kind == "postgresql" else None, tmp_path)
    )
    migrate.upgrade(engine)
    migrate.check(engine)
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_requests_model_id"))
    assert migrate.current(engine) == migrate.head(engine)  # at head, and yet not the models
    with pytest.raises(CommandError, match="upgrade operations detected"):
        migrate.check(engine)
    engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        # A SQLite file in a folder with "%" and a Windows path as SQLAlchemy writes it.
        "sqlite:////srv/100% full/C%3A%5Canalytics/analytics.db",
        # A password with "@" and "%" in it, percent-encoded in the URL.
        "postgresql+psycopg://postgres:p%40ss%25w0rd@127.0.0.1:5432/analytics",
    ],
)
def test_percent_signs_in_the_url_reach_alembic_unchanged(url: str) -> None:
    # Alembic's configparser reads "%" as the start of an interpolation.
    engine = create_engine(url)  # never connected: only its URL is read
    config = migrate.alembic_config(engine)
    assert config.get_main_option("sqlalchemy.url") == engine.url.render_as_string(
        hide_password=False
    )
    engine.dispose()


def test_sqlites_full_text_index_merges_sixteen_segments_a_level(tmp_path: Path) -> None:
    """0007: FTS5 automerge 16 and crisismerge 64 (kept in requests_fts_config, so for every
    connection); downgraded, FTS5's own 4 and 16 again; the index still answers."""
    engine = create_store_engine(database_url(None, tmp_path))

    def merges() -> dict[str, int]:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT k, v FROM requests_fts_config")).all()
        return {k: v for k, v in rows if k in ("automerge", "crisismerge")}

    migrate.upgrade(engine)
    assert merges() == {"automerge": 16, "crisismerge": 64}
    store = SqlStore(engine)
    store.write([sample_row(id=f"01K{i:023d}", prompt=f"alpha word{i}") for i in range(40)])
    assert len(store.search(SearchQuery(prompt_search="alpha", limit=100))[0]) == 40
    migrate.downgrade(engine, "0006")
    assert merges() == {"automerge": 4, "crisismerge": 16}
    migrate.upgrade(engine)
    assert len(store.search(SearchQuery(prompt_search="word7", limit=100))[0]) == 1
    store.close()


@pytest.mark.parametrize("kind", SQL_STORES)
def test_the_sparse_filters_have_partial_indexes_that_searches_use(
    kind: str, tmp_path: Path, postgres: PostgresDatabases
) -> None:
    """0008: the indexes of api_key, truncation, cold_cause and placement hold only rows with
    a value; a search on a value still goes through its index and finds exactly its rows;
    downgraded, the full indexes are back."""
    sparse = ("api_key", "truncation", "cold_cause", "placement")
    engine = create_store_engine(
        database_url(postgres.create() if kind == "postgresql" else None, tmp_path)
    )

    def definitions() -> dict[str, str]:
        query = (
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'requests'"
            if kind == "postgresql"
            else "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'requests' AND sql <> ''"
        )
        with engine.connect() as connection:
            found = {name: sql for name, sql in connection.execute(text(query))}
        return {name: found[f"ix_requests_{name}_id"] for name in sparse}

    migrate.upgrade(engine)
    assert all(
        definition.replace("(", "").replace(")", "").endswith(f"WHERE {name} IS NOT NULL")
        for name, definition in definitions().items()
    ), definitions()
    store = SqlStore(engine)
    rows = [sample_row(id=f"01K{i:023d}", truncation=None) for i in range(30)]
    for row in rows[::10]:
        row["truncation"] = "prompt"
    store.write(rows)
    found = store.search(SearchQuery(truncation="prompt", limit=100))[0]
    assert [row["id"] for row in found] == [row["id"] for row in rows[::10]][::-1]
    with engine.connect() as connection:
        if kind == "postgresql":
            connection.execute(text("SET enable_seqscan = off"))
        plan = " ".join(
            str(line[-1])
            for line in connection.execute(
                text(
                    ("EXPLAIN " if kind == "postgresql" else "EXPLAIN QUERY PLAN ")
                    + "SELECT id FROM requests WHERE truncation = :value ORDER BY id DESC"
                ),
                {"value": "prompt"},
            )
        )
    assert "ix_requests_truncation_id" in plan, plan
    migrate.downgrade(engine, "0007")
    assert not any("WHERE" in definition for definition in definitions().values())
    migrate.upgrade(engine)
    migrate.check(engine)
    store.close()


def test_head_is_alembics_own_head(tmp_path: Path) -> None:
    engine = create_store_engine(database_url(None, tmp_path))
    assert migrate.head(engine) == migrate.HEAD


@pytest.mark.process
def test_a_store_at_head_starts_without_alembic(tmp_path: Path) -> None:
    """A restart on a migrated store asks one query and leaves Alembic's modules unloaded
    (RSS at start); a store behind is upgraded as before."""
    url = database_url(None, tmp_path)
    engine = create_store_engine(url)
    assert not migrate.at_head(engine)  # never migrated
    migrate.upgrade(engine, "0006")
    assert not migrate.at_head(engine)  # behind
    migrate.upgrade(engine)
    assert migrate.at_head(engine)
    probe = (
        "import sys\n"
        "from app.analytics.sql import SqlStore, create_store_engine\n"
        f"store = SqlStore(create_store_engine({url!r}))\n"
        "store.migrate()\n"
        "store.write([])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.process
@pytest.mark.parametrize("kind", SQL_STORES)
def test_the_start_up_upgrade_runs_in_a_child_that_brings_the_store_to_head(
    kind: str, tmp_path: Path, postgres: PostgresDatabases, caplog: pytest.LogCaptureFixture
) -> None:
    url = database_url(postgres.create() if kind == "postgresql" else None, tmp_path)
    engine = create_store_engine(url)
    migrate.upgrade(engine, "0006")  # a store a release behind
    store = SqlStore(engine, node="n1")
    with caplog.at_level(logging.INFO, logger="app.analytics.migrate"):
        asyncio.run(store.start())
    assert store.migrated
    assert migrate.at_head(engine)
    # The child's own Alembic log lines, relayed into this process's log.
    said = [r.getMessage() for r in caplog.records if r.name == "app.analytics.migrate"]
    assert any("0006 -> 0007" in line for line in said), said
    engine.dispose()


@pytest.mark.process
def test_a_failed_migration_child_says_why_and_the_store_retries_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = create_store_engine("postgresql://postgres:secret@127.0.0.1:9/nowhere")
    with pytest.raises(RuntimeError, match=r"exited with status 1: OperationalError: .*port 9"):
        migrate.upgrade_in_child(engine)
    store = SqlStore(engine)
    with caplog.at_level(logging.ERROR, logger="app.analytics.sql"):
        asyncio.run(store.start())
    assert not store.migrated  # the first write migrates once the database answers
    [error] = [r.getMessage() for r in caplog.records if r.name == "app.analytics.sql"]
    assert error.startswith("analytics store not ready (the migration process exited")
    assert "secret" not in error
    engine.dispose()

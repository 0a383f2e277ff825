"""The record schema: ``app.record.STORED`` declares each stored field once, and the
migrations, the table, the rows, the response models and the JSON lines follow from it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydantic import ValidationError
from sqlalchemy import Engine, MetaData, String, Table, insert, inspect, select

from app.analytics import migrate
from app.analytics.jsonl import compact_json
from app.analytics.rows import to_row
from app.analytics.search import SUMMARY_COLUMNS
from app.analytics.sql import SqlStore, create_store_engine, database_url
from app.analytics.tables import FULL_TEXT_OBJECTS, metadata, requests_table
from app.api.analytics import Record, RecordSummary, response_models
from app.record import STORED, ExchangeRecord, Stored
from tests.analytics import BUDGET, STRINGS, names
from tests.conftest import PostgresDatabases
from tests.support import SQL_STORES, sample_record

# Two fields of the kind the next issues add: what storing one more takes is its line.
RACK = Stored("rack", "label", 64, nullable=True, filtered=True)
COLD_LOAD = Stored("cold_load_s", "seconds", nullable=True, summary=False)
EXTENDED = (*STORED, RACK, COLD_LOAD)


@dataclasses.dataclass(frozen=True, slots=True)
class RackRecord(ExchangeRecord):
    """A record with the two fields of ``EXTENDED`` (as ExchangeRecord will have them)."""

    rack: str | None = None
    cold_load_s: float | None = None


@pytest.fixture(params=SQL_STORES)
def migrated(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresDatabases
) -> Iterator[Engine]:
    """An empty database (a SQLite file, then a fresh PostgreSQL one) after the migrations."""
    if request.param == "sqlite":
        url = database_url(None, tmp_path)
    else:
        url = database_url(postgres.create(), Path("/nonexistent"))
    engine = create_store_engine(url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def differences(engine: Engine, declared: MetaData) -> list[Any]:
    """What ``alembic revision --autogenerate`` would write to make the database ``declared``
    (types compared too); the hand-made full-text objects left out, as in migrations/env.py."""

    def include(obj: Any, name: str | None, *_: Any) -> bool:
        return name not in FULL_TEXT_OBJECTS

    with engine.connect() as connection:
        options = {"compare_type": True, "include_object": include}
        return list(
            compare_metadata(MigrationContext.configure(connection, opts=options), declared)
        )


def declared_with(fields: tuple[Stored, ...]) -> MetaData:
    """The app's metadata with ``requests`` declared from ``fields`` instead."""
    declared = MetaData()
    requests_table(declared, fields)
    for table in metadata.tables.values():
        if table.name != "requests":
            table.to_metadata(declared)
    return declared


def served(fields: list[str]) -> list[str]:
    """Field names as the API serves them: the Unix seconds right after the ISO timestamp."""
    out = []
    for name in fields:
        out += [name, "unix_time"] if name == "timestamp" else [name]
    return out


# -- the migrations make exactly the declared tables ------------------------------------------


def test_the_migrations_make_exactly_the_declared_tables(migrated: Engine) -> None:
    assert differences(migrated, metadata) == []


def test_a_field_declared_without_its_migration_is_a_difference(migrated: Engine) -> None:
    found = differences(migrated, declared_with(EXTENDED))
    assert sorted((d[0], d[-1].name) for d in found) == [
        ("add_column", "cold_load_s"),
        ("add_column", "rack"),
        ("add_index", "ix_requests_rack_id"),
    ]


def test_a_size_declared_otherwise_than_migrated_is_a_difference(migrated: Engine) -> None:
    changed = tuple(dataclasses.replace(f, size=200) if f.name == "model" else f for f in STORED)
    (difference,) = differences(migrated, declared_with(changed))
    kind, _, table, column, _, reflected, wanted = difference[0]
    assert (kind, table, column) == ("modify_type", "requests", "model")
    assert (reflected.length, wanted.length) == (255, 200)


def test_every_stored_string_fits_its_migrated_column(migrated: Engine) -> None:
    # PostgreSQL enforces varchar sizes and refuses NUL: an over-long or unstorable value
    # would fail the whole batch, and every retry of it.
    record = sample_record(**{name: "\x00\ud800x" * 3 * BUDGET for name in STRINGS})
    row = to_row(record, store_prompts=True, max_text_bytes=BUDGET)
    store = SqlStore(migrated, auto_migrate=False)
    store.write([row])
    assert store.get(row["id"]) == row
    columns = inspect(migrated).get_columns("requests")
    sizes = {c["name"]: getattr(c["type"], "length", None) for c in columns}
    for name in STRINGS:
        if sizes[name] is not None:  # a varchar, not a text
            assert len(row[name]) == sizes[name], name
    assert row["truncated"] is True


# -- the declaration drives the table, the rows and the API -----------------------------------


def test_the_response_models_serve_the_declared_fields() -> None:
    summary = [f.name for f in STORED if f.summary]
    full_only = [f.name for f in STORED if not f.summary]
    assert list(RecordSummary.model_fields) == served(summary)
    assert list(Record.model_fields) == served(summary + full_only)
    assert [c.name for c in SUMMARY_COLUMNS] == summary
    for field in STORED:
        assert Record.model_fields[field.name].is_required()


def test_the_response_models_read_stored_rows() -> None:
    row = to_row(sample_record(api_key=None), store_prompts=True, max_text_bytes=BUDGET)
    presented = {**row, "timestamp": "2026-01-01T00:00:00Z", "unix_time": row["timestamp"]}
    record = Record(**presented)
    assert record.model_dump()["api_key"] is None
    assert record.model_dump()["request_bytes"] == row["request_bytes"]
    with pytest.raises(ValidationError, match="status"):
        Record(**{**presented, "status": None})  # declared not nullable


def test_a_declared_field_reaches_table_row_and_api() -> None:
    table = requests_table(MetaData(), EXTENDED)
    assert isinstance(table.c.rack.type, String)
    assert table.c.rack.type.length == 64
    assert table.c.rack.nullable
    assert table.c.cold_load_s.nullable
    assert "ix_requests_rack_id" in {index.name for index in table.indexes}

    record = RackRecord(**dataclasses.asdict(sample_record()), rack="n" * 100, cold_load_s=0.25)
    row = to_row(record, store_prompts=True, max_text_bytes=BUDGET, fields=EXTENDED)
    assert list(row) == names(EXTENDED)
    assert (row["rack"], row["cold_load_s"]) == ("n" * 64, 0.25)
    assert json.loads(compact_json(row))["rack"] == "n" * 64

    summary, full = response_models(EXTENDED)
    assert "rack" in summary.model_fields
    assert "cold_load_s" not in summary.model_fields
    assert list(full.model_fields) == served(
        [f.name for f in EXTENDED if f.summary] + [f.name for f in EXTENDED if not f.summary]
    )
    presented = {**row, "timestamp": "2026-01-01T00:00:00Z", "unix_time": row["timestamp"]}
    assert full(**presented).model_dump()["cold_load_s"] == 0.25


def test_a_declared_field_is_stored(tmp_path: Path) -> None:
    declared = MetaData()
    table: Table = requests_table(declared, EXTENDED)
    engine = create_store_engine(database_url(None, tmp_path))
    declared.create_all(engine)
    record = RackRecord(**dataclasses.asdict(sample_record()), rack="rack-7")
    row = to_row(record, store_prompts=True, max_text_bytes=BUDGET, fields=EXTENDED)
    with engine.begin() as connection:
        connection.execute(insert(table), [row])
        stored = connection.execute(select(table.c.rack, table.c.cold_load_s)).one()
    engine.dispose()
    assert tuple(stored) == ("rack-7", None)

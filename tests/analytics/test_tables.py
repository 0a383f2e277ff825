"""The SQLAlchemy tables: a column per declared field, typed and sized as declared, indexed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import MetaData, String, insert, select

from app.analytics.sql import create_store_engine, database_url
from app.analytics.tables import requests, requests_table
from app.record import STORED
from tests.analytics import names
from tests.conftest import PostgresDatabases
from tests.support import SQL_STORES, sample_row


def test_the_table_has_a_column_per_declared_field_in_order() -> None:
    assert [c.name for c in requests.c] == names(STORED)
    for field in STORED:
        col = requests.c[field.name]
        assert col.nullable is (field.nullable and not field.key)
        assert col.primary_key is field.key
        assert isinstance(col.type, String) == (field.kind in ("label", "text"))
        if field.kind == "label":
            assert col.type.length == field.size


def test_filtered_fields_are_indexed_with_the_id() -> None:
    indexed = {tuple(c.name for c in index.columns) for index in requests.indexes}
    for field in STORED:
        assert ((field.name, "id") in indexed) is field.filtered


def test_a_nullable_filtered_fields_index_holds_only_its_values() -> None:
    """Partial (``WHERE name IS NOT NULL``) exactly when the field is nullable: a row without
    an API key, truncation, cold start or placement writes no entry there (declared for
    SQLite; test_migrate holds both stores' indexes to it)."""
    for index in requests.indexes:
        name = index.columns[0].name
        field = next((f for f in STORED if f.name == name and f.filtered), None)
        if field is None:
            continue
        where = index.dialect_options["sqlite"]["where"]
        assert str(where) == (f"{name} IS NOT NULL" if field.nullable else "None"), name


@pytest.mark.parametrize("kind", SQL_STORES)
def test_each_kind_holds_the_values_its_declaration_promises(
    kind: str, tmp_path: Path, postgres: PostgresDatabases
) -> None:
    # app.record.Stored: an integer has 32 bits, a byte count 64, seconds and rates are
    # doubles, a label holds ``size`` characters (not bytes).
    engine = create_store_engine(
        database_url(postgres.create() if kind == "postgresql" else None, tmp_path)
    )
    declared = MetaData()
    table = requests_table(declared)
    declared.create_all(engine)
    row = sample_row(
        status=2**31 - 1,
        request_bytes=2**40,
        response_bytes=2**63 - 1,
        timestamp=1_796_212_900.123456,
        duration_s=1e-9,
        tokens_per_second=1 / 3,
        streamed=True,
        model="é" * 255,
    )
    with engine.begin() as connection:
        connection.execute(insert(table), [row])
        stored = dict(connection.execute(select(table)).one()._mapping)
    engine.dispose()
    assert stored == row
    assert stored["streamed"] is True

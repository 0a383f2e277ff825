"""``db copy``: SQLite stores into the real PostgreSQL (and into SQLite, and back): every row
equal, the same stats, search working, nothing copied twice, many sources adding up, an
interrupted copy resuming, an older source read as the migrations would, clear errors."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, select, text

from app.analytics import migrate
from app.analytics.copy import BAD_INPUT, FAILED, CopyError, CopyResult, copy_store
from app.analytics.sql import SearchQuery, SqlStore, create_store_engine, database_url
from app.analytics.tables import requests, requests_table
from app.record import STORED
from tests.conftest import PostgresDatabases
from tests.support import NOW, SQL_STORES, analytics_rows

ROWS = analytics_rows()
DAY = 86400


def sqlite_store(path: Path, rows: list[dict[str, Any]]) -> Path:
    """A SQLite store at ``path`` holding ``rows``, written as the proxy writes them."""
    store = SqlStore(create_store_engine(f"sqlite:///{path}"))
    for start in range(0, len(rows), 1000):
        store.write(rows[start : start + 1000])
    store.close()
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store of ``analytics_rows()``, shared by the module's tests (read only)."""
    return sqlite_store(tmp_path_factory.mktemp("source") / "analytics.db", ROWS)


@pytest.fixture(params=SQL_STORES)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind, never migrated."""
    if request.param == "sqlite":
        return database_url(None, tmp_path / "target")
    databases: PostgresDatabases = request.getfixturevalue("postgres")
    return database_url(databases.create(), tmp_path)


@pytest.fixture
def postgres_target(postgres: PostgresDatabases, tmp_path: Path) -> str:
    return database_url(postgres.create(), tmp_path)


@pytest.fixture
def opened() -> Iterator[list[SqlStore]]:
    """Stores a test opens, closed after it."""
    stores: list[SqlStore] = []
    yield stores
    for store in stores:
        store.close()


def open_store(url: str, opened: list[SqlStore], *, auto_migrate: bool = False) -> SqlStore:
    store = SqlStore(create_store_engine(url), auto_migrate=auto_migrate)
    opened.append(store)
    return store


def stored_rows(store: SqlStore) -> list[dict[str, Any]]:
    with store.engine.connect() as connection:
        query = select(requests).order_by(requests.c.id)
        return [dict(row) for row in connection.execute(query).mappings()]


def as_stored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` as a store gives them back: in id order, a field they lack NULL."""
    return [{f.name: r.get(f.name) for f in STORED} for r in sorted(rows, key=lambda r: r["id"])]


def close(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-9 (rollup sums add up in another order in other batches)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9)
    return bool(a == b)


def assert_same_stats(got: SqlStore, expected: SqlStore) -> None:
    # Three days and more, a day, and a window starting inside an hour.
    for since in (NOW - 4 * DAY, NOW - DAY, NOW - 5 * 3600 - 1234):
        assert close(got.stats(since), expected.stats(since)), since


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy(source: Path | str, target: str, **kwargs: Any) -> CopyResult:
    return copy_store(str(source), target, node=kwargs.pop("node", "this-box"), **kwargs)


def test_a_copy_makes_the_target_equal_the_source(
    source: Path, target: str, opened: list[SqlStore]
) -> None:
    before = digest(source)
    lines: list[str] = []
    result = copy(source, target, batch_size=1000, report=lines.append)
    assert (result.copied, result.skipped) == (len(ROWS), 0)
    assert len(lines) == 5
    assert lines[0] == f"1,000 of {len(ROWS):,} read: 1,000 copied, 0 skipped"
    assert lines[-1] == f"{len(ROWS):,} of {len(ROWS):,} read: {len(ROWS):,} copied, 0 skipped"
    copied, original = open_store(target, opened), open_store(f"sqlite:///{source}", opened)
    assert migrate.current(copied.engine) == migrate.head(copied.engine)
    assert stored_rows(copied) == stored_rows(original) == as_stored(ROWS)
    assert_same_stats(copied, original)
    # Search, full text included, finds in the copy what it finds in the source.
    for query in (
        SearchQuery(prompt_search="number1234"),
        SearchQuery(prompt_search="ocean", node="node-b", limit=20),
        SearchQuery(model="gemma:2b", start_time=NOW - DAY, limit=100),
    ):
        assert copied.search(query) == original.search(query)
    found, _ = copied.search(SearchQuery(prompt_search="number1234"))
    assert [r["id"] for r in found] == [ROWS[1234]["id"]]
    # Again: nothing copied twice, nothing counted twice.
    again = copy(source, target)
    assert (again.copied, again.skipped) == (0, len(ROWS))
    assert len(stored_rows(copied)) == len(ROWS)
    assert_same_stats(copied, original)
    assert digest(source) == before  # the source is only read


@pytest.mark.postgres
def test_the_stores_of_two_machines_add_up_in_one_target(
    source: Path, tmp_path: Path, postgres_target: str, opened: list[SqlStore]
) -> None:
    # Each machine's SQLite holds its own node's records; the fleet's store holds them all.
    first = sqlite_store(tmp_path / "a.db", [r for r in ROWS if r["node"] == "node-a"])
    second = sqlite_store(tmp_path / "b.db", [r for r in ROWS if r["node"] == "node-b"])
    one, two = copy(first, postgres_target), copy(second, postgres_target)
    assert one.copied + two.copied == len(ROWS)
    assert one.skipped == two.skipped == 0
    fleet, everything = (
        open_store(postgres_target, opened),
        open_store(f"sqlite:///{source}", opened),
    )
    assert stored_rows(fleet) == stored_rows(everything)
    assert_same_stats(fleet, everything)
    nodes = fleet.stats(NOW - 4 * DAY)["nodes"]
    assert sorted((n["name"], n["requests"]) for n in nodes) == [
        ("node-a", one.copied),
        ("node-b", two.copied),
    ]
    assert copy(first, postgres_target).copied == 0


@pytest.mark.postgres
def test_an_interrupted_copy_resumes_where_it_stopped(
    source: Path, postgres_target: str, opened: list[SqlStore]
) -> None:
    target = open_store(postgres_target, opened, auto_migrate=True)
    target.write(ROWS[:1234])  # an earlier copy got this far (or the proxy wrote them)

    def interrupt(line: str) -> None:
        if line.startswith("3,000 of"):
            raise KeyboardInterrupt  # Ctrl-C after the third batch was committed

    with pytest.raises(KeyboardInterrupt):
        copy(source, postgres_target, batch_size=1000, report=interrupt)
    assert len(stored_rows(target)) == 3000
    resumed = copy(source, postgres_target, batch_size=1000)
    assert (resumed.copied, resumed.skipped) == (len(ROWS) - 3000, 3000)
    original = open_store(f"sqlite:///{source}", opened)
    assert stored_rows(target) == stored_rows(original)
    assert_same_stats(target, original)


@pytest.mark.postgres
def test_a_postgresql_store_copies_back_to_sqlite(
    source: Path, postgres_target: str, tmp_path: Path, opened: list[SqlStore]
) -> None:
    copy(source, postgres_target)
    back = str(tmp_path / "back.db")
    result = copy(postgres_target, back)  # read in read-only transactions
    assert (result.copied, result.skipped) == (len(ROWS), 0)
    restored, original = (
        open_store(f"sqlite:///{back}", opened),
        open_store(f"sqlite:///{source}", opened),
    )
    assert stored_rows(restored) == stored_rows(original)
    found, _ = restored.search(SearchQuery(prompt_search="number77"))
    assert [r["id"] for r in found] == [ROWS[77]["id"]]


def older_store(path: Path, revision: str, rows: list[dict[str, Any]]) -> Path:
    """A SQLite store at ``revision`` holding ``rows`` cut to the columns it had then."""
    engine = create_store_engine(f"sqlite:///{path}")
    migrate.upgrade(engine, revision)
    with engine.begin() as connection:
        columns = {c[1] for c in connection.execute(text("PRAGMA table_info(requests)"))}
        then = requests_table(MetaData(), [f for f in STORED if f.name in columns])
        connection.execute(then.insert(), [{c.name: r.get(c.name) for c in then.c} for r in rows])
        connection.execute(text("INSERT INTO requests_fts (requests_fts) VALUES ('rebuild')"))
    engine.dispose()
    return path


@pytest.mark.parametrize("revision", ["0003", "0005"])
def test_a_source_at_an_older_revision_is_read_as_the_migrations_would(
    revision: str, tmp_path: Path, target: str, opened: list[SqlStore]
) -> None:
    rows = ROWS[:2000]
    old = older_store(tmp_path / "old.db", revision, rows)
    before = digest(old)
    lines: list[str] = []
    result = copy(old, target, node="old-box", report=lines.append)
    assert result.copied == len(rows)
    assert lines[0].startswith(f"{old} is at revision {revision} (newest: ")
    assert "not upgraded" in lines[0]
    assert "node=old-box" in lines[0]
    assert digest(old) == before
    # What upgrading (a copy of) the source would have made of its rows, and its stats.
    upgraded = tmp_path / "upgraded.db"
    shutil.copy(old, upgraded)
    engine = create_store_engine(f"sqlite:///{upgraded}")
    migrate.upgrade(engine, node="old-box")
    engine.dispose()
    copied, expected = open_store(target, opened), open_store(f"sqlite:///{upgraded}", opened)
    got = stored_rows(copied)
    assert got == stored_rows(expected)
    assert {r["node"] for r in got} == {"old-box"}
    assert_same_stats(copied, expected)


def test_bad_sources_and_targets_are_clear_errors(source: Path, tmp_path: Path) -> None:
    target = str(tmp_path / "target.db")

    def error(source: Path | str, target: str = target) -> CopyError:
        with pytest.raises(CopyError) as raised:
            copy(source, target)
        return raised.value

    missing = error(tmp_path / "missing.db")
    assert (str(missing), missing.code) == (f"{tmp_path / 'missing.db'}: no such file", BAD_INPUT)
    assert not (tmp_path / "missing.db").exists()  # not created by trying
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a database at all, but long enough to be read as one\n" * 100)
    garbage = error(text_file)
    assert garbage.code == BAD_INPUT
    assert (
        str(garbage)
        == f"{text_file} is not an ollama-metrics store (DatabaseError: file is not a database)"
    )
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE requests (id TEXT)")
    foreign = error(other)
    assert (str(foreign), foreign.code) == (
        f"{other} is not an ollama-metrics store (no requests or alembic_version table)",
        BAD_INPUT,
    )
    newer = tmp_path / "newer.db"
    shutil.copy(source, newer)
    with sqlite3.connect(newer) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    future = error(newer)
    assert future.code == BAD_INPUT
    assert str(future).startswith(f"{newer} is at revision 9999, which this version does not know")
    same = error(source, str(source))
    assert (str(same), same.code) == ("the source and the target are the same database", BAD_INPUT)
    down = error(source, "postgresql://nobody:secret@127.0.0.1:9/none")
    assert down.code == FAILED
    assert str(down).startswith(
        "cannot use the target postgresql+psycopg://nobody:***@127.0.0.1:9/none: OperationalError"
    )
    assert "secret" not in str(down)
    unreadable = error("postgresql://nobody:secret@127.0.0.1:9/none")
    assert unreadable.code == FAILED
    assert str(unreadable).startswith("cannot read the source postgresql+psycopg://nobody:***@")
    assert not Path(target).exists() or stored_rows_count(target) == 0


def stored_rows_count(path: str) -> int:
    with sqlite3.connect(path) as connection:
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}
        if "requests" not in tables:
            return 0
        return int(connection.execute("SELECT count(*) FROM requests").fetchone()[0])

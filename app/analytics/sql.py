"""The SQL store (SQLite or PostgreSQL): batch inserts, search, stats and retention.

Every method is synchronous and is called from a worker thread (``asyncio.to_thread``),
never on the event loop. Each batch is written with its full-text entries and its hourly
rollups in one transaction (``rollups``); ``search`` and ``stats`` hold the read side.

A fleet of proxies may share one PostgreSQL: ids are ULIDs (unique without coordination),
a rollup row is added to with one ``INSERT … ON CONFLICT DO UPDATE`` (atomic, in key order
so that two writers never deadlock), the migration runs once under a lock
(``app.analytics.migrate``), and retention runs once per ``RETENTION_EVERY`` for the whole
fleet: under an advisory lock, it skips when the ``maintenance`` table says another proxy
ran it recently, and it holds the writers off (``SHARE ROW EXCLUSIVE`` on ``requests``)
while it rebuilds the hour it cuts into, so that hour's rollups stay exact.
"""

from __future__ import annotations

import asyncio
import json
import logging
import operator
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, exc, insert, select, text
from sqlalchemy.engine import make_url

from app.analytics import rollups, search, stats
from app.analytics.migrate import RETENTION_LOCK, at_head, fleet_lock, upgrade, upgrade_in_child
from app.analytics.rows import RejectedRows
from app.analytics.search import SearchQuery
from app.analytics.tables import maintenance, requests
from app.config import Settings

__all__ = ["SearchQuery", "SqlStore", "create_store_engine", "database_url", "settings_url"]

log = logging.getLogger(__name__)

RETENTION_EVERY = 3000.0
"""Seconds: retention that ran more recently than this (by any proxy of the fleet) is not
run again (the writer asks every hour)."""


def database_url(url: str | None, directory: Path) -> str:
    """The SQLAlchemy URL: a given one (``postgresql://`` means psycopg 3), else SQLite in
    ``directory``."""
    if not url:
        return f"sqlite:///{directory / 'analytics.db'}"
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def settings_url(settings: Settings) -> str:
    """The SQL store's URL for these settings (``ANALYTICS_DATABASE_URL`` or SQLite)."""
    given = settings.analytics_database_url
    return database_url(given.get_secret_value() if given else None, settings.analytics_dir)


def create_store_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=4,
        max_overflow=4,
        connect_args=postgres_connect_args(url),
    )


def migration_child() -> int:
    """The migration child that ``app.analytics.migrate.upgrade_in_child`` starts: reads
    ``{"url", "node"}`` from stdin, upgrades, logs each step to stderr; status 1 and the
    reason on stderr when it fails."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    logging.getLogger("alembic.runtime.migration").setLevel(logging.INFO)  # each step
    try:
        order = json.loads(sys.stdin.buffer.read())
        engine = create_store_engine(order["url"])
        try:
            upgrade(engine, node=order["node"])
        finally:
            engine.dispose()
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


POSTGRES_CONNECTION = {
    # A database across a network that stops answering must fail the write, not hang the
    # writer thread: the batch is then retried with backoff while new records queue.
    "connect_timeout": 10,  # seconds, for the whole connection set-up
    "keepalives": 1,  # an idle pooled connection to a vanished server is found out
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,  # ms a sent write may stay unacknowledged
}
"""libpq parameters for PostgreSQL connections; the same ones in the URL's query win."""


def postgres_connect_args(url: str) -> dict[str, Any]:
    given = make_url(url).query
    return {key: value for key, value in POSTGRES_CONNECTION.items() if key not in given}


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    # WAL: readers (search) never block the writer; NORMAL is durable across process
    # crashes (a power cut may lose the last commits, never corrupt the file).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


_COLUMNS = tuple(column.name for column in requests.c)
# The stdlib sqlite3 takes the row tuples as they are (bool, int, float, str, None): one
# prepared executemany, without SQLAlchemy compiling the statement and processing each
# parameter (~15 µs a record).
_SQLITE_INSERT = (
    f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
)
_pick = operator.itemgetter(*_COLUMNS)


def _values(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]] | None:
    """Each row's values in column order; None when a row lacks a column (then SQLAlchemy's
    insert gives it its default)."""
    try:
        return [_pick(row) for row in rows]
    except KeyError:
        return None


class SqlStore:
    """A ``Backend`` (see ``app.analytics.rows``) over one SQLAlchemy engine."""

    def __init__(
        self, engine: Engine, *, auto_migrate: bool = True, node: str | None = None
    ) -> None:
        self.engine = engine
        self.node = node  # names this machine in rows that predate nodes (migration 0006)
        self.dialect = engine.dialect.name
        self.name = "postgresql" if self.dialect == "postgresql" else "sqlite"
        # A backlog goes to SQLite in batches of up to four times the batch size: each
        # commit adds a full-text segment to merge and dirties an index page per distinct
        # filter value, so a bigger batch writes fewer bytes a record (bench/notes.md).
        self.backlog_factor = 4 if self.dialect == "sqlite" else 1
        # Migrated before the first write; a database that is down at start-up is migrated
        # once it answers (the writer retries), so the proxy never waits for it.
        self.migrated = not auto_migrate

    def migrate(self, *, apart: bool = False) -> None:
        """Upgrade to head unless already there; ``apart``: in a child process."""
        if not self.migrated:
            if not at_head(self.engine):
                if apart:
                    self._upgrade_apart()
                else:
                    upgrade(self.engine, node=self.node)
            self.migrated = True

    async def start(self) -> None:
        """Migrate at start-up, off the event loop, in a child process (``upgrade_in_child``:
        Alembic never loads here). Never fatal: a database that is down now is migrated by
        the first write once it answers (the writer retries, in this process)."""
        try:
            await asyncio.to_thread(self.migrate, apart=True)
        except Exception as exc:
            log.error("analytics store not ready (%s); will retry", exc)

    def _upgrade_apart(self) -> None:
        if self.dialect == "sqlite" and self.engine.url.database in (None, "", ":memory:"):
            upgrade(self.engine, node=self.node)  # a database only this process can see
            return
        try:
            upgrade_in_child(self.engine, node=self.node)
        except OSError as exc:
            log.warning("cannot start the migration process (%s); migrating here", exc)
            upgrade(self.engine, node=self.node)

    # -- writing -----------------------------------------------------------------------

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Insert a batch, its full-text entries and its rollups in one transaction. Rows
        already stored (a retried batch whose commit did reach the database) are skipped,
        so a retry never duplicates."""
        if not rows:
            return
        self.migrate()
        try:
            self._insert(rows)
        except (exc.DataError, UnicodeError, OverflowError) as error:
            # The data, not the store: the same rows would fail on every retry.
            raise RejectedRows(str(error).splitlines()[0]) from error

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as connection:
            ids = [row["id"] for row in rows]
            present = set(connection.scalars(select(requests.c.id).where(requests.c.id.in_(ids))))
            fresh = [row for row in rows if row["id"] not in present]
            if not fresh:
                return
            if self.dialect == "sqlite":
                before = connection.execute(text("SELECT coalesce(max(rowid), 0) FROM requests"))
                last = before.scalar_one()
                values = _values(fresh)
                if values is None:
                    connection.execute(insert(requests), fresh)
                else:
                    connection.exec_driver_sql(_SQLITE_INSERT, values)
                # requests_fts indexes requests' own text (external content) by rowid.
                connection.execute(
                    text(
                        "INSERT INTO requests_fts (rowid, prompt, response) "
                        "SELECT rowid, prompt, response FROM requests WHERE rowid > :last"
                    ),
                    {"last": last},
                )
            else:
                connection.execute(insert(requests), fresh)
            rollups.apply(connection, rollups.Aggregate().add(fresh))

    def delete_older_than(self, cutoff: float, *, now: float | None = None) -> int:
        """Delete the rows before ``cutoff``, the rollups of the hours wholly before it, and
        rebuild the rollup of the hour it cuts into from the rows that remain. Done once per
        ``RETENTION_EVERY`` for every proxy sharing the database: returns 0 at once when
        another ran it more recently."""
        moment = time.time() if now is None else now
        self.migrate()
        with self.engine.begin() as connection:
            fleet_lock(connection, RETENTION_LOCK)
            last = connection.scalar(
                select(maintenance.c.done_at).where(maintenance.c.task == "retention")
            )
            if last is not None and moment - last < RETENTION_EVERY:
                return 0
            if self.dialect == "postgresql":
                # Writers wait (they insert rows and add to rollups) while the hour is rebuilt.
                connection.execute(text("LOCK TABLE requests IN SHARE ROW EXCLUSIVE MODE"))
            if self.dialect == "sqlite":
                connection.execute(
                    text(
                        "INSERT INTO requests_fts (requests_fts, rowid, prompt, response) "
                        "SELECT 'delete', rowid, prompt, response FROM requests "
                        "WHERE timestamp < :cutoff"
                    ),
                    {"cutoff": cutoff},
                )
            removed = connection.execute(
                delete(requests).where(requests.c.timestamp < cutoff)
            ).rowcount
            hour = rollups.hour_of(cutoff)
            for table in rollups.TABLES:
                connection.execute(delete(table).where(table.c.hour < hour))
            if hour < cutoff:
                rollups.rebuild(connection, hour, hour + rollups.HOUR)
            done = {"task": "retention", "done_at": moment}
            if last is None:
                connection.execute(insert(maintenance), done)
            else:
                connection.execute(
                    maintenance.update().where(maintenance.c.task == "retention"), done
                )
            return removed or 0

    def close(self) -> None:
        self.engine.dispose()

    # -- reading -----------------------------------------------------------------------

    def get(self, record_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(requests).where(requests.c.id == record_id)).first()
        return dict(row._mapping) if row is not None else None

    def search(self, query: SearchQuery) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first; the cursor is the id of the last record returned."""
        with self.engine.connect() as connection:
            return search.run(connection, query)

    def stats(self, since: float) -> dict[str, Any]:
        """Totals, rates, percentiles (approximate: see ``app.analytics.stats``) and
        breakdowns of the records with ``timestamp >= since``."""
        with self.engine.connect() as connection:
            return stats.compute(connection, since)

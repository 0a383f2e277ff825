"""``ollama-metrics db copy``: every record of one SQL store into another — one machine's
SQLite into the fleet's PostgreSQL, keeping what it recorded.

- The target is migrated to head first, then the source's records are read in id order, a
  batch at a time, and written through the target's ``SqlStore.write``: the normal write
  path, so its hourly rollups and full-text index come out as if the proxy had written them.
- Resumable and idempotent: a record whose id the target holds is skipped, and each batch
  is one transaction. Ids are ULIDs (unique without coordination), so one target takes the
  stores of many machines, and a copy that was interrupted, or run again, copies nothing
  twice. A proxy still writing to the source while it is read may commit a record behind
  the copy's position: a second run copies what the first missed.
- The source is never modified: SQLite is opened read-only (``mode=ro``; like any reader
  of a WAL database it may leave the empty ``-wal`` and ``-shm`` files beside it),
  PostgreSQL in read-only transactions. So a source at an older revision is not upgraded:
  it is read at its revision, and each column it lacks gets what the migrations give the
  rows stored before it: ``node`` the machine's name (``node``, as 0006), ``client_app``
  named from the User-Agent oldest first (as 0004), every other one NULL (not known then).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, MetaData, create_engine, exc, func, inspect, select, table
from sqlalchemy.engine import make_url

from app.analytics import migrate
from app.analytics.rows import RejectedRows
from app.analytics.sql import SqlStore, create_store_engine, database_url
from app.analytics.tables import requests, requests_table
from app.categories.apps import ClientApps
from app.record import STORED, Stored

BATCH = 5000

# Exit codes: what was named cannot be copied (a usage error), or a database failed.
BAD_INPUT, FAILED = 2, 1


class CopyError(Exception):
    """Why the copy cannot start or go on, in words for the user; ``code`` is the exit code
    (``BAD_INPUT`` or ``FAILED``)."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class CopyResult:
    copied: int
    skipped: int  # already in the target
    seconds: float


def location_url(location: str) -> str:
    """The SQLAlchemy URL of a ``--from``/``--to``: a URL as ``database_url`` takes it, or the
    path of a SQLite file."""
    if "://" not in location:
        return f"sqlite:///{Path(location).expanduser().absolute()}"
    try:
        return database_url(location, Path())
    except exc.ArgumentError as error:
        raise CopyError(f"{location!r} is neither a database URL nor a file", BAD_INPUT) from error


def shown(url: str) -> str:
    """A URL as it may be printed: the path of a SQLite file, no password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or ":memory:"
    return parsed.render_as_string(hide_password=True)


def _identity(url: str) -> tuple[Any, ...]:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return ("sqlite", str(Path(parsed.database or "").resolve()))
    return (parsed.get_backend_name(), parsed.host, parsed.port or 5432, parsed.database)


@dataclass(frozen=True, slots=True)
class Source:
    """A store opened for reading only, checked to be a proxy store this version can read."""

    engine: Engine
    name: str
    revision: str
    head: str
    fields: tuple[Stored, ...]  # the declared fields its requests table has

    @property
    def missing(self) -> tuple[Stored, ...]:
        present = {field.name for field in self.fields}
        return tuple(field for field in STORED if field.name not in present)


def open_source(url: str) -> Source:
    name = shown(url)
    engine = _read_only_engine(url, name)
    try:
        tables = set(inspect(engine).get_table_names())
        if "requests" not in tables or "alembic_version" not in tables:
            raise CopyError(
                f"{name} is not an ollama-metrics store (no requests or alembic_version table)",
                BAD_INPUT,
            )
        revision = migrate.current(engine)
        columns = {column["name"] for column in inspect(engine).get_columns("requests")}
    except exc.SQLAlchemyError as error:
        engine.dispose()
        if isinstance(error, exc.DatabaseError) and not isinstance(error, exc.OperationalError):
            # SQLite's "file is not a database": the file is readable, and something else.
            raise CopyError(
                f"{name} is not an ollama-metrics store ({_reason(error)})", BAD_INPUT
            ) from error
        raise CopyError(f"cannot read the source {name}: {_reason(error)}") from error
    except CopyError:
        engine.dispose()
        raise
    script = ScriptDirectory.from_config(migrate.alembic_config(engine))
    head = script.get_current_head() or ""
    try:
        known = revision is not None and script.get_revision(revision) is not None
    except CommandError:
        known = False
    if not known:
        engine.dispose()
        raise CopyError(
            f"{name} is at revision {revision or 'base'}, which this version does not know "
            f"(newest: {head}): it was written by a newer ollama-metrics, or never migrated",
            BAD_INPUT,
        )
    if "id" not in columns or "timestamp" not in columns:
        engine.dispose()
        raise CopyError(f"{name} is not an ollama-metrics store (no id column)", BAD_INPUT)
    fields = tuple(field for field in STORED if field.name in columns)
    return Source(engine, name, str(revision), head, fields)


def _read_only_engine(url: str, name: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if not path.is_file():
            raise CopyError(f"{name}: no such file", BAD_INPUT)
        # Read-only: opening it can create nothing, writing it fails.
        uri = path.resolve().as_uri() + "?mode=ro"
        return create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False),
        )
    return create_engine(url, connect_args={"options": "-c default_transaction_read_only=on"})


def open_target(url: str) -> SqlStore:
    """The target's store, migrated to head."""
    store = SqlStore(create_store_engine(url))
    try:
        store.migrate()
    except (exc.SQLAlchemyError, CommandError) as error:
        store.close()
        raise CopyError(f"cannot use the target {shown(url)}: {_reason(error)}") from error
    return store


def copy_store(
    source: str,
    target: str,
    *,
    node: str,
    batch_size: int = BATCH,
    report: Callable[[str], None] = lambda line: None,
) -> CopyResult:
    """Copy every record of ``source`` that ``target`` lacks (see the module); each is a
    database URL or the path of a SQLite file. ``node`` names the machine whose records
    predate nodes; ``report`` is told of the progress, a line per batch."""
    source_url, target_url = location_url(source), location_url(target)
    if _identity(source_url) == _identity(target_url):
        raise CopyError("the source and the target are the same database", BAD_INPUT)
    reader = open_source(source_url)
    try:
        if reader.revision != reader.head:
            filled = ", ".join(field.name for field in reader.missing) or "none"
            report(
                f"{reader.name} is at revision {reader.revision} (newest: {reader.head}): "
                f"read as it is, not upgraded; the columns it lacks ({filled}) get what the "
                f"migrations give older records (node={node})"
            )
        writer = open_target(target_url)
        try:
            return copy_records(reader, writer, node=node, batch_size=batch_size, report=report)
        finally:
            writer.close()
    finally:
        reader.engine.dispose()


def copy_records(
    source: Source,
    target: SqlStore,
    *,
    node: str,
    batch_size: int = BATCH,
    report: Callable[[str], None] = lambda line: None,
) -> CopyResult:
    started = time.monotonic()
    try:
        with source.engine.connect() as connection:
            total = connection.scalar(select(func.count()).select_from(table("requests")))
    except exc.SQLAlchemyError as error:
        raise CopyError(f"cannot read the source {source.name}: {_reason(error)}") from error
    copied = skipped = 0
    for batch in _batches(source, node, batch_size):
        ids = [row["id"] for row in batch]
        try:
            with target.engine.connect() as connection:
                present = set(
                    connection.scalars(select(requests.c.id).where(requests.c.id.in_(ids)))
                )
            fresh = [row for row in batch if row["id"] not in present]
            target.write(fresh)
        except RejectedRows as error:
            raise CopyError(
                f"the target refused the records {ids[0]} to {ids[-1]} ({error}); "
                f"{copied:,} copied before them"
            ) from error
        except exc.SQLAlchemyError as error:
            raise CopyError(
                f"writing to the target failed: {_reason(error)}; {copied:,} copied so far "
                "(run the same command again to go on)"
            ) from error
        copied += len(fresh)
        skipped += len(batch) - len(fresh)
        report(
            f"{copied + skipped:,} of {total or 0:,} read: {copied:,} copied, {skipped:,} skipped"
        )
    return CopyResult(copied, skipped, time.monotonic() - started)


def _batches(source: Source, node: str, size: int) -> Iterator[list[dict[str, Any]]]:
    """The source's rows in id order, ``size`` at a time, each with every declared field."""
    columns = requests_table(MetaData(), source.fields)
    missing = source.missing
    apps = ClientApps()  # as migration 0004 names them: oldest first
    after = ""
    while True:
        try:
            with source.engine.connect() as connection:
                query = (
                    select(columns).where(columns.c.id > after).order_by(columns.c.id).limit(size)
                )
                rows = [dict(row) for row in connection.execute(query).mappings()]
        except exc.SQLAlchemyError as error:
            raise CopyError(f"reading the source failed: {_reason(error)}") from error
        if not rows:
            return
        for row in rows:
            for field in missing:
                row[field.name] = _missing_value(field, row, node, apps)
        yield [{field.name: row[field.name] for field in STORED} for row in rows]
        after = rows[-1]["id"]


def _missing_value(field: Stored, row: dict[str, Any], node: str, apps: ClientApps) -> Any:
    """What the migration that added ``field`` gives a row stored before it."""
    if field.name == "node":
        return node
    if field.name == "client_app":
        return apps(row.get("user_agent") or "")
    if field.nullable:
        return None
    return {"flag": False, "label": "", "text": ""}.get(field.kind, 0)


def _reason(error: Exception) -> str:
    """The first line of a driver's message, with the error's class."""
    if isinstance(error, exc.DBAPIError) and error.orig is not None:
        error = error.orig
    lines = str(error).strip().splitlines()
    return f"{error.__class__.__name__}: {lines[0] if lines else ''}".rstrip(": ")

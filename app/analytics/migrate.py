"""Alembic, driven from the app: ``ollama-metrics db upgrade|downgrade|current`` and the
upgrade at start-up. The migration scripts are the top-level ``migrations`` package.

Many proxies may share one PostgreSQL and start at once: each migration runs under the
transaction-scoped advisory lock ``MIGRATION_LOCK``, so one proxy migrates while the others
wait for it, then find the database at head and do nothing. (Alembic runs PostgreSQL's DDL
in the one transaction, so a failed migration leaves nothing half done.) On SQLite the
file's write lock serialises them.

Alembic is imported only when a migration is needed (or asked for): a store already at
``HEAD`` is found so with one query, and a proxy restarting on it never loads Alembic's
~10 MB of modules. The proxy's start-up upgrade (a new store, or one a release behind) runs
in a child process (``upgrade_in_child``): what Alembic and the migration scripts import
would otherwise stay in the serving process for its whole life (Python does not give
module memory back), ~11 MB of its RSS.
"""

from __future__ import annotations

import json
import logging
import subprocess
from importlib import resources
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, exc, text

from app.reexec import NO_WINDOW, self_command

if TYPE_CHECKING:
    from alembic.config import Config

HEAD = "0008"
"""The newest revision in migrations/versions (a test holds it to Alembic's own head)."""

log = logging.getLogger(__name__)

# The hidden first argument that makes this program the migration child (app/__main__.py).
CHILD_COMMAND = "_migrate"
# How much of a failed child's output its error carries.
CHILD_ERROR_CHARS = 2000

# pg_advisory_xact_lock keys: any 64-bit numbers, the same in every proxy of a fleet.
MIGRATION_LOCK = 0x6F6C6C616D61_01  # "ollama", 1
RETENTION_LOCK = 0x6F6C6C616D61_02


def fleet_lock(connection: Connection, key: int) -> None:
    """Hold ``key`` until the transaction ends (PostgreSQL; elsewhere a no-op: SQLite's one
    writer at a time already serialises)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def at_head(engine: Engine) -> bool:
    """Whether the database is at ``HEAD`` (False when it was never migrated), without
    Alembic."""
    try:
        with engine.connect() as connection:
            found = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    except exc.DBAPIError:  # no such table: never migrated (or not reachable: upgrade says)
        return False
    return [tuple(row) for row in found] == [(HEAD,)]


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    # Alembic keeps its options in a configparser, where "%" starts an interpolation: a
    # Windows path in a SQLite URL (C%3A%5C...) or a password with "@" (%40) would break it.
    location = str(resources.files("migrations"))
    config.set_main_option("script_location", location.replace("%", "%%"))
    url = engine.url.render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head", *, node: str | None = None) -> None:
    """Migrate to ``revision``; ``node`` names this machine for rows that predate nodes."""
    from alembic import command

    with engine.begin() as connection:
        fleet_lock(connection, MIGRATION_LOCK)
        config = alembic_config(engine)
        config.attributes["connection"] = connection
        config.attributes["node"] = node
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    with engine.begin() as connection:
        fleet_lock(connection, MIGRATION_LOCK)
        config = alembic_config(engine)
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def current(engine: Engine) -> str | None:
    """The database's revision (None when it was never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head(engine: Engine) -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def check(engine: Engine) -> None:
    """Raise when the models and the migrated database differ (``alembic check``)."""
    from alembic import command

    with engine.connect() as connection:
        config = alembic_config(engine)
        config.attributes["connection"] = connection
        command.check(config)


def upgrade_in_child(engine: Engine, *, node: str | None = None) -> None:
    """``upgrade(engine, node=node)`` to head in a child process of this program, which
    exits when done. The URL, with its password, travels on the child's stdin (never in its
    command line, which other users can list). The child's log lines are logged here.
    Raises ``RuntimeError`` with the child's last words when it fails, ``OSError`` when it
    cannot be started."""
    order = {"url": engine.url.render_as_string(hide_password=False), "node": node}
    done = subprocess.run(
        [*self_command(), CHILD_COMMAND],
        input=json.dumps(order).encode(),
        capture_output=True,
        creationflags=NO_WINDOW,
        check=False,
    )
    said = done.stderr.decode("utf-8", "replace").strip()
    if done.returncode != 0:
        raise RuntimeError(
            f"the migration process exited with status {done.returncode}: "
            f"{said[-CHILD_ERROR_CHARS:] or 'no output'}"
        )
    for line in said.splitlines():
        log.info("%s", line)

"""Alembic, driven from the app: ``ollama-metrics db upgrade|downgrade|current`` and the
upgrade at start-up. The migration scripts are the top-level ``migrations`` package.

Many proxies may share one PostgreSQL and start at once: each migration runs under the
transaction-scoped advisory lock ``MIGRATION_LOCK``, so one proxy migrates while the others
wait for it, then find the database at head and do nothing. (Alembic runs PostgreSQL's DDL
in the one transaction, so a failed migration leaves nothing half done.) On SQLite the
file's write lock serialises them.

Alembic is imported only when a migration is needed (or asked for): a store already at
``HEAD`` is found so with one query, and a proxy restarting on it never loads Alembic's
~10 MB of modules.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, exc, text

if TYPE_CHECKING:
    from alembic.config import Config

HEAD = "0008"
"""The newest revision in migrations/versions (a test holds it to Alembic's own head)."""

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

"""``ollama-metrics``: command line → Settings → server."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from app import __version__
from app.config import Settings
from app.server import run_proxy


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ollama-metrics",
        description="A transparent proxy in front of Ollama that measures every request.",
    )
    parser.add_argument("--version", action="version", version=f"ollama-metrics {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    proxy = commands.add_parser(
        "proxy",
        help="run the proxy in front of an Ollama that is already running",
        description="Listen on --host:--port and forward every request to --upstream.",
    )
    proxy.add_argument("--host", help="address to listen on (env PROXY_HOST, default 127.0.0.1)")
    proxy.add_argument("--port", type=int, help="port to listen on (env PROXY_PORT, default 11434)")
    proxy.add_argument(
        "--upstream",
        metavar="URL",
        help="the real Ollama (env OLLAMA_UPSTREAM, default http://127.0.0.1:11435)",
    )
    proxy.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    db = commands.add_parser(
        "db",
        help="manage the analytics database schema (Alembic migrations)",
        description="Upgrade, downgrade or show the schema of the SQL analytics store "
        "(ANALYTICS_DATABASE_URL, or the SQLite file in ANALYTICS_DIR).",
    )
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = db_commands.add_parser("upgrade", help="migrate to a revision (default: head)")
    upgrade.add_argument("revision", nargs="?", default="head")
    downgrade = db_commands.add_parser("downgrade", help="migrate back to a revision")
    downgrade.add_argument("revision", help="e.g. -1, base or a revision id")
    db_commands.add_parser("current", help="print the database's revision and the newest one")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment first, then the flags that were given on top."""
    overrides = {
        "proxy_host": getattr(args, "host", None),
        "proxy_port": getattr(args, "port", None),
        "ollama_upstream": getattr(args, "upstream", None),
        "log_level": getattr(args, "log_level", None),
    }
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            print(f"ollama-metrics: invalid {field.upper()}: {error['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "db":
        return run_db(settings, args.db_command, getattr(args, "revision", None))
    return run_proxy(settings)


def run_db(settings: Settings, action: str, revision: str | None) -> int:
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from app.analytics import migrate
    from app.analytics.sql import create_store_engine, database_url

    given = settings.analytics_database_url
    engine = create_store_engine(
        database_url(given.get_secret_value() if given else None, settings.analytics_dir)
    )
    shown = engine.url.render_as_string(hide_password=True)
    try:
        if action == "upgrade":
            migrate.upgrade(engine, revision or "head")
        elif action == "downgrade":
            migrate.downgrade(engine, revision or "-1")
        print(f"{shown}: at {migrate.current(engine) or 'base'} (newest: {migrate.head(engine)})")
    except (SQLAlchemyError, CommandError) as exc:
        print(
            f"ollama-metrics db {action}: {shown}: {exc.__class__.__name__}: {exc}", file=sys.stderr
        )
        return 1
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())

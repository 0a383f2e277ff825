"""``ollama-metrics``: command line → Settings → server."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from app.config import CONFIG_ENV, ConfigFileError, Settings
from app.logs import configure_logging
from app.server import run_proxy
from app.service.binary import INSTALL_HINT, find_ollama
from app.winsvc import manage, sc
from app.winsvc.manage import Options
from app.winsvc.sc import SERVICE_FLAG
from app.wrapper import ensure_stack, run_ollama, version_text

# Our own commands; any other first word is an Ollama command, passed through.
OWN_COMMANDS = frozenset({"proxy", "serve", "run", "db", "doctor", "service", "help"})


def _listen_options(command: argparse.ArgumentParser, *, upstream: bool) -> None:
    command.add_argument("--host", help="address to listen on (env PROXY_HOST, default 127.0.0.1)")
    command.add_argument(
        "--port", type=int, help="port to listen on (env PROXY_PORT, default 11434)"
    )
    if upstream:
        command.add_argument(
            "--upstream",
            metavar="URL",
            help="the real Ollama (env OLLAMA_UPSTREAM, default http://127.0.0.1:11435)",
        )
    command.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    command.add_argument("--log-format", choices=["text", "json"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ollama-metrics",
        description="A transparent proxy in front of Ollama that measures every request. "
        "Any other command (list, ps, pull, show, stop, rm, cp, push, create, ...) runs "
        "Ollama's own CLI through the proxy.",
    )
    parser.add_argument(
        "--version", action="store_true", help="print this version and the Ollama behind it"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML configuration file (env {CONFIG_ENV}; settings as in "
        "docs/configuration.md, below the environment and flags)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="start Ollama on the upstream port and the proxy in front of it",
        description="Run `ollama serve` on 127.0.0.1:11435 (restarted if it exits) and the "
        "proxy on 127.0.0.1:11434; Ctrl-C or SIGTERM stops both.",
    )
    _listen_options(serve, upstream=False)
    proxy = commands.add_parser(
        "proxy",
        help="run the proxy in front of an Ollama that is already running",
        description="Listen on --host:--port and forward every request to --upstream.",
    )
    _listen_options(proxy, upstream=True)

    run = commands.add_parser(
        "run",
        help="ollama run MODEL through the proxy (starts serve if needed)",
        description="Make sure the proxy and Ollama run, then `ollama run MODEL [PROMPT]` "
        "against the proxy; terminal, stdin and exit code pass through.",
    )
    run.add_argument("model")
    run.add_argument("rest", nargs=argparse.REMAINDER, help="prompt and ollama run flags")

    doctor = commands.add_parser("doctor", help="check the setup and say how to fix it")
    doctor.add_argument(
        "--url", help="the address clients use, if a reverse proxy stands in front (checked)"
    )

    db = commands.add_parser(
        "db",
        help="manage the analytics database: its schema (Alembic migrations), copies",
        description="Upgrade, downgrade or show the schema of the SQL analytics store "
        "(ANALYTICS_DATABASE_URL, or the SQLite file in ANALYTICS_DIR), or copy its records "
        "into another store.",
    )
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = db_commands.add_parser("upgrade", help="migrate to a revision (default: head)")
    upgrade.add_argument("revision", nargs="?", default="head")
    downgrade = db_commands.add_parser("downgrade", help="migrate back to a revision")
    downgrade.add_argument("revision", help="e.g. -1, base or a revision id")
    db_commands.add_parser("current", help="print the database's revision and the newest one")
    copy = db_commands.add_parser(
        "copy",
        help="copy every record into another store (e.g. this machine's SQLite into a fleet's "
        "PostgreSQL)",
        description="Migrate --to to the newest revision, then copy every record of --from "
        "that --to lacks, in id order, through the store's normal write path (rollups and "
        "full-text index included). Records already in --to are skipped, so running it again, "
        "after an interruption or for another machine's store, copies nothing twice. --from "
        "is only read (a store at an older revision is read as it is, not upgraded). "
        "Exit 0: done; 1: a database failed; 2: --from or --to cannot be copied.",
    )
    copy.add_argument(
        "--from",
        dest="source",
        metavar="URL_OR_PATH",
        help="the store to read: a SQLite file or a database URL (default: the SQLite file "
        "in ANALYTICS_DIR)",
    )
    copy.add_argument(
        "--to",
        dest="target",
        metavar="URL_OR_PATH",
        help="the store to write: postgresql://USER:PASSWORD@HOST/DB or a SQLite file "
        "(default: ANALYTICS_DATABASE_URL)",
    )
    copy.add_argument(
        "--node",
        help="the machine that recorded --from, for records older than nodes (default: "
        "PROXY_NODE, else the host name)",
    )
    copy.add_argument(
        "--batch-size", type=int, default=5000, metavar="N", help="records per transaction"
    )

    service = commands.add_parser(
        "service",
        help="install and control the Windows service (sc.exe)",
        description="Install ollama-metrics.exe as a Windows service that runs `serve` at "
        "boot (configuration: %%ProgramData%%\\OllamaMetrics\\config.toml, logs in its "
        "logs folder). install stops and disables an Ollama that starts on its own and "
        "uninstall puts it back. Needs an elevated prompt, except status and --dry-run.",
    )
    service.add_argument("action", choices=["install", "uninstall", "start", "stop", "status"])
    service.add_argument("--name", default=sc.DEFAULT_NAME, help="service name")
    service.add_argument(
        "--exe", help="path of ollama-metrics.exe for the service (default: this program)"
    )
    service.add_argument(
        "--dry-run",
        action="store_true",
        help="print the exact sc.exe commands (for cmd.exe) and change nothing; any OS",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment first, then the flags that were given on top."""
    overrides = {
        "proxy_host": getattr(args, "host", None),
        "proxy_port": getattr(args, "port", None),
        "ollama_upstream": getattr(args, "upstream", None),
        "log_level": getattr(args, "log_level", None),
        "log_format": getattr(args, "log_format", None),
    }
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _settings_or_exit(args: argparse.Namespace) -> Settings | int:
    try:
        return settings_from_args(args)
    except ConfigFileError as exc:
        print(f"ollama-metrics: configuration file {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            message = str(error["msg"]).removeprefix("Value error, ")
            print(f"ollama-metrics: invalid {field.upper()}: {message}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [SERVICE_FLAG]:
        # Started by the Windows service manager (the service's binPath).
        from app.winsvc.host import run_service

        return run_service()
    if argv[:1] == ["service"]:
        # Needs no settings: it must work when the environment is not this machine's.
        args = _parser().parse_args(argv)
        options = Options(name=args.name, executable=args.exe, dry_run=args.dry_run)
        return manage.run(args.action, options)
    if argv and not argv[0].startswith("-") and argv[0] not in OWN_COMMANDS:
        # An Ollama command: run the real CLI against the proxy.
        settings = _settings_or_exit(argparse.Namespace())
        return settings if isinstance(settings, int) else run_ollama(settings, argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.config:
        # Through the environment, so that what this starts (serve, run) reads it too.
        os.environ[CONFIG_ENV] = args.config
    settings = _settings_or_exit(args)
    if isinstance(settings, int):
        return settings
    if args.version:
        print(version_text(settings))
        return 0
    if args.command is None or args.command == "help":
        parser.print_help()
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "db" and args.db_command == "copy":
        return run_copy(settings, args.source, args.target, args.node, args.batch_size)
    if args.command == "db":
        return run_db(settings, args.db_command, getattr(args, "revision", None))
    if args.command == "doctor":
        from app.doctor import FAIL, render, run_checks  # httpx: not for the proxy

        checks = run_checks(settings, public_url=args.url)
        print(render(checks))
        return 1 if any(check.state == FAIL for check in checks) else 0
    if args.command == "run":
        problem = ensure_stack(settings)
        if problem is not None:
            print(f"ollama-metrics: {problem}", file=sys.stderr)
            return 1
        return run_ollama(settings, ["run", args.model, *args.rest])
    if args.command == "serve":
        binary = find_ollama(settings.ollama_bin)
        if binary is None:
            print(f"ollama-metrics: {INSTALL_HINT}", file=sys.stderr)
            return 1
        return run_proxy(settings, ollama_binary=binary)
    return run_proxy(settings)


def run_db(settings: Settings, action: str, revision: str | None) -> int:
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from app.analytics import migrate
    from app.analytics.sql import create_store_engine, settings_url

    engine = create_store_engine(settings_url(settings))
    shown = engine.url.render_as_string(hide_password=True)
    try:
        if action == "upgrade":
            migrate.upgrade(engine, revision or "head", node=settings.proxy_node)
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


def run_copy(
    settings: Settings, source: str | None, target: str | None, node: str | None, batch_size: int
) -> int:
    from app.analytics.copy import CopyError, copy_store, location_url, shown
    from app.analytics.sql import database_url
    from app.config import NODE_NAME

    def fail(message: str, code: int) -> int:
        print(f"ollama-metrics db copy: {message}", file=sys.stderr)
        return code

    if target is None:
        given = settings.analytics_database_url
        if given is None:
            return fail("say where to copy to: --to URL (or set ANALYTICS_DATABASE_URL)", 2)
        target = given.get_secret_value()
    if source is None:
        source = database_url(None, settings.analytics_dir)
    if node is not None and not NODE_NAME.fullmatch(node):
        return fail(f"--node must be 1 to 64 letters, digits, '.', '_' or '-', got {node!r}", 2)
    if batch_size < 1:
        return fail("--batch-size must be at least 1", 2)
    try:
        result = copy_store(
            source,
            target,
            node=node or settings.proxy_node,
            batch_size=batch_size,
            report=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except CopyError as exc:
        return fail(str(exc), exc.code)
    except KeyboardInterrupt:
        return fail("interrupted: what was copied stays; run it again to go on", 1)
    print(
        f"{shown(location_url(source))} -> {shown(location_url(target))}: copied "
        f"{result.copied:,} records, skipped {result.skipped:,} already there, "
        f"in {result.seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

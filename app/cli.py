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
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment first, then the flags that were given on top."""
    overrides = {
        "proxy_host": args.host,
        "proxy_port": args.port,
        "ollama_upstream": args.upstream,
        "log_level": args.log_level,
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
    return run_proxy(settings)


if __name__ == "__main__":
    sys.exit(main())

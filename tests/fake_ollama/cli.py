"""argv and environment → one subcommand, parsed and reported as the real (cobra) CLI does.

Errors end up here once: `Error: <message>` on stderr and exit status 1, including
cobra's wording for unknown commands and flags and wrong argument counts.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from tests.fake_ollama import commands
from tests.fake_ollama.client import Client, CliError
from tests.fake_ollama.commands import Console
from tests.fake_ollama.hosts import OllamaHost, resolve_host
from tests.fake_ollama.run import RunOptions, keep_alive_value, run

__all__ = ["COMMANDS", "Environment", "main"]

# name → (aliases, short help, (minimum, maximum or None) positional arguments)
COMMANDS: dict[str, tuple[tuple[str, ...], str, tuple[int, int | None]]] = {
    "serve": (("start",), "Start ollama", (0, 0)),
    "create": ((), "Create a model from a Modelfile", (1, 1)),
    "show": ((), "Show information for a model", (1, 1)),
    "run": ((), "Run a model", (1, None)),
    "stop": ((), "Stop a running model", (1, 1)),
    "pull": ((), "Pull a model from a registry", (1, 1)),
    "push": ((), "Push a model to a registry", (1, 1)),
    "list": (("ls",), "List models", (0, None)),
    "ps": ((), "List running models", (0, None)),
    "cp": ((), "Copy a model", (2, 2)),
    "rm": ((), "Remove a model", (1, None)),
    "help": ((), "Help about any command", (0, None)),
}
_ALIASES = {alias: name for name, (aliases, _, _) in COMMANDS.items() for alias in aliases}

USAGE = (
    "Large language model runner\n\nUsage:\n  ollama [flags]\n  ollama [command]\n\n"
    "Available Commands:\n"
    + "".join(f"  {name:<11} {summary}\n" for name, (_, summary, _) in COMMANDS.items())
    + "\nFlags:\n  -h, --help      help for ollama\n  -v, --version   Show version information\n\n"
    'Use "ollama [command] --help" for more information about a command.\n'
)


@dataclass(frozen=True)
class Environment:
    """Everything the stand-in reads from the environment, read in one place."""

    host: OllamaHost
    token_delay: float = 0.0
    crash_after: float | None = None
    pidfile: Path | None = None
    server_version: str = "0.33.0"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Environment:
        def number(key: str) -> float | None:
            text = environ.get(key, "").strip()
            try:
                return float(text) if text else None
            except ValueError:
                raise CliError(f"invalid {key}={text!r}: expected seconds") from None

        pidfile = environ.get("FAKE_OLLAMA_PIDFILE", "").strip()
        return cls(
            host=resolve_host(environ.get("OLLAMA_HOST")),
            token_delay=number("FAKE_OLLAMA_TOKEN_DELAY") or 0.0,
            crash_after=number("FAKE_OLLAMA_CRASH_AFTER"),
            pidfile=Path(pidfile) if pidfile else None,
            server_version=environ.get("FAKE_OLLAMA_SERVER_VERSION", "").strip() or "0.33.0",
        )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments: "):
            message = f"unknown flag: {message.split(': ', 1)[1].split()[0]}"
        raise CliError(message)


def _levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a.lower(), 1):
        current = [i]
        for j, char_b in enumerate(b.lower(), 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


def _unknown_command(typed: str) -> CliError:
    """cobra's legacyArgs error, with its "Did you mean this?" suggestions."""
    similar = [
        name
        for name in COMMANDS
        if _levenshtein(typed, name) <= 2 or name.startswith(typed.lower())
    ]
    hint = "\n\nDid you mean this?\n" + "".join(f"\t{s}\n" for s in similar) if similar else ""
    return CliError(f'unknown command "{typed}" for "ollama"{hint}')


def _parser(name: str) -> _Parser:
    parser = _Parser(prog=f"ollama {name}", description=COMMANDS[name][1])
    parser.add_argument("args", nargs="*")
    if name == "create":
        parser.add_argument("-f", "--file", default=None, help="Name of the Modelfile")
        parser.add_argument("-q", "--quantize", default="", help="Quantize model to this level")
    elif name == "show":
        for field in ("license", "modelfile", "parameters", "system", "template"):
            parser.add_argument(f"--{field}", action="store_true", help=f"Show {field} of a model")
        parser.add_argument("-v", "--verbose", action="store_true", help="Show detailed model info")
    elif name == "run":
        parser.add_argument("--keepalive", default="", help="Duration to keep a model loaded")
        parser.add_argument("--format", default="", help="Response format (e.g. json)")
        parser.add_argument("--think", default=None, help="true, false, high, medium or low")
        for flag in ("verbose", "insecure", "nowordwrap", "hidethinking"):
            parser.add_argument(f"--{flag}", action="store_true")
    elif name in ("pull", "push"):
        parser.add_argument("--insecure", action="store_true", help="Use an insecure registry")
    return parser


def _check_count(name: str, args: Sequence[str]) -> None:
    low, high = COMMANDS[name][2]
    if high is not None and low == high and len(args) != low:
        raise CliError(f"accepts {low} arg(s), received {len(args)}")
    if len(args) < low:
        raise CliError(f"requires at least {low} arg(s), only received {len(args)}")


def _think(value: str | None) -> bool | str | None:
    if value is None:
        return None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value.lower() in ("high", "medium", "low"):
        return value.lower()
    raise CliError(f'invalid value "{value}" for --think: use true, false, high, medium or low')


def _run_options(ns: argparse.Namespace) -> RunOptions:
    return RunOptions(
        model=ns.args[0],
        prompt=" ".join(ns.args[1:]),
        format=ns.format,
        keep_alive=keep_alive_value(ns.keepalive),
        think=_think(ns.think),
        hide_thinking=ns.hidethinking,
        verbose=ns.verbose,
        insecure=ns.insecure,
    )


def _show_field(ns: argparse.Namespace) -> str | None:
    chosen = [
        f for f in ("license", "modelfile", "parameters", "system", "template") if getattr(ns, f)
    ]
    if len(chosen) > 1:
        raise CliError(
            "only one of '--license', '--modelfile', '--parameters', '--system', "
            "or '--template' can be specified"
        )
    return chosen[0] if chosen else None


_Handler = Callable[[Client, Console, argparse.Namespace], int]
_HANDLERS: dict[str, _Handler] = {
    "create": lambda c, con, ns: commands.create(c, con, ns.args[0], ns.file, ns.quantize),
    "show": lambda c, con, ns: commands.show(c, con, ns.args[0], _show_field(ns)),
    "run": lambda c, con, ns: run(c, con, _run_options(ns)),
    "stop": lambda c, con, ns: commands.stop(c, con, ns.args[0]),
    "pull": lambda c, con, ns: commands.pull(c, con, ns.args[0], ns.insecure),
    "push": lambda c, con, ns: commands.push(c, con, ns.args[0], ns.insecure),
    "list": lambda c, con, ns: commands.list_models(c, con, (ns.args or [None])[0]),
    "ps": lambda c, con, ns: commands.list_running(c, con, (ns.args or [None])[0]),
    "cp": lambda c, con, ns: commands.copy(c, con, ns.args[0], ns.args[1]),
    "rm": lambda c, con, ns: commands.remove(c, con, list(ns.args)),
}


def _split_root(argv: Sequence[str]) -> tuple[str | None, list[str], bool]:
    """Root flags (-v, -h) and the subcommand name; the rest belongs to the subcommand."""
    version = False
    for index, token in enumerate(argv):
        if token in ("-v", "--version"):
            version = True
        elif token in ("-h", "--help"):
            return "help", [], False
        elif token.startswith("--"):
            raise CliError(f"unknown flag: {token.split('=', 1)[0]}")
        elif token.startswith("-") and len(token) > 1:
            raise CliError(f"unknown shorthand flag: '{token[1]}' in {token}")
        else:
            name = _ALIASES.get(token, token)
            if name not in COMMANDS:
                raise _unknown_command(token)
            if version:
                raise CliError("unknown shorthand flag: 'v' in -v")
            return name, list(argv[index + 1 :]), False
    return None, [], version


def _dispatch(argv: Sequence[str], environ: Mapping[str, str], console: Console) -> int:
    name, rest, version = _split_root(argv)
    env = Environment.from_environ(environ)
    if name is None and version:
        with Client(env.host.connect_url()) as client:
            return commands.version(client, console)
    if name is None or name == "help":
        if rest and _ALIASES.get(rest[0], rest[0]) in COMMANDS:
            console.say(_parser(_ALIASES.get(rest[0], rest[0])).format_help())
        else:
            console.say(USAGE)
        return 0
    if name == "run":  # cobra's NoOptDefVal: a bare --think never takes the next word
        rest = ["--think=true" if token == "--think" else token for token in rest]
    ns = _parser(name).parse_intermixed_args(rest)
    _check_count(name, ns.args)
    if name == "serve":
        # Imported here so client commands do not pay for uvicorn and the emulator.
        from tests.fake_ollama.server import ServeOptions, serve

        options = ServeOptions(env.token_delay, env.crash_after, env.pidfile, env.server_version)
        return serve(env.host, options, console)
    with Client(env.host.connect_url()) as client:
        client.heartbeat()
        return _HANDLERS[name](client, console, ns)


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    console: Console | None = None,
) -> int:
    console = console or Console(sys.stdout, sys.stderr, sys.stdin)
    try:
        return _dispatch(
            sys.argv[1:] if argv is None else argv,
            os.environ if environ is None else environ,
            console,
        )
    except CliError as err:
        console.status(f"Error: {err}\n")
        return 1
    except KeyboardInterrupt:
        # A Go program without a SIGINT handler dies of the signal; so does this one.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130

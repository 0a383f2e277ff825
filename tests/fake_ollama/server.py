"""`ollama serve`: the project's Ollama emulator, in the foreground of this process.

Like the real server it listens on `envconfig.Host()`, says `Listening on ...` on
stderr (slog format), writes one `[GIN]` access line per request on stdout, fails with
Go's `listen tcp ...: bind: ...` error when it cannot listen, and exits with status 0
on SIGTERM or SIGINT. Test knobs (see `ServeOptions`) add a pid file and a crash.
The emulator's `/_emulator/*` control endpoints are served too.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.emulator.app import create_app
from tests.emulator.config import EmulatorConfig

# Private, but it is the emulator's own: without it every injected reset logs a traceback.
from tests.emulator.server import uvicorn_config
from tests.fake_ollama.client import CliError
from tests.fake_ollama.commands import Console
from tests.fake_ollama.hosts import OllamaHost
from tests.fake_ollama.render import go_duration

__all__ = ["GinAccessLog", "ServeOptions", "serve"]


@dataclass(frozen=True)
class ServeOptions:
    token_delay: float = 0.0  # FAKE_OLLAMA_TOKEN_DELAY
    crash_after: float | None = None  # FAKE_OLLAMA_CRASH_AFTER: exit 2 this long after listening
    pidfile: Path | None = None  # FAKE_OLLAMA_PIDFILE: one line per start
    version: str = "0.33.0"  # FAKE_OLLAMA_SERVER_VERSION: what /api/version reports


def _slog(message: str) -> str:
    """A line of Go's slog text handler, as the server writes it to stderr."""
    now = _dt.datetime.now().astimezone()
    stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f'time={stamp} level=INFO source=routes.go:1485 msg="{message}"\n'


def _bind_error(host: OllamaHost, err: OSError) -> CliError:
    if isinstance(err, socket.gaierror):
        return CliError(f"listen tcp {host.hostport}: lookup {host.host}: no such host")
    reason = os.strerror(err.errno or 0)
    return CliError(f"listen tcp {host.hostport}: bind: {reason[:1].lower()}{reason[1:]}")


def _listen(host: OllamaHost) -> socket.socket:
    """`net.Listen("tcp", host)`: wildcard hosts get a dual-stack socket where possible."""
    port = host.port_number
    if host.host in ("", "0.0.0.0", "::"):
        candidates = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
    else:
        infos = socket.getaddrinfo(host.host, port, type=socket.SOCK_STREAM)
        infos.sort(key=lambda info: info[0] != socket.AF_INET)  # Go prefers IPv4
        candidates = [(info[0], str(info[4][0])) for info in infos[:1]]
    for family, address in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go does
            if family == socket.AF_INET6 and address == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((address, port))
            sock.listen(512)
            return sock
        except OSError as err:
            sock.close()
            if err.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL) or address != "::":
                raise
    raise OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))


def _address(sock: socket.socket) -> str:
    address, port = sock.getsockname()[:2]
    return f"[{address}]:{port}" if sock.family == socket.AF_INET6 else f"{address}:{port}"


class GinAccessLog:
    """gin.Logger() with colours off, one line per request on stdout:

    `[GIN] 2025/05/04 - 17:37:44 | 200 |    1.234567ms |       127.0.0.1 | POST    "/api/chat"`
    """

    def __init__(self, app: ASGIApp, out: Any) -> None:
        self.app = app
        self.out = out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_emulator/"):
            await self.app(scope, receive, send)
            return
        started = time.monotonic_ns()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self._line(scope, status, time.monotonic_ns() - started)

    def _line(self, scope: Scope, status: int, latency_ns: int) -> None:
        query = scope.get("query_string", b"").decode("latin-1")
        path = scope["path"] + (f"?{query}" if query else "")
        client = (scope.get("client") or ("", 0))[0]
        stamp = _dt.datetime.now().strftime("%Y/%m/%d - %H:%M:%S")
        quoted = '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
        self.out.write(
            f"[GIN] {stamp} | {status:3d} | {go_duration(latency_ns):>13} | {client:>15} |"
            f" {scope['method']:<7} {quoted}\n"
        )
        self.out.flush()


def _exit_zero(signum: int, frame: object) -> NoReturn:
    # Not SystemExit: raised where the signal lands (a weakref or GC callback, say), Python
    # may print and ignore it, and the server would go on running.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _crash_later(seconds: float, console: Console) -> None:
    def crash() -> None:
        console.status(
            f"panic: FAKE_OLLAMA_CRASH_AFTER={seconds} elapsed\n\ngoroutine 1 [running]:\n"
        )
        os._exit(2)  # like a Go panic: no cleanup, status 2

    timer = threading.Timer(seconds, crash)
    timer.daemon = True
    timer.start()


def serve(host: OllamaHost, options: ServeOptions, console: Console) -> int:
    if options.pidfile is not None:
        with options.pidfile.open("a", encoding="utf-8") as pidfile:
            pidfile.write(f"{os.getpid()}\n")
    # Until uvicorn installs its handlers (and after it restores these and re-raises
    # the signal it caught), SIGTERM/SIGINT mean a clean exit, as in the real server.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_zero)
    try:
        sock = _listen(host)
    except OSError as err:
        raise _bind_error(host, err) from None
    console.status(_slog(f"Listening on {_address(sock)} (version {options.version})"))
    if options.crash_after is not None:
        _crash_later(options.crash_after, console)
    config = EmulatorConfig(token_delay=options.token_delay, version=options.version)
    server = uvicorn.Server(uvicorn_config(GinAccessLog(create_app(config), console.out)))
    server.run(sockets=[sock])
    return 0

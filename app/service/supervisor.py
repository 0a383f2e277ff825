"""Runs ``ollama serve`` on the upstream address and keeps it running.

The child gets ``OLLAMA_HOST`` set to the upstream address whatever the user's environment
says (an inherited ``0.0.0.0`` or ``:11434`` would fight the proxy for its port), and no
``HTTP(S)_PROXY`` (Ollama's FAQ: it breaks client connections). Its output goes to a log file.
When it exits it is restarted with exponential backoff, each restart counted and logged. On
Linux the child is tied to this process (PR_SET_PDEATHSIG), so even a ``kill -9`` of the
wrapper leaves no orphan Ollama holding the GPU.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from app.service.jobobject import KillOnCloseJob

log = logging.getLogger(__name__)

_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY")


def child_environment(
    upstream_host: str,
    base: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Ollama's environment: ours (or ``base``), plus ``extra`` (the OLLAMA_ENV setting),
    with OLLAMA_HOST forced to the upstream address and no HTTP proxy."""
    env = dict(os.environ if base is None else base)
    env.update(extra or {})
    env["OLLAMA_HOST"] = upstream_host
    for name in _PROXY_VARIABLES:
        env.pop(name, None)
    return env


def upstream_address(url: str) -> str:
    """host:port of the upstream URL, as OLLAMA_HOST for the Ollama that serve starts."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6: Ollama splits host and port as Go's net.SplitHostPort does
        host = f"[{host}]"
    return f"{host}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


# How long one readiness probe of the Ollama that serve starts may take.
PROBE_TIMEOUT = 2.0


async def answers(address: str) -> bool:
    """Whether the HTTP server at ``address`` (host:port, as ``upstream_address`` gives it)
    answers ``GET /api/version`` with 200 within ``PROBE_TIMEOUT``: one HTTP/1.0 exchange on
    a connection of its own, asked directly (never through an HTTP_PROXY)."""
    host, _, port = address.rpartition(":")
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            try:
                writer.write(f"GET /api/version HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
                status_line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError):
        return False
    return status_line.split()[1:2] == [b"200"]


def _die_with_parent() -> Callable[[], object]:
    """The child's ``preexec_fn``: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, Ollama ends with us.

    libc's ``prctl`` is looked up here, in the parent. Looking it up in the child, between
    fork and exec, would ``dlopen`` libc there: if another thread of the proxy (the analytics
    writer, an executor thread) held the loader's or the allocator's lock at the fork, the
    child would hang before it runs Ollama, and the parent's ``Popen`` with it."""
    prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    return functools.partial(prctl, 1, signal.SIGTERM)


class OllamaSupervisor:
    def __init__(
        self,
        binary: str,
        *,
        upstream_host: str,
        log_path: Path,
        on_restart: Callable[[], None] | None = None,
        extra_env: Mapping[str, str] | None = None,
        max_backoff: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.binary = binary
        self.upstream_host = upstream_host  # host:port
        self.log_path = log_path
        self.on_restart = on_restart
        self.extra_env = dict(extra_env or {})
        self.job = KillOnCloseJob()
        self.max_backoff = max_backoff
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.restarts = 0
        self.spawned_at = 0.0

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as output:
            kwargs: dict[str, object] = {}
            if sys.platform.startswith("linux"):
                kwargs["preexec_fn"] = _die_with_parent()
            if sys.platform == "win32":
                kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
            else:
                # Its own session: a Ctrl-C in the terminal reaches only the wrapper, which
                # then stops Ollama after the proxy has drained.
                kwargs["start_new_session"] = True
            process = subprocess.Popen(  # type: ignore[call-overload]
                [self.binary, "serve"],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=child_environment(self.upstream_host, extra=self.extra_env),
                **kwargs,
            )
        if sys.platform == "win32":
            self.job.close()
            self.job.assign(int(process._handle))
        log.info("started ollama serve (pid %d) on %s", process.pid, self.upstream_host)
        self.spawned_at = time.monotonic()
        return process  # type: ignore[no-any-return]

    async def start(self, *, ready_within: float = 60.0) -> None:
        """Start Ollama and wait until it answers; raise if it does not."""
        self.process = self._spawn()
        await self.wait_ready(ready_within)
        self.task = asyncio.create_task(self._watch(), name="ollama-supervisor")

    async def wait_ready(self, within: float) -> None:
        deadline = time.monotonic() + within
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"ollama serve exited with status {self.process.returncode} at start; "
                    f"see {self.log_path}"
                )
            if await answers(self.upstream_host):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"ollama serve did not answer on {self.upstream_host} within "
                    f"{within:.0f}s; see {self.log_path}"
                )
            await asyncio.sleep(0.1)

    async def _watch(self) -> None:
        backoff = 1.0
        while not self._stopped():
            assert self.process is not None
            code = await asyncio.to_thread(self.process.wait)
            if self._stopped():
                return
            if time.monotonic() - self.spawned_at > 60:
                backoff = 1.0  # it ran a good while: this is a new failure, not a crash loop
            self.restarts += 1
            log.error(
                "ollama serve exited with status %s; restarting in %.0fs (restart %d; see %s)",
                code,
                backoff,
                self.restarts,
                self.log_path,
            )
            if self.on_restart is not None:
                self.on_restart()
            await asyncio.sleep(backoff)
            if self._stopped():
                return
            self.process = self._spawn()
            try:
                await self.wait_ready(60)
            except RuntimeError as exc:
                log.error("%s", exc)
            backoff = min(backoff * 2, self.max_backoff)

    def _stopped(self) -> bool:
        # A method, not the attribute: stop() flips it while _watch awaits.
        return self.stopping

    async def stop(self) -> None:
        self.stopping = True
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("ollama serve did not stop in %.0fs; killing it", self.stop_timeout)
                process.kill()
                await asyncio.to_thread(process.wait)
            log.info("stopped ollama serve (pid %d)", process.pid)
        # On Windows: ends whatever Ollama started (model runners) with it.
        self.job.close()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

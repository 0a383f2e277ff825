"""The processes a benchmark run starts, and what /proc says about them.

Every server is a child process on a free loopback port: the two upstreams (a static nginx
for small answers, ``bench.upstream`` for streams), our proxy exactly as a user starts it,
nginx as a reverse proxy, and optionally LiteLLM. CPU time and memory are read from
``/proc/<pid>/stat`` and ``/proc/<pid>/status``, summed over the process and its children
(nginx's workers).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import nginx

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s: {process.args!r}")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _stat_cpu(path: str) -> float:
    """utime + stime from a /proc ``stat`` file, in seconds (0 when it is gone)."""
    try:
        with open(path, "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds."""
    return sum(_stat_cpu(f"/proc/{pid}/stat") for pid in pids)


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of the process's main thread (an asyncio server's event loop), and of
    all its other threads (a thread that ended meanwhile is not counted)."""
    main = other = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        seconds = _stat_cpu(f"/proc/{pid}/task/{tid}/stat")
        if int(tid) == pid:
            main += seconds
        else:
            other += seconds
    return main, other


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """(VmRSS, VmHWM) summed over these processes, in MB."""
    rss = hwm = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, hwm / 1024


@dataclass
class Server:
    """A running child process that serves HTTP on ``port``."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    pids: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def refresh(self) -> None:
        self.pids = tree(self.process.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pids)

    def memory(self) -> tuple[float, float]:
        return memory_mb(self.pids)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def started(
    name: str,
    command: list[str],
    port: int,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Iterator[Server]:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    with open(workdir / "output.log", "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(name, port, process, workdir)
    try:
        try:
            wait_listening(port, process, timeout)
        except (RuntimeError, TimeoutError) as exc:
            output = (workdir / "output.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} did not start: {exc}\n{output}") from exc
        time.sleep(0.2)  # nginx forks its workers after it listens
        server.refresh()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def generator() -> contextlib.AbstractContextManager[Server]:
    port = free_port()
    command = [sys.executable, "-m", "bench.upstream", "--port", str(port)]
    return started("generator", command, port)


@contextlib.contextmanager
def nginx_server(name: str, render: nginx.Render) -> Iterator[Server]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-conf-") as conf_dir:
        conf = nginx.write_config(Path(conf_dir), render(port, Path(conf_dir)))
        command = [nginx.binary(), "-p", conf_dir, "-e", f"{conf_dir}/error.log"]
        command += ["-c", str(conf), "-g", "daemon off;"]
        with started(name, command, port) as server:
            yield server


def static_upstream() -> contextlib.AbstractContextManager[Server]:
    return nginx_server("static", nginx.static_config)


def nginx_proxy(upstream: str) -> contextlib.AbstractContextManager[Server]:
    return nginx_server("nginx", lambda port, work: nginx.proxy_config(port, work, upstream))


def our_proxy(
    upstream: str, *, analytics_dir: Path | None = None
) -> contextlib.AbstractContextManager[Server]:
    """``ollama-metrics proxy`` with metrics and analytics (SQLite) on; the store goes into
    ``analytics_dir`` (kept: the caller's), else into a temporary folder (removed)."""
    port = free_port()
    analytics = str(analytics_dir) if analytics_dir else tempfile.mkdtemp(prefix="bench-analytics-")
    exe = Path(sys.executable).with_name("ollama-metrics")
    command = [str(exe), "proxy", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--upstream", upstream, "--log-level", "warning"]
    env = {**os.environ, "ANALYTICS_DIR": analytics, "PS_POLL_INTERVAL": "0"}
    env |= {"ANALYTICS_BACKEND": "sqlite", "LOG_LEVEL": "warning"}

    @contextlib.contextmanager
    def running() -> Iterator[Server]:
        try:
            with started("proxy", command, port, env=env) as server:
                yield server
        finally:
            if analytics_dir is None:
                shutil.rmtree(analytics, ignore_errors=True)

    return running()

"""The wrapper around Ollama's own CLI: ``run``, passthrough commands and ``--version``.

Every Ollama command runs against the proxy (``OLLAMA_HOST`` = the proxy's address), so
what the CLI does is measured like any other client.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from app import __version__
from app.config import Settings
from app.reexec import self_command
from app.service.binary import INSTALL_HINT, find_ollama


def proxy_address(settings: Settings) -> str:
    """host:port where clients reach the proxy."""
    host = settings.proxy_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]:{settings.proxy_port}" if ":" in host else f"{host}:{settings.proxy_port}"


def proxy_answers(settings: Settings) -> bool:
    import httpx  # only for this command: the proxy itself never loads it

    try:
        answer = httpx.get(f"http://{proxy_address(settings)}/test", timeout=2)
        return answer.status_code == 200 and "proxy_version" in answer.json()
    except (httpx.HTTPError, ValueError):
        return False


def upstream_version(settings: Settings, timeout: float = 1.0) -> str | None:
    import httpx

    try:
        answer = httpx.get(settings.ollama_upstream + "/api/version", timeout=timeout)
        version = answer.json().get("version") if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return str(version) if version else None


def version_text(settings: Settings) -> str:
    lines = [f"ollama-metrics {__version__}"]
    found = upstream_version(settings)
    if found:
        lines.append(f"ollama {found} (at {settings.ollama_upstream.split('@')[-1]})")
    return "\n".join(lines)


def ensure_stack(settings: Settings, *, within: float = 90.0) -> str | None:
    """Start ``ollama-metrics serve`` in the background unless the proxy answers already.
    Returns None when the proxy answers, else a message saying why it could not start."""
    if proxy_answers(settings):
        return None
    log_path = settings.analytics_dir / "serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as output:
        process = subprocess.Popen(
            [*self_command(), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=sys.platform != "win32",
        )
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proxy_answers(settings):
            print(
                f"ollama-metrics: started serve in the background (log: {log_path})",
                file=sys.stderr,
            )
            return None
        if process.poll() is not None:
            return f"ollama-metrics serve exited with status {process.returncode}:\n" + _tail(
                log_path
            )
        time.sleep(0.2)
    return f"ollama-metrics serve did not answer within {within:.0f}s; see {log_path}"


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_ollama(settings: Settings, args: list[str]) -> int:
    """``ollama ARGS`` against the proxy, stdio and exit code passed through."""
    binary = find_ollama(settings.ollama_bin)
    if binary is None:
        print(f"ollama-metrics: {INSTALL_HINT}", file=sys.stderr)
        return 1
    env = dict(os.environ)
    env["OLLAMA_HOST"] = proxy_address(settings)
    try:
        return subprocess.call([binary, *args], env=env)
    except KeyboardInterrupt:
        return 130

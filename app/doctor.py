"""``ollama-metrics doctor``: one table of checks, with a fix for each failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings, find_config_file
from app.service.ports import describe_port_owner
from app.wrapper import proxy_address, upstream_version

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    state: str
    detail: str
    fix: str = ""


def run_checks(settings: Settings, *, public_url: str | None = None) -> list[Check]:
    proxy_url = f"http://{proxy_address(settings)}"
    return [
        _config_file(),
        _proxy_port(settings, proxy_url),
        _upstream(settings),
        _chain(proxy_url),
        _scrape(proxy_url),
        _store(settings),
        _buffering(public_url or proxy_url),
        _autostart(),
    ]


def _config_file() -> Check:
    # Settings were read already, so a file that is there is a valid one.
    path = find_config_file()
    if path is None:
        return Check("configuration", OK, "environment and defaults (no configuration file)")
    return Check("configuration", OK, str(path))


def _proxy_port(settings: Settings, proxy_url: str) -> Check:
    owner = describe_port_owner(settings.proxy_host, settings.proxy_port)
    name = f"port {settings.proxy_port}"
    if owner is None:
        return Check(
            name, WARN, "nothing listens: the proxy is not running", "ollama-metrics serve"
        )
    if owner.startswith("ollama-metrics"):
        return Check(name, OK, owner.split(":")[0])
    return Check(name, FAIL, owner.split(":")[0], owner.split(":", 1)[1].strip())


def _upstream(settings: Settings) -> Check:
    shown = settings.ollama_upstream.split("@")[-1]
    version = upstream_version(settings, timeout=3)
    if version:
        return Check("ollama upstream", OK, f"Ollama {version} at {shown}")
    return Check(
        "ollama upstream",
        FAIL,
        f"no Ollama answers at {shown}",
        "ollama-metrics serve (starts it), or OLLAMA_HOST=127.0.0.1:11435 ollama serve",
    )


def _chain(proxy_url: str) -> Check:
    try:
        chain = httpx.get(proxy_url + "/test", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return Check("proxy", FAIL, f"no answer from {proxy_url}/test", "ollama-metrics serve")
    if chain.get("upstream_reachable"):
        return Check("proxy", OK, f"{proxy_url} → Ollama in {chain.get('round_trip_ms')} ms")
    return Check("proxy", FAIL, f"the proxy cannot reach {chain.get('upstream')}", "start Ollama")


def _scrape(proxy_url: str) -> Check:
    try:
        text = httpx.get(proxy_url + "/metrics", timeout=5).text
        names = {family.name for family in text_string_to_metric_families(text)}
    except (httpx.HTTPError, ValueError) as exc:
        return Check(
            "prometheus scrape", FAIL, f"{proxy_url}/metrics: {exc}", "ollama-metrics serve"
        )
    if "ollama_requests" in names:
        return Check("prometheus scrape", OK, f"{len(names)} metric families")
    return Check("prometheus scrape", FAIL, "no ollama_requests_total in /metrics", "")


def _store(settings: Settings) -> Check:
    from app.analytics import migrate
    from app.analytics.sql import create_store_engine, settings_url

    names = settings.analytics_backends
    if "sqlite" not in names and "postgresql" not in names:
        return Check("analytics store", OK, f"no SQL store ({', '.join(names) or 'off'})")
    url = settings_url(settings)
    try:
        engine = create_store_engine(url)
        shown = engine.url.render_as_string(hide_password=True)
        current, head = migrate.current(engine), migrate.head(engine)
        engine.dispose()
    except Exception as exc:
        return Check(
            "analytics store",
            FAIL,
            f"{type(exc).__name__}: {exc}"[:200],
            "check ANALYTICS_DATABASE_URL / ANALYTICS_DIR",
        )
    if url.startswith("sqlite") and not os.access(settings.analytics_dir, os.W_OK):
        return Check(
            "analytics store",
            FAIL,
            f"{settings.analytics_dir} is not writable",
            "fix its permissions",
        )
    if current != head:
        return Check(
            "analytics store",
            WARN,
            f"{shown} at {current or 'base'}, newest {head}",
            "ollama-metrics db upgrade",
        )
    return Check("analytics store", OK, f"{shown} at {current}")


def _buffering(url: str) -> Check:
    # A reverse proxy that compresses answers buffers streams to do it.
    try:
        answer = httpx.get(url + "/api/version", headers={"Accept-Encoding": "gzip"}, timeout=5)
    except httpx.HTTPError:
        return Check("streaming", WARN, f"could not reach {url}", "")
    if answer.headers.get("content-encoding"):
        return Check(
            "streaming",
            FAIL,
            f"{url} compresses answers ({answer.headers['content-encoding']}): streams buffer",
            "in the reverse proxy: gzip off and proxy_buffering off for this location",
        )
    return Check("streaming", OK, f"{url} passes answers uncompressed")


def _autostart() -> Check:
    name = "ollama auto-start"
    if sys.platform == "win32":
        from app.winsvc import ollama_conflicts
        from app.winsvc.manage import real_windows
        from app.winsvc.sc import DEFAULT_NAME

        win = real_windows()
        found = [
            entry
            for entry in (ollama_conflicts.find(win, own_service=DEFAULT_NAME) if win else [])
            if entry["kind"] != "process"
        ]
        if found:
            return Check(
                name,
                WARN,
                "Ollama starts on its own and takes 11434: "
                + "; ".join(ollama_conflicts.describe(entry) for entry in found),
                "ollama-metrics service install stops and disables it (uninstall restores it)",
            )
        return Check(name, OK, "Ollama does not start on its own")
    if sys.platform == "darwin":
        if Path("/Applications/Ollama.app").exists():
            return Check(
                name,
                WARN,
                "the Ollama app may start at login on 11434",
                "remove it from Login Items",
            )
        return Check(name, OK, "no Ollama app")
    systemctl = shutil.which("systemctl")
    if systemctl:
        state = subprocess.run(
            [systemctl, "is-enabled", "ollama"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if state == "enabled":
            return Check(
                name,
                FAIL,
                "systemd starts ollama.service on 11434",
                "sudo systemctl disable --now ollama",
            )
    return Check(name, OK, "no enabled ollama.service")


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        line = f"{check.state:<4}  {check.name:<{width}}  {check.detail}"
        if check.fix and check.state != OK:
            line += f"\n      {'':<{width}}  fix: {check.fix}"
        lines.append(line)
    return "\n".join(lines)

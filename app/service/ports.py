"""Who is on a port, in plain words, with the fix for this platform."""

from __future__ import annotations

import socket
import sys


def listening(host: str, port: int) -> bool:
    target = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((target, port)) == 0


def _autostart_fix() -> str:
    if sys.platform == "win32":
        return (
            "quit Ollama from the tray icon and remove its shortcut from the Startup folder "
            "(shell:startup), or run this proxy on another port with --port"
        )
    if sys.platform == "darwin":
        return (
            "quit the Ollama app (menu bar icon → Quit) and remove it from "
            "System Settings → General → Login Items"
        )
    return "stop it with: sudo systemctl disable --now ollama"


def describe_port_owner(host: str, port: int) -> str | None:
    """None when the port is free, otherwise a sentence saying who holds it and what to do."""
    if not listening(host, port):
        return None
    import httpx  # only when the port is taken: a proxy that starts never loads it

    target = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    if ":" in target:
        target = f"[{target}]"  # an IPv6 address in a URL
    # Asked directly, never through HTTP_PROXY / ALL_PROXY.
    with httpx.Client(timeout=2, trust_env=False) as client:
        try:
            ours = client.get(f"http://{target}:{port}/test").json()
            if isinstance(ours, dict) and "proxy_version" in ours:
                return (
                    f"ollama-metrics (version {ours['proxy_version']}) is already running on "
                    f"{port}: use it, or stop it first"
                )
        except (httpx.HTTPError, ValueError):
            pass
        try:
            answer = client.get(f"http://{target}:{port}/api/version")
            version = answer.json().get("version") if answer.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            version = None
            answer = None
    if version:
        return (
            f"an Ollama server (version {version}) is already listening on {port}: "
            f"{_autostart_fix()}"
        )
    server = answer.headers.get("server") if answer is not None else None
    who = f"another program ({server})" if server else "another program"
    return f"port {port} is already in use by {who}: stop it, or choose another port with --port"

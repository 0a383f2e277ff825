"""nginx configurations: the static upstream and the reverse proxy a user would put there.

Both run as a child of the benchmark (``-g 'daemon off;'``), as root with ``user root;`` or
as the current user, with their pid file, logs and temp paths in a temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from bench import upstream

Render = Callable[[int, Path], str]


def binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        raise FileNotFoundError("nginx is not installed (apt-get install nginx)")
    return found


def version() -> str:
    done = subprocess.run([binary(), "-v"], capture_output=True, text=True, check=False)
    return (done.stderr or done.stdout).strip().removeprefix("nginx version: ")


def common(work: Path, *, workers: str) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"  {kind}_temp_path {work}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes {workers};\npid {work}/nginx.pid;\n"
        f"error_log {work}/error.log warn;\n"
        "events { worker_connections 8192; multi_accept on; }\n"
        f"http {{\n  access_log off;\n{temp}\n  keepalive_requests 1000000;\n"
        "  keepalive_timeout 300s;\n"
    )


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def static_config(port: int, work: Path) -> str:
    """Canned Ollama answers; ``return 200`` answers any method."""
    tags = _quoted(upstream.TAGS)
    generated = _quoted(upstream.GENERATED)
    version = _quoted(json.dumps({"version": "0.33.0"}))
    return common(work, workers="auto") + (
        f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n"
        "    default_type 'application/json; charset=utf-8';\n"
        f"    location = /api/tags {{ return 200 {tags}; }}\n"
        f"    location = /api/generate {{ return 200 {generated}; }}\n"
        f"    location = /api/version {{ return 200 {version}; }}\n"
        "    location / { return 200 '{}'; }\n"
        "  }\n}\n"
    )


def proxy_config(port: int, work: Path, target: str) -> str:
    """A plain reverse proxy: no buffering either way, a keep-alive pool upstream."""
    address = target.removeprefix("http://").rstrip("/")
    return common(work, workers="auto") + (
        f"  upstream ollama {{\n    server {address};\n    keepalive 512;\n"
        "    keepalive_requests 1000000;\n  }\n"
        f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n"
        "    client_max_body_size 0;\n"
        "    location / {\n"
        "      proxy_pass http://ollama;\n"
        "      proxy_http_version 1.1;\n"
        '      proxy_set_header Connection "";\n'
        "      proxy_buffering off;\n"
        "      proxy_request_buffering off;\n"
        "      proxy_read_timeout 3600s;\n"
        "      proxy_send_timeout 3600s;\n"
        "    }\n  }\n}\n"
    )


def write_config(work: Path, text: str) -> Path:
    path = work / "nginx.conf"
    path.write_text(text)
    return path

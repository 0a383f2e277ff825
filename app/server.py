"""Running the app under uvicorn with the settings a transparent proxy needs."""

from __future__ import annotations

import errno
import logging
from urllib.parse import urlsplit

import uvicorn

from app.config import Settings
from app.main import create_app
from app.service.ports import describe_port_owner

log = logging.getLogger(__name__)


def uvicorn_config(settings: Settings, *, ollama_binary: str | None = None) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings, ollama_binary=ollama_binary),
        host=settings.proxy_host,
        port=settings.proxy_port,
        # httptools + uvloop: the fastest parser and loop uvicorn has (uvloop is absent on
        # Windows, where "auto" falls back to asyncio).
        loop="auto",
        http="httptools",
        lifespan="on",
        # Ollama sends neither; the upstream's own Date header is passed through.
        server_header=False,
        date_header=False,
        access_log=False,
        # The client address is the socket peer; X-Forwarded-* is not trusted by default.
        proxy_headers=False,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
        # Ollama's clients keep connections open between turns.
        timeout_keep_alive=75,
    )


def run_proxy(settings: Settings, *, ollama_binary: str | None = None) -> int:
    """Run the proxy (and, for `serve`, Ollama under it) until SIGTERM/Ctrl-C."""
    ports = [(settings.proxy_host, settings.proxy_port)]
    if ollama_binary is not None:
        parts = urlsplit(settings.ollama_upstream)
        ports.append((parts.hostname or "127.0.0.1", parts.port or 80))
    for host, port in ports:
        owner = describe_port_owner(host, port)
        if owner is not None:
            log.error("%s", owner)
            return 1
    try:
        config = uvicorn_config(settings, ollama_binary=ollama_binary)
    except ValueError as exc:
        # A bad rules file and the like: the message names the file and what is wrong.
        log.error("%s", exc)
        return 2
    server = uvicorn.Server(config)
    log.info(
        "ollama-metrics proxy listening on http://%s:%s -> %s",
        settings.proxy_host,
        settings.proxy_port,
        settings.ollama_upstream.split("@")[-1],
    )
    try:
        server.run()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            log.error("port %s is already in use", settings.proxy_port)
            return 1
        raise
    return 0 if server.started else 1

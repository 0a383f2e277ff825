"""The app factory: wires the forwarder, the proxy's own API and their shared lifespan.

    client ──▶ ProxyApp ──▶ Forwarder (app.proxy) ──▶ Ollama
                  │              │ feeds
                  │              ▼
                  │         ExchangeTap (app.exchange, reads with app.ollama)
                  │              │ finished ExchangeRecord
                  │              ▼
                  │         Instruments (app.metrics) ... analytics sinks
                  └──▶ own API (app.api): /metrics, /test

Routing is one set lookup on the hot path: the proxy's own paths go to FastAPI, everything
else to the forwarder, untouched.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import httpx
from prometheus_client import CollectorRegistry, Counter

from app.analytics.jsonl import JsonlBackend
from app.analytics.loki import LokiBackend
from app.analytics.rows import Backend
from app.analytics.sql import SqlStore, create_store_engine, settings_url
from app.analytics.writer import AnalyticsMetrics, AnalyticsWriter
from app.api.analytics import create_analytics_router
from app.api.routes import create_api
from app.config import Settings
from app.exchange import Recorder, Sink
from app.logs import AccessLog
from app.metrics.categories import Categoriser
from app.metrics.instruments import Instruments
from app.metrics.poller import LoadedModelsCollector, ModelPoller
from app.proxy.relay import Forwarder
from app.proxy.upstream import Upstream
from app.service.supervisor import OllamaSupervisor
from app.types import Receive, Scope, Send

log = logging.getLogger(__name__)

# Paths Ollama does not serve, answered by the proxy itself.
OWN_PATHS = frozenset({"/metrics", "/test", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
OWN_PREFIX = "/analytics/"


class ProxyApp:
    """The ASGI application uvicorn runs."""

    def __init__(self, settings: Settings, *, ollama_binary: str | None = None) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.instruments = Instruments(self.registry, max_models=settings.metrics_max_models)
        # `serve`: the proxy runs Ollama itself, on the upstream address.
        self.supervisor: OllamaSupervisor | None = None
        if ollama_binary is not None:
            restarts = Counter(
                "ollama_process_restarts",
                "Times `ollama-metrics serve` restarted an Ollama that had exited.",
                registry=self.registry,
            )
            self.supervisor = OllamaSupervisor(
                ollama_binary,
                upstream_host=upstream_address(settings.ollama_upstream),
                log_path=settings.ollama_log or settings.analytics_dir / "ollama.log",
                on_restart=restarts.inc,
                extra_env=settings.ollama_env,
            )
        self.categoriser = (
            Categoriser.from_file(settings.prompt_category_rules)
            if settings.prompt_category_rules
            else Categoriser.default()
        )
        self.store, backends = build_backends(settings)
        self.writer: AnalyticsWriter | None = None
        sinks: list[Sink] = [self.instruments, AccessLog()]
        if backends:
            self.writer = AnalyticsWriter(
                backends,
                metrics=AnalyticsMetrics(self.registry),
                queue_size=settings.analytics_queue_size,
                batch_size=settings.analytics_batch_size,
                store_prompts=settings.analytics_store_prompts,
                max_text_bytes=settings.analytics_max_text_bytes,
                retention_days=settings.analytics_retention_days,
            )
            sinks.append(self.writer)
        self.recorder = Recorder(
            sinks=sinks,
            categorise=self.categoriser.categorise,
            inject_usage=settings.usage_injection,
            text_limit=max(settings.analytics_max_text_bytes, 1),
        )
        self.upstream = Upstream(
            settings.ollama_upstream,
            connect_timeout=settings.upstream_connect_timeout,
            max_connections=settings.upstream_max_connections,
        )
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0))
        self.poller: ModelPoller | None = None
        if settings.ps_poll_interval > 0:
            self.poller = ModelPoller(
                http=self.http,
                url=settings.ollama_upstream,
                interval=settings.ps_poll_interval,
                collector=LoadedModelsCollector(registry=self.registry),
                on_result=lambda ok: self.instruments.upstream_up.set(1 if ok else 0),
            )
        self.forwarder = Forwarder(self.upstream, self.recorder)
        self.api = create_api(
            upstream_url=self.upstream.public_url,
            check_url=settings.ollama_upstream,
            registry=self.registry,
            instruments=self.instruments,
            http=self.http,
        )
        token = settings.analytics_token
        self.api.include_router(
            create_analytics_router(
                store=self.store,
                token=token.get_secret_value() if token else None,
                backends=settings.analytics_backends,
            )
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            scope["path"] in OWN_PATHS or scope["path"].startswith(OWN_PREFIX)
        ):
            await self.api(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.forwarder(scope, receive, send)

    async def startup(self) -> None:
        if self.supervisor is not None:
            # Before the proxy binds its port: Ollama answers first.
            await self.supervisor.start()
        await self.upstream.open()
        if self.store is not None and self.settings.analytics_auto_migrate:
            try:
                await asyncio.to_thread(self.store.migrate)
            except Exception as exc:
                # Never fatal: records wait in the queue and the writer migrates on retry.
                log.error("analytics store not ready (%s); will retry", exc)
        if self.writer is not None:
            await self.writer.start()
        if self.poller is not None:
            await self.poller.start()
        log.info("forwarding to Ollama at %s", self.upstream.public_url)

    async def shutdown(self) -> None:
        if self.poller is not None:
            await self.poller.stop()
        if self.writer is not None:
            await self.writer.stop(self.settings.analytics_drain_seconds)
        await self.upstream.close()
        await self.http.aclose()
        if self.supervisor is not None:
            await self.supervisor.stop()
        log.info("stopped")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.error("could not start: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def build_backends(settings: Settings) -> tuple[SqlStore | None, list[Backend]]:
    """The configured analytics backends; the SQL store also serves /analytics/*."""
    names = settings.analytics_backends
    backends: list[Backend] = []
    store: SqlStore | None = None
    if "sqlite" in names or "postgresql" in names:
        engine = create_store_engine(settings_url(settings))
        store = SqlStore(engine, auto_migrate=settings.analytics_auto_migrate)
        backends.append(store)
    if "jsonl" in names:
        backends.append(JsonlBackend(settings.analytics_dir))
    if "loki" in names and settings.loki_url:
        backends.append(LokiBackend(settings.loki_url, tenant=settings.loki_tenant))
    return store, backends


def upstream_address(url: str) -> str:
    """host:port of the upstream URL, as OLLAMA_HOST for the Ollama that serve starts."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def create_app(settings: Settings | None = None, *, ollama_binary: str | None = None) -> ProxyApp:
    return ProxyApp(settings or Settings(), ollama_binary=ollama_binary)

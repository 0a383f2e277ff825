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

import logging

import httpx
from prometheus_client import CollectorRegistry

from app.api.routes import create_api
from app.config import Settings
from app.exchange import Recorder
from app.metrics.categories import Categoriser
from app.metrics.instruments import Instruments
from app.metrics.poller import LoadedModelsCollector, ModelPoller
from app.proxy.relay import Forwarder
from app.proxy.upstream import Upstream
from app.types import Receive, Scope, Send

log = logging.getLogger(__name__)

# Paths Ollama does not serve, answered by the proxy itself.
OWN_PATHS = frozenset({"/metrics", "/test", "/docs", "/docs/oauth2-redirect", "/openapi.json"})


class ProxyApp:
    """The ASGI application uvicorn runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.instruments = Instruments(self.registry, max_models=settings.metrics_max_models)
        self.categoriser = (
            Categoriser.from_file(settings.prompt_category_rules)
            if settings.prompt_category_rules
            else Categoriser.default()
        )
        self.recorder = Recorder(
            sinks=[self.instruments],
            categorise=self.categoriser.categorise,
            inject_usage=settings.usage_injection,
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in OWN_PATHS:
            await self.api(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.forwarder(scope, receive, send)

    async def startup(self) -> None:
        await self.upstream.open()
        if self.poller is not None:
            await self.poller.start()
        log.info("forwarding to Ollama at %s", self.upstream.public_url)

    async def shutdown(self) -> None:
        if self.poller is not None:
            await self.poller.stop()
        await self.upstream.close()
        await self.http.aclose()
        log.info("stopped")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings | None = None) -> ProxyApp:
    return ProxyApp(settings or Settings())

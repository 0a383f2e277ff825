"""The app factory: builds every component from the settings, wires them, and nothing else.

The request path it wires is drawn in ``docs/architecture.md``: API-key admission, then
own paths to the proxy's API (``app.api``) and everything else to the forwarder
(``app.proxy``), whose tap (``app.exchange``) hands each finished record to the metrics,
the access log and the analytics writer. Only this module knows every package; each
component gets what it needs passed in. The policies on the way in are
``app.middleware``'s; the order components start and stop in is ``app.lifecycle``'s.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr

from app.analytics.jsonl import JsonlBackend
from app.analytics.rows import Backend
from app.analytics.sql import SqlStore, create_store_engine, settings_url
from app.analytics.writer import AnalyticsMetrics, AnalyticsWriter
from app.api.analytics import create_analytics_router
from app.api.routes import KEYED_OWN_PATHS, create_api
from app.auth import ApiKeys
from app.categories import Categoriser, ClientApps
from app.config import Settings
from app.exchange import Recorder, Sink
from app.lifecycle import Component, Lifespan, Step
from app.logs import AccessLog
from app.metrics.instruments import Instruments
from app.metrics.poller import LoadedModelsCollector, ModelPoller
from app.middleware.api_keys import ApiKeyAdmission
from app.middleware.dot_segments import DotSegmentGuard
from app.middleware.own_paths import Dispatch
from app.ollama.residency import Residency
from app.proxy.relay import Forwarder
from app.proxy.upstream import Upstream
from app.service.supervisor import OllamaSupervisor, upstream_address
from app.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)


class ProxyApp:
    """The ASGI application uvicorn runs: the lifespan here, every request down the chain."""

    def __init__(self, settings: Settings, *, ollama_binary: str | None = None) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.instruments = Instruments(
            self.registry, max_models=settings.metrics_max_models, node=settings.proxy_node
        )
        # `serve`: the proxy runs Ollama itself, on the upstream address.
        self.supervisor = build_supervisor(settings, ollama_binary, self.registry)
        self.store, backends = build_backends(settings)
        sinks: list[Sink] = [self.instruments, AccessLog()]
        self.writer: AnalyticsWriter | None = None
        if backends:
            self.writer = AnalyticsWriter(
                backends,
                metrics=AnalyticsMetrics(self.registry),
                queue_size=settings.analytics_queue_size,
                batch_size=settings.analytics_batch_size,
                store_prompts=settings.analytics_store_prompts,
                max_text_bytes=settings.analytics_max_text_bytes,
                retention_days=settings.analytics_retention_days,
                drain_seconds=settings.analytics_drain_seconds,
            )
            sinks.append(self.writer)
        categoriser = (
            Categoriser.from_file(settings.prompt_category_rules)
            if settings.prompt_category_rules
            else Categoriser.default()
        )
        # What Ollama holds in memory, from the /api/ps poll and the requests (no poller:
        # unknown, so cold starts only from load_duration, and no causes, placement or
        # loaded context).
        polled = settings.ps_poll_interval > 0
        loaded_models = LoadedModelsCollector(registry=self.registry) if polled else None
        self.residency = Residency(reload_window=settings.reload_window, listener=self.instruments)
        recorder = Recorder(
            sinks=sinks,
            categorise=categoriser.categorise,
            client_app=ClientApps(),
            residency=self.residency,
            node=settings.proxy_node,
            inject_usage=settings.usage_injection,
            text_limit=max(settings.analytics_max_text_bytes, 1),
        )
        self.upstream = Upstream(
            settings.ollama_upstream,
            connect_timeout=settings.upstream_connect_timeout,
            max_connections=settings.upstream_max_connections,
        )
        self.poller: ModelPoller | None = None
        if loaded_models is not None:
            self.poller = ModelPoller(
                # Its own connection: a poll never waits behind the proxied requests.
                ollama=Upstream(
                    settings.ollama_upstream,
                    connect_timeout=settings.upstream_connect_timeout,
                    max_connections=1,
                ),
                interval=settings.ps_poll_interval,
                collector=loaded_models,
                on_result=self.instruments.upstream_answered,
                on_models=self.residency.observe,
            )
            self.residency.wake = self.poller.poke
        self.api = create_api(
            registry=self.registry,
            instruments=self.instruments,
            upstream_url=self.upstream.public_url,
            ask_version=self.upstream.version,
            metrics_token=_secret(settings.metrics_token),
            node=settings.proxy_node,
        )
        token = settings.analytics_token
        self.api.include_router(
            create_analytics_router(
                store=self.store,
                token=token.get_secret_value() if token else None,
                backends=settings.analytics_backends,
            )
        )
        forward: ASGIApp = Forwarder(self.upstream, recorder)
        if self.upstream.base_path:
            forward = DotSegmentGuard(forward)
        dispatch = Dispatch(self.api, forward)
        self.asgi: ASGIApp = dispatch
        keys = ApiKeys.configured(settings.api_keys_value, settings.proxy_api_keys_file)
        if keys is not None:
            own = dispatch.own
            self.asgi = ApiKeyAdmission(
                dispatch,
                keys,
                open_path=lambda path: path in own and path not in KEYED_OWN_PATHS,
                registry=self.registry,
            )
        self.lifespan = Lifespan(self.components())

    def components(self) -> list[Component]:
        """What the lifespan starts, in this order (and stops in reverse)."""
        # Before the proxy binds its port: Ollama answers first.
        started: list[Component | None] = [
            self.supervisor,
            self.upstream,
            Step("analytics migration", start=self.store.start)
            if self.store is not None and self.settings.analytics_auto_migrate
            else None,
            self.writer,
            self.poller,
        ]
        return [component for component in started if component is not None]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        else:
            await self.asgi(scope, receive, send)


def build_supervisor(
    settings: Settings, ollama_binary: str | None, registry: CollectorRegistry
) -> OllamaSupervisor | None:
    """For `serve` (``ollama_binary`` given): the supervisor of the Ollama it runs."""
    if ollama_binary is None:
        return None
    restarts = Counter(
        "ollama_process_restarts",
        "Times `ollama-metrics serve` restarted an Ollama that had exited.",
        registry=registry,
    )
    return OllamaSupervisor(
        ollama_binary,
        upstream_host=upstream_address(settings.ollama_upstream),
        log_path=settings.ollama_log or settings.analytics_dir / "ollama.log",
        on_restart=restarts.inc,
        extra_env=settings.ollama_env,
    )


def build_backends(settings: Settings) -> tuple[SqlStore | None, list[Backend]]:
    """The configured analytics backends; the SQL store also serves /analytics/*."""
    names = settings.analytics_backends
    backends: list[Backend] = []
    store: SqlStore | None = None
    if "sqlite" in names or "postgresql" in names:
        engine = create_store_engine(settings_url(settings))
        store = SqlStore(
            engine, auto_migrate=settings.analytics_auto_migrate, node=settings.proxy_node
        )
        backends.append(store)
    if "jsonl" in names:
        backends.append(JsonlBackend(settings.analytics_dir))
    if "loki" in names and settings.loki_url:
        from app.analytics.loki import LokiBackend  # httpx: loaded only for Loki

        backends.append(LokiBackend(settings.loki_url, tenant=settings.loki_tenant))
    return store, backends


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None and value.get_secret_value() else None


def create_app(settings: Settings | None = None, *, ollama_binary: str | None = None) -> ProxyApp:
    return ProxyApp(settings or Settings(), ollama_binary=ollama_binary)

"""The app factory: wires the forwarder, the proxy's own API and their shared lifespan.

    client ──▶ ProxyApp ──▶ Forwarder (app.proxy) ──▶ Ollama
                  │              │ feeds
                  │              ▼
                  │         ExchangeTap (app.exchange, reads with app.ollama)
                  │              │ finished ExchangeRecord
                  │              ▼
                  │         Instruments (app.metrics) ... analytics sinks
                  └──▶ own API (app.api): /metrics, /test, /analytics/*, /ui

Routing is one set lookup on the hot path: the proxy's own paths go to FastAPI, everything
else to the forwarder, untouched. With API keys configured (``app.auth``), a proxied request
(and ``/test``) must present one first: without it the answer is 401 and nothing goes
upstream; with it, the key's name travels in the scope and the key itself is removed from
the headers. ``/metrics`` and ``/analytics/*`` have their own tokens.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import httpx
from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr

from app.analytics.jsonl import JsonlBackend
from app.analytics.loki import LokiBackend
from app.analytics.rows import Backend
from app.analytics.sql import SqlStore, create_store_engine, settings_url
from app.analytics.writer import AnalyticsMetrics, AnalyticsWriter
from app.api.analytics import create_analytics_router
from app.api.routes import create_api
from app.auth import SCOPE_KEY, ApiKeys, presented_key, without_credentials
from app.categories import Categoriser
from app.config import Settings
from app.exchange import Recorder, Sink
from app.logs import AccessLog
from app.metrics.instruments import Instruments
from app.metrics.poller import LoadedModelsCollector, ModelPoller
from app.proxy.errors import error_body, send_error_answer
from app.proxy.relay import Forwarder
from app.proxy.upstream import Upstream
from app.service.supervisor import OllamaSupervisor
from app.types import Receive, Scope, Send

log = logging.getLogger(__name__)

# Paths Ollama does not serve, answered by the proxy itself.
OWN_PATHS = frozenset(
    {"/metrics", "/test", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/ui"}
)
OWN_PREFIX = ("/analytics/", "/ui/")


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
        self.keys = ApiKeys.configured(settings.api_keys_value, settings.proxy_api_keys_file)
        self.auth_failures = Counter(
            "ollama_proxy_auth_failures",
            "Proxied requests refused for want of a valid API key (PROXY_API_KEYS).",
            ["reason"],
            registry=self.registry,
        )
        for reason in ("missing", "invalid"):
            self.auth_failures.labels(reason)  # exported as 0 from the start: alertable
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
        # /test and the /api/ps poller use the URL without its credentials (httpx logs every
        # URL it requests); the credentials travel as a header, as on the forwarded requests.
        auth = self.upstream.authorization
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0), headers={"Authorization": auth} if auth else None
        )
        self.poller: ModelPoller | None = None
        if settings.ps_poll_interval > 0:
            self.poller = ModelPoller(
                http=self.http,
                url=self.upstream.public_url,
                interval=settings.ps_poll_interval,
                collector=LoadedModelsCollector(registry=self.registry),
                on_result=lambda ok: self.instruments.upstream_up.set(1 if ok else 0),
            )
        self.forwarder = Forwarder(self.upstream, self.recorder)
        # Under a base path (an upstream gateway, http://gw/ollama), a "/../x" target would
        # leave Ollama's API on a gateway that normalises paths; at the root it cannot.
        self.guard_dots = bool(self.upstream.base_path)
        self.api = create_api(
            upstream_url=self.upstream.public_url,
            check_url=self.upstream.public_url,
            registry=self.registry,
            instruments=self.instruments,
            http=self.http,
            metrics_token=_secret(settings.metrics_token),
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
        if scope["type"] == "http":
            path = scope["path"]
            if path in OWN_PATHS or path.startswith(OWN_PREFIX):
                if path == "/test" and self.keys is not None and not self._admit(scope):
                    await self._refuse(scope, send)
                    return
                await self.api(scope, receive, send)
                return
            if self.keys is not None and not self._admit(scope):
                await self._refuse(scope, send)
                return
            if self.guard_dots and has_dot_segment(scope.get("raw_path") or path.encode()):
                await send_error_answer(
                    send, 400, error_body(path, "the path must not contain . or .. segments")
                )
                return
            await self.forwarder(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            if self.keys is not None and not self._admit(scope):
                # Ollama speaks no WebSocket; without a key there is nothing to say either.
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.forwarder(scope, receive, send)

    def _admit(self, scope: Scope) -> bool:
        """Whether the request presents a configured key; if so its name goes into the scope
        and the key out of the headers (it is ours: Ollama must not see or log it)."""
        assert self.keys is not None
        key, any_credential = presented_key(scope["headers"])
        name = self.keys.name_of(key) if key is not None else None
        if name is None:
            if _is_preflight(scope):
                # Browsers send CORS preflights without credentials; Ollama answers them
                # (allowed or not, by OLLAMA_ORIGINS) and runs nothing.
                return True
            reason = "invalid" if any_credential else "missing"
            self.auth_failures.labels(reason).inc()
            client = scope.get("client")
            log.info(
                "refused %s %s from %s: %s API key",
                scope.get("method", "WEBSOCKET"),
                scope["path"],
                client[0] if client else "?",
                reason,
            )
            return False
        scope[SCOPE_KEY] = name
        scope["headers"] = without_credentials(scope["headers"])
        return True

    async def _refuse(self, scope: Scope, send: Send) -> None:
        """401 in the error shape the path's clients parse; the request body is never read."""
        body = error_body(
            scope["path"], "unauthorized: this proxy needs Authorization: Bearer <API key>"
        )
        await send_error_answer(send, 401, body, [(b"www-authenticate", b'Bearer realm="ollama"')])

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


def _is_preflight(scope: Scope) -> bool:
    return scope.get("method") == "OPTIONS" and any(
        name == b"access-control-request-method" for name, _ in scope["headers"]
    )


def has_dot_segment(raw_path: bytes) -> bool:
    """Whether a request target holds a ``.`` or ``..`` segment, percent-encoded or not
    (and counting ``\\`` as a separator, as some servers do)."""
    path = raw_path.partition(b"?")[0].lower()
    if b"." not in path and b"%2e" not in path:
        return False
    path = path.replace(b"%2e", b".").replace(b"%2f", b"/").replace(b"%5c", b"/")
    path = path.replace(b"\\", b"/")
    return any(segment in (b".", b"..") for segment in path.split(b"/"))


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None and value.get_secret_value() else None


def upstream_address(url: str) -> str:
    """host:port of the upstream URL, as OLLAMA_HOST for the Ollama that serve starts."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def create_app(settings: Settings | None = None, *, ollama_binary: str | None = None) -> ProxyApp:
    return ProxyApp(settings or Settings(), ollama_binary=ollama_binary)

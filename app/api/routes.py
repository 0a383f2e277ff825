"""The proxy's own API app: ``/metrics``, ``/test``, ``/docs`` and the ``/ui`` page (the
factory adds ``/analytics/*`` from ``app.api.analytics``)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel

from app import __version__
from app.api.guards import bearer_guard
from app.api.ui import create_ui_router
from app.metrics.instruments import Instruments


class ChainCheck(BaseModel):
    """The answer of ``/test``: can the proxy reach Ollama, and how fast."""

    proxy_version: str
    node: str = ""  # PROXY_NODE: the machine this proxy runs on
    upstream: str
    upstream_reachable: bool
    upstream_version: str | None = None
    round_trip_ms: float | None = None
    error: str | None = None


# Own paths that reach Ollama as a proxied request does, so the API keys guard them too.
KEYED_OWN_PATHS = frozenset({"/test"})


def create_api(
    *,
    registry: CollectorRegistry,
    instruments: Instruments,
    upstream_url: str,
    ask_version: Callable[[], Awaitable[str | None]],
    metrics_token: str | None = None,
    node: str = "",
) -> FastAPI:
    """``upstream_url`` is Ollama's URL without credentials; ``ask_version`` asks Ollama its
    version the way a proxied request reaches it (``app.proxy.upstream.Upstream.version``:
    credentials as a header) and raises ``ValueError`` saying why there is no good answer.

    ``/metrics`` needs ``metrics_token`` as a Bearer token when it is set. ``/test`` is guarded
    by the API keys (``KEYED_OWN_PATHS``: it reaches Ollama like a proxied request); ``/docs``
    and ``/openapi.json`` describe only these endpoints and hold no data, so they stay open.
    """
    api = FastAPI(
        title="Ollama Metrics Proxy",
        version=__version__,
        description="The proxy's own endpoints. Every other path is forwarded to Ollama.",
        # Never served: /redoc was always forwarded to Ollama, and app.middleware.own_paths
        # claims every route's path.
        redoc_url=None,
    )
    router = APIRouter()

    metrics_guard = [Depends(bearer_guard(metrics_token, "METRICS_TOKEN", "/metrics"))]

    @router.get(
        "/metrics",
        summary="Prometheus exposition",
        response_class=Response,
        dependencies=metrics_guard,
    )
    def metrics(accept: Annotated[str | None, Header()] = None) -> Response:
        encoder, content_type = choose_encoder(accept or "")
        return Response(content=encoder(registry), media_type=content_type)

    @router.get("/test", summary="Check the chain from proxy to Ollama")
    async def chain_check() -> ChainCheck:
        started = time.perf_counter()
        try:
            version = await ask_version()
        except ValueError as exc:
            instruments.upstream_answered(False)
            return ChainCheck(
                proxy_version=__version__,
                node=node,
                upstream=upstream_url,
                upstream_reachable=False,
                error=str(exc),
            )
        instruments.upstream_answered(True)
        return ChainCheck(
            proxy_version=__version__,
            node=node,
            upstream=upstream_url,
            upstream_reachable=True,
            upstream_version=version,
            round_trip_ms=round((time.perf_counter() - started) * 1000, 3),
        )

    api.include_router(router)
    api.include_router(create_ui_router())
    return api

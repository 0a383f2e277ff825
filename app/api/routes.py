"""Routes of the proxy's own API."""

from __future__ import annotations

import time
from typing import Annotated
from urllib.parse import unquote, urlsplit

import httpx
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
    upstream: str
    upstream_reachable: bool
    upstream_version: str | None = None
    round_trip_ms: float | None = None
    error: str | None = None


def _redact(text: str, secret_url: str, public_url: str) -> str:
    text = text.replace(secret_url, public_url)
    password = urlsplit(secret_url).password
    if password:
        for form in {password, unquote(password)}:
            text = text.replace(form, "***")
    return text


def create_api(
    *,
    upstream_url: str,
    check_url: str,
    registry: CollectorRegistry,
    instruments: Instruments,
    http: httpx.AsyncClient,
    metrics_token: str | None = None,
) -> FastAPI:
    """``upstream_url`` is shown to users; ``check_url`` (which may carry credentials) is used.

    ``/metrics`` needs ``metrics_token`` as a Bearer token when it is set. ``/test`` is guarded
    by the API keys in ``ProxyApp`` (it reaches Ollama like a proxied request); ``/docs`` and
    ``/openapi.json`` describe only these endpoints and hold no data, so they stay open.
    """
    api = FastAPI(
        title="Ollama Metrics Proxy",
        version=__version__,
        description="The proxy's own endpoints. Every other path is forwarded to Ollama.",
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
            answer = await http.get(check_url + "/api/version")
            answer.raise_for_status()
            version = answer.json().get("version")
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            instruments.upstream_up.set(0)
            return ChainCheck(
                proxy_version=__version__,
                upstream=upstream_url,
                upstream_reachable=False,
                # httpx names the URL in some errors; the credentials it may carry stay out.
                error=_redact(f"{type(exc).__name__}: {exc}", check_url, upstream_url),
            )
        instruments.upstream_up.set(1)
        return ChainCheck(
            proxy_version=__version__,
            upstream=upstream_url,
            upstream_reachable=True,
            upstream_version=str(version) if version is not None else None,
            round_trip_ms=round((time.perf_counter() - started) * 1000, 3),
        )

    api.include_router(router)
    api.include_router(create_ui_router())
    return api

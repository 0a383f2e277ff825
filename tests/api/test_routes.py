"""The proxy's own API app in-process: ``/metrics``, ``/test`` against a tiny Ollama, ``/docs``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from app import __version__
from app.api.routes import KEYED_OWN_PATHS, create_api
from app.metrics.instruments import Instruments
from tests.emulator import EmulatorServer
from tests.support import ProxyProcess

UPSTREAM = "http://ollama.test"


class Ollama:
    """A tiny Ollama: ``/…/api/version`` answers ``answer``; every request is kept."""

    def __init__(self, answer: Response) -> None:
        self.answer = answer
        self.requests: list[Request] = []

        async def version(request: Request) -> Response:
            self.requests.append(request)
            return self.answer

        self.app = Starlette(routes=[Route("/{prefix:path}api/version", version)])

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), **kwargs)


Drive = Callable[[httpx.AsyncClient, CollectorRegistry], Awaitable[None]]


def run_api(
    http: httpx.AsyncClient,
    drive: Drive,
    *,
    upstream_url: str = UPSTREAM,
    metrics_token: str | None = None,
    node: str = "gpu-1",
) -> CollectorRegistry:
    """Build the API on ``http`` and ``drive(client of the API, its registry)``."""
    registry = CollectorRegistry()
    api = create_api(
        upstream_url=upstream_url,
        registry=registry,
        instruments=Instruments(registry, node=node),
        http=http,
        metrics_token=metrics_token,
        node=node,
    )

    async def go() -> None:
        transport = httpx.ASGITransport(app=api)
        async with http, httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            await drive(client, registry)

    asyncio.run(go())
    return registry


def check_of(http: httpx.AsyncClient, upstream_url: str = UPSTREAM) -> tuple[dict[str, Any], float]:
    """The answer of ``/test`` and ``ollama_upstream_up`` after it."""
    found: dict[str, Any] = {}

    async def drive(client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
        answer = await client.get("/test")
        assert answer.status_code == 200
        found.update(answer.json())

    registry = run_api(http, drive, upstream_url=upstream_url)
    up = registry.get_sample_value("ollama_upstream_up")
    assert up is not None
    return found, up


# -- /test -----------------------------------------------------------------------------------


def test_test_reports_a_reachable_ollama_and_its_version() -> None:
    ollama = Ollama(JSONResponse({"version": "0.33.1"}))
    check, up = check_of(ollama.client())
    assert check["proxy_version"] == __version__
    assert check["node"] == "gpu-1"
    assert check["upstream"] == UPSTREAM
    assert check["upstream_reachable"] is True
    assert check["upstream_version"] == "0.33.1"
    assert isinstance(check["round_trip_ms"], float)
    assert check["round_trip_ms"] >= 0
    assert check["error"] is None
    assert up == 1
    assert [request.url.path for request in ollama.requests] == ["/api/version"]


@pytest.mark.parametrize(("version", "shown"), [({}, None), ({"version": 33}, "33")])
def test_test_without_a_version_string_is_still_reachable(
    version: dict[str, Any], shown: str | None
) -> None:
    check, up = check_of(Ollama(JSONResponse(version)).client())
    assert check["upstream_reachable"] is True
    assert check["upstream_version"] == shown
    assert up == 1


def test_test_asks_under_the_upstreams_base_path_with_its_credentials_kept_out() -> None:
    ollama = Ollama(JSONResponse({"version": "0.33.1"}))
    credentials = "Basic dXNlcjpzM2NyZXQ="  # user:s3cret
    check, _ = check_of(
        ollama.client(headers={"Authorization": credentials}), upstream_url=UPSTREAM + "/ollama"
    )
    assert check["upstream_reachable"] is True
    assert check["upstream"] == UPSTREAM + "/ollama"
    [request] = ollama.requests
    assert request.url.path == "/ollama/api/version"
    assert request.headers["authorization"] == credentials
    assert credentials not in str(check)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (PlainTextResponse("busy", status_code=503), "HTTPStatusError: Server error '503"),
        (PlainTextResponse("not json"), "JSONDecodeError: "),
        (JSONResponse(["a", "list"]), "AttributeError: 'list' object has no attribute 'get'"),
    ],
)
def test_test_reports_an_ollama_that_answers_wrong_as_unreachable(
    answer: Response, error: str
) -> None:
    check, up = check_of(Ollama(answer).client())
    assert check["upstream_reachable"] is False
    assert check["error"].startswith(error)
    assert check["upstream_version"] is None
    assert check["round_trip_ms"] is None
    assert check["proxy_version"] == __version__
    assert up == 0


def test_test_reports_an_ollama_that_is_not_there() -> None:
    nowhere = "http://127.0.0.1:9"  # nothing listens: the connection is refused
    check, up = check_of(httpx.AsyncClient(), upstream_url=nowhere)
    assert check["upstream_reachable"] is False
    assert check["upstream"] == nowhere
    assert check["error"].startswith("ConnectError: ")
    assert up == 0


def test_test_sets_upstream_up_back_once_ollama_answers() -> None:
    ollama = Ollama(PlainTextResponse("down", status_code=502))
    seen: list[tuple[bool, float | None]] = []

    async def drive(client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
        for answer in (PlainTextResponse("down", status_code=502), JSONResponse({"version": "1"})):
            ollama.answer = answer
            check = (await client.get("/test")).json()
            seen.append(
                (check["upstream_reachable"], registry.get_sample_value("ollama_upstream_up"))
            )

    run_api(ollama.client(), drive)
    assert seen == [(False, 0), (True, 1)]


@pytest.mark.process
def test_test_endpoint_reports_the_chain(emulator: EmulatorServer, proxy: ProxyProcess) -> None:
    check = httpx.get(proxy.url + "/test").json()
    assert check["upstream"] == emulator.url
    assert check["upstream_reachable"] is True
    assert check["upstream_version"] == emulator.config.version
    assert check["proxy_version"]


# -- /metrics --------------------------------------------------------------------------------


def scrape(metrics_token: str | None = None, **headers: str) -> httpx.Response:
    answers: list[httpx.Response] = []

    async def drive(client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
        answers.append(await client.get("/metrics", headers=headers))

    run_api(httpx.AsyncClient(), drive, metrics_token=metrics_token)
    return answers[0]


def test_metrics_is_the_registry_in_prometheus_text() -> None:
    answer = scrape()
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    families = {family.name for family in text_string_to_metric_families(answer.text)}
    assert {"ollama_upstream_up", "ollama_requests"} <= families
    assert "# EOF" not in answer.text


def test_metrics_speaks_openmetrics_when_asked() -> None:
    answer = scrape(accept="application/openmetrics-text; version=1.0.0")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.text.endswith("# EOF\n")


def test_metrics_follows_the_registry_as_it_changes() -> None:
    values: list[str] = []

    async def drive(client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
        values.append((await client.get("/metrics")).text)

    ollama = Ollama(JSONResponse({"version": "1"}))

    async def after_test(client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
        await drive(client, registry)
        await client.get("/test")
        await drive(client, registry)

    run_api(ollama.client(), after_test)
    assert "ollama_upstream_up 0.0" in values[0]
    assert "ollama_upstream_up 1.0" in values[1]


def test_with_a_token_metrics_needs_it() -> None:
    refused = scrape("scrape-me")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["detail"] == "/metrics needs Authorization: Bearer <METRICS_TOKEN>"
    assert scrape("scrape-me", authorization="Bearer wrong").status_code == 401
    admitted = scrape("scrape-me", authorization="Bearer scrape-me")
    assert admitted.status_code == 200
    assert "ollama_upstream_up" in admitted.text


# -- what else the app holds -----------------------------------------------------------------


def test_the_schema_describes_only_the_own_endpoints_and_docs_are_served() -> None:
    answers: dict[str, httpx.Response] = {}

    async def drive(client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
        for path in ("/openapi.json", "/docs", "/redoc", "/ui/", "/api/tags"):
            answers[path] = await client.get(path)

    run_api(httpx.AsyncClient(), drive)
    schema = answers["/openapi.json"].json()
    assert set(schema["paths"]) == {"/metrics", "/test"}
    assert schema["info"]["version"] == __version__
    assert "ChainCheck" in schema["components"]["schemas"]
    assert answers["/docs"].status_code == 200
    assert "swagger" in answers["/docs"].text.lower()
    assert answers["/ui/"].status_code == 200  # the page is there, out of the schema
    # /redoc was always Ollama's (forwarded), and this app serves nothing of Ollama's.
    assert answers["/redoc"].status_code == 404
    assert answers["/api/tags"].status_code == 404


def test_the_keyed_own_paths_are_the_routes_that_reach_ollama() -> None:
    assert frozenset({"/test"}) == KEYED_OWN_PATHS
    ollama = Ollama(JSONResponse({"version": "1"}))

    async def drive(client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
        for path in KEYED_OWN_PATHS:
            assert (await client.get(path)).status_code == 200, path

    run_api(ollama.client(), drive)
    assert len(ollama.requests) == len(KEYED_OWN_PATHS)

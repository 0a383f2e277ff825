"""The proxy's own API app in-process: ``/metrics``, ``/test`` against a tiny Ollama, ``/docs``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from app import __version__
from app.api.routes import KEYED_OWN_PATHS, create_api
from app.metrics.instruments import Instruments
from app.proxy.upstream import VERSION_LIMIT, Upstream
from tests.emulator import EmulatorServer
from tests.support import LocalHttpServer, ProxyProcess

NOWHERE = "http://127.0.0.1:9"  # nothing listens: the connection is refused


class Ollama(LocalHttpServer):
    """A tiny Ollama on a loopback port: every request gets ``status`` and ``body`` (JSON);
    each request's path and headers are kept."""

    def __init__(self, document: object = None, *, status: int = 200, body: bytes = b"") -> None:
        self.status = status
        self.body = body or json.dumps(document if document is not None else {}).encode()
        self.requests: list[tuple[str, dict[str, str]]] = []
        super().__init__(self.respond)

    def respond(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str | None, bytes]:
        self.requests.append((path, headers))
        return self.status, "application/json", self.body


Drive = Callable[[httpx.AsyncClient, CollectorRegistry], Awaitable[None]]


def run_api(
    drive: Drive,
    *,
    upstream_url: str = NOWHERE,
    metrics_token: str | None = None,
    node: str = "gpu-1",
) -> CollectorRegistry:
    """Build the API on a pool to ``upstream_url`` and ``drive(client of the API, its
    registry)``."""
    registry = CollectorRegistry()
    upstream = Upstream(upstream_url, connect_timeout=5, max_connections=4)
    api = create_api(
        registry=registry,
        instruments=Instruments(registry, node=node),
        upstream_url=upstream.public_url,
        ask_version=upstream.version,
        metrics_token=metrics_token,
        node=node,
    )

    async def go() -> None:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            await drive(client, registry)
        await upstream.stop()

    asyncio.run(go())
    return registry


def check_of(upstream_url: str) -> tuple[dict[str, Any], float]:
    """The answer of ``/test`` and ``ollama_upstream_up`` after it."""
    found: dict[str, Any] = {}

    async def drive(client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
        answer = await client.get("/test")
        assert answer.status_code == 200
        found.update(answer.json())

    registry = run_api(drive, upstream_url=upstream_url)
    up = registry.get_sample_value("ollama_upstream_up")
    assert up is not None
    return found, up


# -- /test -----------------------------------------------------------------------------------


def test_test_reports_a_reachable_ollama_and_its_version() -> None:
    with Ollama({"version": "0.33.1"}) as ollama:
        check, up = check_of(ollama.url)
    assert check["proxy_version"] == __version__
    assert check["node"] == "gpu-1"
    assert check["upstream"] == ollama.url
    assert check["upstream_reachable"] is True
    assert check["upstream_version"] == "0.33.1"
    assert isinstance(check["round_trip_ms"], float)
    assert check["round_trip_ms"] >= 0
    assert check["error"] is None
    assert up == 1
    assert [path for path, _ in ollama.requests] == ["/api/version"]


@pytest.mark.parametrize(("version", "shown"), [({}, None), ({"version": 33}, "33")])
def test_test_without_a_version_string_is_still_reachable(
    version: dict[str, Any], shown: str | None
) -> None:
    with Ollama(version) as ollama:
        check, up = check_of(ollama.url)
    assert check["upstream_reachable"] is True
    assert check["upstream_version"] == shown
    assert up == 1


def test_test_asks_under_the_upstreams_base_path_with_its_credentials_kept_out() -> None:
    with Ollama({"version": "0.33.1"}) as ollama:
        base = ollama.url + "/ollama"
        check, _ = check_of(base.replace("http://", "http://user:s3cret@"))
    assert check["upstream_reachable"] is True
    assert check["upstream"] == base
    [(path, headers)] = ollama.requests
    assert path == "/ollama/api/version"
    assert headers["authorization"] == "Basic dXNlcjpzM2NyZXQ="  # user:s3cret
    assert "s3cret" not in str(check)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (503, b"busy", "Ollama answered HTTP 503"),
        (200, b"not json", "Ollama's answer is not JSON"),
        (200, b'["a", "list"]', "Ollama's answer is not a JSON object"),
        (200, b"[" * 60_000, "Ollama's answer is not JSON"),  # nested past the recursion limit
        (200, b"x" * (VERSION_LIMIT + 1), f"answer larger than {VERSION_LIMIT} bytes"),
    ],
)
def test_test_reports_an_ollama_that_answers_wrong_as_unreachable(
    status: int, body: bytes, error: str
) -> None:
    with Ollama(status=status, body=body) as ollama:
        check, up = check_of(ollama.url)
    assert check["upstream_reachable"] is False
    assert check["error"] == error
    assert check["upstream_version"] is None
    assert check["round_trip_ms"] is None
    assert check["proxy_version"] == __version__
    assert up == 0


def test_test_reports_an_ollama_that_is_not_there() -> None:
    check, up = check_of(NOWHERE)
    assert check["upstream_reachable"] is False
    assert check["upstream"] == NOWHERE
    assert check["error"].startswith("cannot connect to Ollama at " + NOWHERE), check["error"]
    assert up == 0


def test_test_sets_upstream_up_back_once_ollama_answers() -> None:
    seen: list[tuple[bool, float | None]] = []
    with Ollama(status=502, body=b"down") as ollama:

        async def drive(client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
            for status, body in ((502, b"down"), (200, b'{"version": "1"}')):
                ollama.status, ollama.body = status, body
                check = (await client.get("/test")).json()
                seen.append(
                    (check["upstream_reachable"], registry.get_sample_value("ollama_upstream_up"))
                )

        run_api(drive, upstream_url=ollama.url)
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

    run_api(drive, metrics_token=metrics_token)
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

    async def after_test(client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
        await drive(client, registry)
        await client.get("/test")
        await drive(client, registry)

    with Ollama({"version": "1"}) as ollama:
        run_api(after_test, upstream_url=ollama.url)
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

    run_api(drive)
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

    async def drive(client: httpx.AsyncClient, registry: CollectorRegistry) -> None:
        for path in KEYED_OWN_PATHS:
            assert (await client.get(path)).status_code == 200, path

    with Ollama({"version": "1"}) as ollama:
        run_api(drive, upstream_url=ollama.url)
    assert len(ollama.requests) == len(KEYED_OWN_PATHS)

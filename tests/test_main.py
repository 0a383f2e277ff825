"""The app factory in-process: what it builds for a configuration, and in which order."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.analytics.migrate import at_head
from app.analytics.sql import SqlStore, create_store_engine, database_url
from app.config import Settings
from app.lifecycle import name_of
from app.main import ProxyApp, create_app
from app.middleware.api_keys import ApiKeyAdmission
from app.middleware.dot_segments import DotSegmentGuard
from app.middleware.own_paths import Dispatch
from app.proxy.relay import Forwarder
from tests.asgi import call, http_scope
from tests.support import ROOT

# Nothing listens here: a request the factory forwards fails to connect (502).
NOWHERE = "http://127.0.0.1:9"


def build(tmp_path: Path, **settings: object) -> ProxyApp:
    return create_app(Settings(analytics_dir=tmp_path, ollama_upstream=NOWHERE, **settings))


def test_components_start_in_dependency_order(tmp_path: Path) -> None:
    app = ProxyApp(
        Settings(analytics_dir=tmp_path, ollama_upstream=NOWHERE), ollama_binary="/bin/false"
    )
    assert [name_of(component) for component in app.components()] == [
        "OllamaSupervisor",  # Ollama answers before anything reaches for it
        "Upstream",
        "analytics migration",
        "AnalyticsWriter",
        "ModelPoller",
    ]


def test_what_is_left_out_is_not_started(tmp_path: Path) -> None:
    app = build(tmp_path, analytics_backend="jsonl", ps_poll_interval=0)
    assert [name_of(component) for component in app.components()] == [
        "Upstream",
        "AnalyticsWriter",
    ]


def test_the_own_paths_are_the_apis_routes(tmp_path: Path) -> None:
    app = build(tmp_path)
    assert isinstance(app.asgi, Dispatch)
    own = app.asgi.own
    for path in ("/metrics", "/test", "/docs", "/openapi.json", "/ui", "/ui/app.js"):
        assert path in own, path
    for path in ("/analytics/search", "/analytics/records/01J", "/analytics/nothing"):
        assert path in own, path
    for path in ("/", "/api/tags", "/api/chat", "/v1/models", "/redoc", "/metrics/x"):
        assert path not in own, path


def test_ollamas_paths_are_forwarded_and_own_ones_answered(tmp_path: Path) -> None:
    app = build(tmp_path)
    forwarded = asyncio.run(call(app.asgi, http_scope("/api/tags")))
    assert forwarded.status == 502  # it went for Ollama, which is not there
    assert "cannot connect to Ollama" in forwarded.json()["error"]
    metrics = asyncio.run(call(app.asgi, http_scope("/metrics")))
    assert metrics.status == 200
    assert b"ollama_upstream_up 0.0" in metrics.body  # that attempt could not connect


def test_with_keys_the_proxied_paths_and_test_need_one(tmp_path: Path) -> None:
    app = build(tmp_path, proxy_api_keys=SecretStr("ci:sk-1"))
    assert isinstance(app.asgi, ApiKeyAdmission)
    for path in ("/api/tags", "/test"):
        assert asyncio.run(call(app.asgi, http_scope(path))).status == 401, path
    for path in ("/metrics", "/openapi.json", "/ui/"):
        assert asyncio.run(call(app.asgi, http_scope(path))).status == 200, path


def test_the_dot_segment_guard_stands_only_under_a_base_path(tmp_path: Path) -> None:
    at_root = build(tmp_path)
    assert isinstance(at_root.asgi, Dispatch)
    assert isinstance(at_root.asgi.forward, Forwarder)
    under = create_app(Settings(analytics_dir=tmp_path, ollama_upstream=NOWHERE + "/ollama"))
    assert isinstance(under.asgi, Dispatch)
    assert isinstance(under.asgi.forward, DotSegmentGuard)
    refused = asyncio.run(call(under.asgi, http_scope("/x", raw_path=b"/../api/tags")))
    assert refused.status == 400


# Modules a proxy loads only when its configuration needs them (RSS at start, issue 19).
ON_DEMAND = ("httpx", "alembic", "sqlalchemy.dialects.postgresql", "app.analytics.loki")
# Modules the program's own process never loads (``app.__main__.own_process``).
NEVER = ("pydantic.v1",)


def loaded_on_demand(
    tmp_path: Path, backend: str, *, migrated: bool = True, program: bool = False
) -> tuple[list[str], list[int]]:
    """Which of ``ON_DEMAND`` and ``NEVER`` a proxy process holds once started and serving
    (the CLI's modules imported, the app built, its lifespan run, requests answered), on a
    store at head or (``migrated=False``) a new one, which the lifespan migrates; and the
    statuses of those requests. ``program``: the process starts as the program's does."""
    if migrated:
        store = SqlStore(create_store_engine(database_url(None, tmp_path)))
        store.migrate()  # here: the probe's proxy finds its store at head
        store.close()
    probe = f"""
import asyncio, sys
if {program!r}:
    import app.__main__
    app.__main__.own_process()
from pathlib import Path
import app.cli, app.server
from app.config import Settings
from app.main import create_app
from tests.asgi import call, http_scope
settings = Settings(analytics_dir=Path({str(tmp_path)!r}), ollama_upstream={NOWHERE!r},
                    analytics_backend={backend!r}, loki_url="http://127.0.0.1:9",
                    analytics_drain_seconds=0.5)
proxy = create_app(settings)
async def main():
    await proxy.lifespan.startup()
    statuses = []
    for path, query in [("/api/tags", b""), ("/metrics", b""),
                        ("/analytics/search", b"limit=many"), ("/analytics/search", b"")]:
        scope = http_scope(path)
        scope["query_string"] = query
        statuses.append((await call(proxy, scope)).status)
    await proxy.lifespan.shutdown()
    return statuses
statuses = asyncio.run(main())
print(([m for m in {ON_DEMAND + NEVER!r} if sys.modules.get(m)], statuses))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    loaded, statuses = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    return loaded, statuses


# The upstream is unreachable (502); an invalid query is FastAPI's validation error (422).
ANSWERS = [502, 200, 422, 200]


@pytest.mark.process
def test_a_proxy_loads_only_what_its_configuration_uses(tmp_path: Path) -> None:
    """SQLite with the /api/ps poller on (the defaults): no httpx (the poller and /test use
    the proxy's own HTTP client), no Alembic at head, no PostgreSQL dialect; Loki brings its
    httpx. Outside the program's own process (a test's), FastAPI still loads pydantic.v1."""
    assert loaded_on_demand(tmp_path, "sqlite") == (["pydantic.v1"], ANSWERS)
    assert loaded_on_demand(tmp_path, "sqlite,loki", program=True) == (
        ["httpx", "app.analytics.loki"],
        ANSWERS,
    )


@pytest.mark.process
def test_the_program_serves_without_pydantic_v1(tmp_path: Path) -> None:
    """``own_process`` keeps FastAPI from loading pydantic.v1 (~1 MB), and everything
    FastAPI does still works: routes, the metrics page, a validation error's answer."""
    assert loaded_on_demand(tmp_path, "sqlite", program=True) == ([], ANSWERS)


@pytest.mark.process
def test_a_proxy_on_a_new_store_migrates_it_without_loading_alembic(tmp_path: Path) -> None:
    """The start-up upgrade runs in a child process (Alembic's modules would stay for the
    proxy's life): the store is at head and the serving process never imported Alembic."""
    assert loaded_on_demand(tmp_path, "sqlite", migrated=False, program=True) == ([], ANSWERS)
    engine = create_store_engine(database_url(None, tmp_path))
    assert at_head(engine)
    engine.dispose()

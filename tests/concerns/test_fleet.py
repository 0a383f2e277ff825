"""A fleet on one database: three real proxies, each in front of its own emulator, started at
once on one empty, real PostgreSQL and loaded concurrently. Every record lands once, under
its node, and the rollups the stats read equal the rows. A node that dies leaves the others
unaffected, and the central view (a real Prometheus, the Fleet dashboard's own query) shows
it missing.

The central PostgreSQL down (nodes serve on, records queue, overflow counted, all written
when it is back) is tests/concerns/test_faults_store.py's, on a PostgreSQL server it stops."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from app.analytics.sql import SqlStore, create_store_engine, database_url
from app.analytics.tables import requests
from tests.conftest import PostgresDatabases
from tests.deploy.test_dashboards import substitute
from tests.emulator import EmulatorServer
from tests.support import ROOT, ProxyProcess, prometheus_scraping_nodes

pytestmark = [pytest.mark.process, pytest.mark.postgres]

NODES = ("gpu-a", "gpu-b", "gpu-c")
PER_CLIENT = 15
CLIENTS = 3  # per proxy, all at once


@pytest.fixture
def fleet(
    postgres: PostgresDatabases, tmp_path: Path
) -> Iterator[tuple[str, dict[str, ProxyProcess]]]:
    url = postgres.create()
    with ExitStack() as stack:
        proxies: dict[str, ProxyProcess] = {}
        for node in NODES:
            emulator = stack.enter_context(EmulatorServer())
            proxies[node] = ProxyProcess(
                emulator.url,
                env={
                    "ANALYTICS_BACKEND": "postgresql",
                    "ANALYTICS_DATABASE_URL": url,
                    "PROXY_NODE": node,
                    "PS_POLL_INTERVAL": "0",
                },
            )
        # All at once on the empty database: each migrates at start-up.
        starting = [threading.Thread(target=proxy.start) for proxy in proxies.values()]
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join()
        for proxy in proxies.values():
            stack.callback(proxy.stop)
        assert all(proxy.process is not None for proxy in proxies.values())
        yield database_url(url, tmp_path), proxies


def load(proxy: ProxyProcess, client: int, sent: Counter[str], node: str) -> None:
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        for i in range(PER_CLIENT):
            if i % 3 == 0:
                answer = http.post(
                    "/api/chat",
                    json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
                )
            elif i % 3 == 1:
                body = {"model": "llama3.2", "prompt": f"{node} {client} {i}", "stream": False}
                answer = http.post("/api/generate", json=body)
            else:
                answer = http.get("/api/tags")
            assert answer.status_code == 200
            sent[node] += 1


def test_three_proxies_on_one_postgresql_record_everything_once(
    fleet: tuple[str, dict[str, ProxyProcess]],
) -> None:
    url, proxies = fleet
    sent: Counter[str] = Counter()
    threads = [
        threading.Thread(target=load, args=(proxy, client, sent, node))
        for node, proxy in proxies.items()
        for client in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(sent.values()) == len(NODES) * CLIENTS * PER_CLIENT

    store = SqlStore(create_store_engine(url), auto_migrate=False)
    deadline = time.monotonic() + 30
    while True:
        with store.engine.connect() as connection:
            stored = dict(
                connection.execute(
                    select(requests.c.node, func.count()).group_by(requests.c.node)
                ).all()
            )
        if stored == dict(sent):
            break
        assert time.monotonic() < deadline, f"stored {stored}, sent {dict(sent)}"
        time.sleep(0.1)
    with store.engine.connect() as connection:
        ids = connection.execute(select(func.count(), func.count(requests.c.id.distinct()))).one()
        rows = [dict(r) for r in connection.execute(select(requests)).mappings()]
    assert ids[0] == ids[1] == sum(sent.values())  # no id twice
    # The rollups (what the stats read), written by three writers at once, equal the rows.
    stats = store.stats(0)
    assert stats["total_requests"] == len(rows)
    by_node = {n["name"]: n for n in stats["nodes"]}
    for node in NODES:
        mine = [r for r in rows if r["node"] == node]
        assert by_node[node]["requests"] == sent[node]
        assert by_node[node]["completion_tokens"] == sum(r["completion_tokens"] or 0 for r in mine)
        assert by_node[node]["avg_duration_s"] == pytest.approx(
            sum(r["duration_s"] for r in mine) / len(mine)
        )
    for model in stats["models"]:
        mine = [r for r in rows if r["model"] == model["name"]]
        assert model["requests"] == len(mine)
        assert model["prompt_tokens"] == sum(r["prompt_tokens"] or 0 for r in mine)
    for endpoint in ("/api/chat", "/api/generate", "/api/tags"):
        found = httpx.get(
            proxies["gpu-b"].url + "/analytics/search",
            params={"node": "gpu-a", "endpoint": endpoint, "limit": 1000},
        ).json()["records"]
        assert len(found) == sum(
            1 for r in rows if r["node"] == "gpu-a" and r["endpoint"] == endpoint
        )
        assert {r["node"] for r in found} == {"gpu-a"}  # any proxy searches the whole fleet
    store.close()


def fleet_panel(title: str) -> str:
    """The query of the Fleet dashboard's panel ``title``, its variables filled in."""
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/fleet.json").read_text())
    (panel,) = [p for p in dashboard["panels"] if p.get("title") == title]
    (target,) = panel["targets"]
    return substitute(target["expr"])


def scraped(prometheus: str) -> dict[str, float]:
    answer = httpx.get(
        prometheus + "/api/v1/query", params={"query": fleet_panel("Scraped")}, timeout=5
    ).json()
    assert answer["status"] == "success", answer
    return {r["metric"]["node"]: float(r["value"][1]) for r in answer["data"]["result"]}


def test_a_node_that_dies_leaves_the_rest_unaffected_and_shows_missing(
    fleet: tuple[str, dict[str, ProxyProcess]], tmp_path: Path
) -> None:
    url, proxies = fleet
    *alive, dead = NODES
    targets = {node: f"127.0.0.1:{proxy.port}" for node, proxy in proxies.items()}
    with prometheus_scraping_nodes(targets, tmp_path) as prometheus:
        deadline = time.monotonic() + 30
        while scraped(prometheus) != dict.fromkeys(NODES, 1.0):
            assert time.monotonic() < deadline, scraped(prometheus)
            time.sleep(0.2)
        sent: Counter[str] = Counter()
        for node in NODES:
            load(proxies[node], 0, sent, node)
        store = SqlStore(create_store_engine(url), auto_migrate=False)
        until_stored(store, sent, NODES)
        # The machine loses power: no drain, no goodbye.
        process = proxies[dead].process
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        threads = [
            threading.Thread(target=load, args=(proxies[node], client, sent, node))
            for node in alive
            for client in range(1, CLIENTS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()  # load() asserts every answer was a 200
        deadline = time.monotonic() + 30
        while scraped(prometheus) != {**dict.fromkeys(alive, 1.0), dead: 0.0}:
            assert time.monotonic() < deadline, scraped(prometheus)
            time.sleep(0.2)
    by_node = until_stored(store, sent, alive)
    # What the dead node wrote before it died stays in the fleet's view.
    assert by_node[dead] == sent[dead]
    found = httpx.get(
        proxies[alive[0]].url + "/analytics/search", params={"node": dead, "limit": 1000}
    ).json()
    assert len(found["records"]) == sent[dead]
    store.close()


def until_stored(
    store: SqlStore, sent: Counter[str], nodes: tuple[str, ...] | list[str]
) -> dict[str, int]:
    """Wait until the stats (the rollups) count every request sent to ``nodes``."""
    deadline = time.monotonic() + 30
    while True:
        by_node = {n["name"]: n["requests"] for n in store.stats(0)["nodes"]}
        if all(by_node.get(node) == sent[node] for node in nodes):
            return by_node
        assert time.monotonic() < deadline, (by_node, dict(sent))
        time.sleep(0.1)

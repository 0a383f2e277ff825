"""A fleet on a real network: three machines, each a Linux network namespace with its own
address and veth link to the host, each running an Ollama emulator and a real proxy; on the
host, the PostgreSQL they all record to (through a TCP forwarder per link, since it listens
on 127.0.0.1 only) and a real Prometheus scraping every node. Mid-run one node's link is
cut: the others keep recording; the cut node goes on answering its own clients (inside its
namespace), its records wait in its queue and all arrive, once each, when the link is back;
Prometheus sees ``up == 0`` for it meanwhile. Root only (``ip netns``): skipped elsewhere."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import netns
from tests.conftest import PostgresDatabases
from tests.support import ROOT, prometheus_scraping_nodes

pytestmark = [pytest.mark.process, pytest.mark.postgres]

NODES = ("edge-a", "edge-b", "edge-c")  # the last one is cut off
PROXY_PORT = 8080  # the same on every machine: each has its own network
OLLAMA_PORT = 11434
BEFORE = 12  # requests each node answers before the cut
DURING = 30  # requests the cut node's own clients send while it is cut off
CUT_SECONDS = 5.0
# The writer's backoff doubles from 0.5 s to 30 s: once the link is back, the queue is
# written within one backoff step, plus TCP's own retransmission delay.
DRAIN_WITHIN = 40.0


@dataclass
class Machine:
    name: str  # PROXY_NODE, the `node` label in Prometheus and the `node` column
    net: netns.Node
    forwarder: netns.TcpForwarder

    @property
    def url(self) -> str:
        return f"http://{self.net.address}:{PROXY_PORT}"


@dataclass
class Fleet:
    machines: list[Machine]
    database: str  # the URL the test reads through (127.0.0.1)
    prometheus: str


def until(check: Callable[[], bool], within: float, what: str) -> float:
    """Wait for ``check``; how long it took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, f"{what} not reached within {within}s"
        time.sleep(0.1)
    return time.monotonic() - started


def http(url: str, path: str) -> httpx.Response:
    return httpx.get(url + path, timeout=5, trust_env=False)


def answers(url: str, path: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return http(url, path).status_code == 200
    return False


@pytest.fixture
def fleet(postgres: PostgresDatabases, tmp_path: Path) -> Iterator[Fleet]:
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    url = postgres.create()
    name = url.rsplit("/", 1)[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "LOG_LEVEL": "info",
        "PS_POLL_INTERVAL": "0",
        "ANALYTICS_RETENTION_DAYS": "0",
        "ANALYTICS_BACKEND": "postgresql",
    }
    with ExitStack() as stack:
        nodes = stack.enter_context(netns.network(len(NODES)))
        machines = []
        for node_name, node in zip(NODES, nodes, strict=True):
            forwarder = netns.TcpForwarder((node.host_address, 5432), ("127.0.0.1", 5432))
            machines.append(Machine(node_name, node, stack.enter_context(forwarder)))
        # Stopped before the forwarders go, so that the proxies' last writes get through.
        for machine in machines:
            stack.callback(machine.net.stop_processes)
        for machine in machines:
            node = machine.net
            emulator = [sys.executable, "-m", "tests.emulator", "--host", "0.0.0.0"]
            node.popen(
                [*emulator, "--port", str(OLLAMA_PORT)],
                log=tmp_path / f"{machine.name}-emulator.log",
                env=env,
            )
            (tmp_path / machine.name).mkdir()
            proxy = [sys.executable, "-m", "app", "proxy", "--host", "0.0.0.0"]
            upstream = f"http://127.0.0.1:{OLLAMA_PORT}"
            node.popen(
                [*proxy, "--port", str(PROXY_PORT), "--upstream", upstream],
                log=tmp_path / f"{machine.name}-proxy.log",
                env={
                    **env,
                    "PROXY_NODE": machine.name,
                    "ANALYTICS_DIR": str(tmp_path / machine.name),
                    "ANALYTICS_DATABASE_URL": (
                        f"postgresql://postgres@{node.host_address}:5432/{name}"
                    ),
                },
            )
        for machine in machines:
            emulator_url = f"http://{machine.net.address}:{OLLAMA_PORT}"
            until(functools.partial(answers, emulator_url, "/_emulator/config"), 30, "emulator")
            until(functools.partial(answers, machine.url, "/metrics"), 30, machine.name)
        until(lambda: stored(url) is not None, 30, "the requests table")
        targets = {m.name: f"{m.net.address}:{PROXY_PORT}" for m in machines}
        prom = stack.enter_context(prometheus_scraping_nodes(targets, tmp_path))
        yield Fleet(machines, url, prom)


# -- what the test reads -----------------------------------------------------------------------


def stored(url: str) -> dict[str, int] | None:
    """Records per node in PostgreSQL (None before the proxies made the table)."""
    try:
        with psycopg.connect(url) as connection:
            rows = connection.execute("SELECT node, count(*) FROM requests GROUP BY node")
            return {node: count for node, count in rows.fetchall()}
    except psycopg.errors.UndefinedTable:
        return None


def ids(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT count(*), count(DISTINCT id) FROM requests").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def up(prometheus_url: str) -> dict[str, int]:
    """Prometheus's latest `up` per node."""
    answer = httpx.get(
        prometheus_url + "/api/v1/query",
        params={"query": 'up{job="ollama-metrics"}'},
        timeout=5,
        trust_env=False,
    ).json()
    return {r["metric"]["node"]: int(float(r["value"][1])) for r in answer["data"]["result"]}


def analytics(url: str) -> dict[str, float]:
    """The proxy's ollama_analytics_* samples, keyed as ``tests.netns.load`` keys them."""
    samples = {}
    for family in text_string_to_metric_families(http(url, "/metrics").text):
        for sample in family.samples:
            if sample.name.startswith("ollama_analytics_"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def dropped(samples: dict[str, float]) -> float:
    return sum(v for k, v in samples.items() if k.startswith("ollama_analytics_dropped_total"))


# -- the load ----------------------------------------------------------------------------------


def request(client: httpx.Client, i: int, tag: str) -> int:
    if i % 3 == 0:
        messages = [{"role": "user", "content": f"{tag} {i}"}]
        return client.post(
            "/api/chat", json={"model": "llama3.2", "messages": messages}
        ).status_code
    if i % 3 == 1:
        body = {"model": "llama3.2", "prompt": f"{tag} {i}", "stream": False}
        return client.post("/api/generate", json=body).status_code
    return client.get("/api/tags").status_code


def from_host(
    machine: Machine, answered: Counter[str], count: int, stop: threading.Event
) -> Counter[str]:
    """Up to ``count`` requests from the host over the machine's link, until ``stop``;
    ``answered`` counts those that got an HTTP answer. Returns the statuses (or errors)."""
    statuses: Counter[str] = Counter()
    with httpx.Client(base_url=machine.url, timeout=10, trust_env=False) as client:
        for i in range(count):
            if stop.is_set():
                break
            try:
                statuses[str(request(client, i, machine.name))] += 1
                answered[machine.name] += 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
            time.sleep(0.05)
    return statuses


def from_inside(machine: Machine, count: int, spacing: float) -> subprocess.Popen[str]:
    """The machine's own clients: ``python -m tests.netns load`` in its namespace."""
    local = f"http://127.0.0.1:{PROXY_PORT}"
    argv = [sys.executable, "-m", "tests.netns", "load", local, str(count)]
    return subprocess.Popen(
        machine.net.command(*argv, "--spacing", str(spacing), "--tag", machine.name),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def report(client: subprocess.Popen[str]) -> dict[str, object]:
    out, _ = client.communicate(timeout=120)
    assert client.returncode == 0, out
    result: dict[str, object] = json.loads(out)
    return result


# -- the test ----------------------------------------------------------------------------------


# How the node's connections to PostgreSQL end with the cut. "stall": the link goes down,
# then the host side forgets them (its RSTs are lost): the proxy's open connection hangs
# until its retransmissions get through once the link is back, and are answered RST.
# "refuse": the host side resets them first, then the link goes down: the proxy has to
# connect anew across the dead link, its writes fail and the writer retries with backoff.
BREAKS = ("stall", "refuse")


@pytest.mark.parametrize("breaking", BREAKS)
def test_a_node_cut_off_serves_on_and_delivers_every_record_once_its_link_is_back(
    fleet: Fleet, breaking: str
) -> None:
    started = time.monotonic()
    *others, cut = fleet.machines
    everyone = {m.name: 1 for m in fleet.machines}
    until(lambda: up(fleet.prometheus) == everyone, 30, "every node up in Prometheus")

    # Before the cut: every node answers and records.
    answered: Counter[str] = Counter()
    never = threading.Event()
    for machine in others:
        assert from_host(machine, answered, BEFORE, never) == {"200": BEFORE}
    before = report(from_inside(cut, BEFORE, 0))
    assert before["statuses"] == {"200": BEFORE}
    answered[cut.name] += BEFORE
    until(lambda: stored(fleet.database) == dict(answered), 30, "the records before the cut")
    at_cut = dict(answered)

    # The cut: the link goes down, and the host side forgets the node's connections to
    # PostgreSQL (see BREAKS for the order).
    if breaking == "refuse":
        cut.forwarder.reset()
        time.sleep(0.2)  # the RSTs arrive
    cut.net.cut()
    if breaking == "stall":
        cut.forwarder.reset()
    cut_at = time.monotonic()
    stop = threading.Event()
    seen: dict[str, Counter[str]] = {}

    def keep_loading(machine: Machine) -> None:
        seen[machine.name] = from_host(machine, answered, 10_000, stop)

    loads = [threading.Thread(target=keep_loading, args=(m,)) for m in others]
    for thread in loads:
        thread.start()
    inside = from_inside(cut, DURING, 0.1)
    seen_down = until(
        lambda: up(fleet.prometheus) == {**everyone, cut.name: 0}, 10, "up == 0 for the cut node"
    )
    during = report(inside)
    # It answered its own clients at its usual pace; every record waits in its queue.
    assert during["statuses"] == {"200": DURING}, during
    assert float(during["slowest"]) < 3.0, during  # type: ignore[arg-type]
    queued = during["metrics"]
    assert isinstance(queued, dict)
    assert queued["ollama_analytics_queue_depth{backend=postgresql}"] == DURING
    assert dropped(queued) == 0
    answered[cut.name] += DURING
    time.sleep(max(0.0, cut_at + CUT_SECONDS - time.monotonic()))
    in_cut = stored(fleet.database)
    assert in_cut is not None
    assert in_cut[cut.name] == at_cut[cut.name]  # nothing of it got through
    for machine in others:  # the others kept recording
        assert in_cut[machine.name] > at_cut[machine.name], (in_cut, at_cut)
    assert up(fleet.prometheus)[cut.name] == 0
    stop.set()
    for thread in loads:
        thread.join()
    for machine in others:  # answered all along
        assert set(seen[machine.name]) == {"200"}, seen
    cut_for = time.monotonic() - cut_at

    # The link is back: the queue drains, once each, and Prometheus sees the node again.
    cut.net.restore()
    drained = until(
        lambda: (stored(fleet.database) or {}).get(cut.name) == answered[cut.name],
        DRAIN_WITHIN,
        "the cut node's queue written",
    )
    until(lambda: stored(fleet.database) == dict(answered), 30, "every record")
    seen_up = until(lambda: up(fleet.prometheus) == everyone, 10, "up == 1 again")
    total, distinct = ids(fleet.database)
    assert total == distinct == sum(answered.values())  # none twice, none lost
    for machine in fleet.machines:
        samples = analytics(machine.url)
        assert dropped(samples) == 0, (machine.name, samples)
        assert samples["ollama_analytics_queue_depth{backend=postgresql}"] == 0
    errors = analytics(cut.url)["ollama_analytics_write_errors_total{backend=postgresql}"]
    if breaking == "refuse":
        assert errors > 0  # the writer did fail and retry
    print(
        f"\nfleet ({breaking}): {dict(answered)} records; up==0 seen {seen_down:.1f}s into "
        f"a {cut_for:.1f}s cut; cut node's {DURING} records written {drained:.1f}s after "
        f"the link was back ({errors:.0f} failed writes); up==1 {seen_up:.1f}s after; "
        f"test body {time.monotonic() - started:.1f}s"
    )

"""The fleet's deployment: docker-compose.node.yml on each GPU machine, docker-compose.central.yml
(PostgreSQL, Prometheus, Loki, Grafana) on one, checked without a Docker engine as the
single-machine stack is (test_deploy.py), and the Fleet overview dashboard against a real
Prometheus that discovers TWO real proxies (PROXY_NODE node-a and node-b) from a targets file
in the format of deploy/prometheus/nodes.yml, configured by deploy/prometheus-central.yml.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
import yaml

from app.cli import _parser, settings_from_args
from app.config import Settings
from tests.deploy.test_dashboards import PROMQL, Target, instant, label_values, substitute
from tests.deploy.test_deploy import (
    ALERTS,
    COMPOSE,
    DEPLOY,
    GPU_COMPOSE,
    HOST_FILES,
    LOKI_CONFIG,
    PROMETHEUS_CONFIG,
    ROOT,
    VARIABLE,
    assert_variables_documented,
    compose_validator,
    container_to_host,
    docker_compose,
    duration,
    env_file,
    is_bind,
    load,
    promtool,
    strings,
    volumes_of,
)
from tests.emulator import EmulatorServer
from tests.support import CHAT, ProxyProcess, prometheus_with

NODE_COMPOSE = DEPLOY / "docker-compose.node.yml"
CENTRAL_COMPOSE = DEPLOY / "docker-compose.central.yml"
NODE_ENV = DEPLOY / "node.env.example"
CENTRAL_ENV = DEPLOY / "central.env.example"
CENTRAL_PROMETHEUS = DEPLOY / "prometheus-central.yml"
NODES_FILE = DEPLOY / "prometheus" / "nodes.yml"
ENTRYPOINT = DEPLOY / "node" / "entrypoint.sh"
NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# What the tests give the variables each stack requires (${NAME:?...}).
REQUIRED = {
    "BIND_ADDRESS": "10.0.0.21",
    "FLEET_BIND_ADDRESS": "10.0.0.5",
    "ANALYTICS_DATABASE_URL": "postgresql://ollama_metrics:s3cret@10.0.0.5:5432/ollama_metrics",
    "LOKI_URL": "http://10.0.0.5:3100",
    "POSTGRES_PASSWORD": "s3cret",
    "GRAFANA_ADMIN_PASSWORD": "gr4fana",
}
STACKS = {"node": (NODE_COMPOSE, NODE_ENV), "central": (CENTRAL_COMPOSE, CENTRAL_ENV)}
FLEET = ["node-a", "node-b"]
DATA_TIMEOUT = 30.0


def services(path: Path) -> dict[str, Any]:
    found: dict[str, Any] = load(path)["services"]
    return found


def required(path: Path) -> set[str]:
    return {
        m["name"]
        for text in strings(load(path))
        for m in VARIABLE.finditer(text)
        if m["op"] == ":?"
    }


def filled(stack: str, tmp_path: Path, *, without: str | None = None) -> Path:
    """The stack's example env file with its required values given (but ``without``)."""
    compose, example = STACKS[stack]
    values = env_file(example)
    for name in required(compose):
        assert values[name] == "", f"{example.name}: {name} is required, so empty there"
        if name != without:
            values[name] = REQUIRED[name]
    path = tmp_path / f"{stack}.env"
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return path


def interpolated(value: str, env: dict[str, str]) -> str:
    return VARIABLE.sub(lambda m: env[m["name"]] or (m["arg"] if m["op"] == ":-" else ""), value)


# --- the compose files ---------------------------------------------------------------------


@pytest.mark.parametrize("path", [NODE_COMPOSE, CENTRAL_COMPOSE], ids=lambda p: p.name)
def test_compose_file_follows_the_compose_specification(path: Path) -> None:
    document = load(path)
    errors = compose_validator().iter_errors(document)
    assert [f"{list(e.absolute_path)}: {e.message}" for e in errors] == []
    assert "version" not in document, "the Compose Specification has no version key"


@pytest.mark.process
@pytest.mark.parametrize(
    ("stack", "files"),
    [
        ("node", [NODE_COMPOSE]),
        ("node", [NODE_COMPOSE, GPU_COMPOSE]),
        ("central", [CENTRAL_COMPOSE]),
    ],
    ids=["node", "node-gpu", "central"],
)
def test_docker_compose_accepts_the_stack(stack: str, files: list[Path], tmp_path: Path) -> None:
    result = docker_compose(filled(stack, tmp_path), *files)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)["services"]
    if stack == "node":
        proxy = config["proxy"]
        assert proxy["build"]["context"] == str(ROOT)
        assert proxy["ports"] == ["10.0.0.21:11434:11434/tcp"]
        assert proxy["environment"]["ANALYTICS_DATABASE_URL"] == REQUIRED["ANALYTICS_DATABASE_URL"]
        assert proxy["environment"]["LOKI_URL"] == REQUIRED["LOKI_URL"]
        assert proxy["environment"]["PROXY_NODE"] == ""
        gpus = config["ollama"].get("deploy", {}).get("resources", {}).get("reservations", {})
        assert bool(gpus.get("devices")) == (GPU_COMPOSE in files)
    else:
        assert config["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
        assert config["postgres"]["ports"] == ["10.0.0.5:5432:5432/tcp"]
        assert config["loki"]["ports"] == ["10.0.0.5:3100:3100/tcp"]
        assert config["prometheus"]["ports"] == ["127.0.0.1:9090:9090/tcp"]
        assert config["grafana"]["ports"] == ["127.0.0.1:3000:3000/tcp"]
        assert config["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "gr4fana"


@pytest.mark.process
@pytest.mark.parametrize(
    ("stack", "name"),
    [(stack, name) for stack, (compose, _) in STACKS.items() for name in sorted(required(compose))],
)
def test_docker_compose_refuses_to_start_without_a_required_value(
    stack: str, name: str, tmp_path: Path
) -> None:
    compose, example = STACKS[stack]
    result = docker_compose(filled(stack, tmp_path, without=name), compose)
    assert result.returncode != 0
    assert f"set {name} in deploy/{example.name.removesuffix('.example')}" in result.stderr


def test_each_stack_requires_its_credentials_and_open_addresses() -> None:
    # No default password, and no default address that opens a store or a node to the network
    # (nor loopback, which would cut the node or the stores off the fleet).
    assert required(NODE_COMPOSE) == {"BIND_ADDRESS", "ANALYTICS_DATABASE_URL", "LOKI_URL"}
    assert required(CENTRAL_COMPOSE) == {
        "FLEET_BIND_ADDRESS",
        "POSTGRES_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
    }


@pytest.mark.parametrize("path", [NODE_COMPOSE, CENTRAL_COMPOSE], ids=lambda p: p.name)
def test_images_are_pinned_and_the_same_as_the_single_machine_stack(path: Path) -> None:
    single = {name: s.get("image") for name, s in services(COMPOSE).items()}
    for name, service in services(path).items():
        if "build" in service:
            assert "image" not in service, f"{name}: built here, so no image name to pull"
            assert service["build"] == services(COMPOSE)[name]["build"]
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} has no tag"
        assert "/" not in tag, f"{name}: {image} has no tag"
        assert "$" not in image, f"{name}: {image} is not fixed in the file"
        assert tag != "latest", f"{name}: {image} is not pinned"
        assert re.fullmatch(r"v?\d+(\.\d+)+", tag), f"{name}: {image}: pin a full version"
        if name in single:
            assert image == single[name], f"{name}: {image}, but {single[name]} in {COMPOSE.name}"


def test_fleet_images_are_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in (NODE_COMPOSE, CENTRAL_COMPOSE):
        for service in services(path).values():
            if "image" in service:
                assert f"`{service['image']}`" in readme, f"README.md lacks {service['image']}"


@pytest.mark.parametrize("path", [NODE_COMPOSE, CENTRAL_COMPOSE], ids=lambda p: p.name)
def test_bind_mounts_exist_and_named_volumes_are_declared(path: Path) -> None:
    declared = load(path).get("volumes") or {}
    used = set()
    for name, service in services(path).items():
        for source, target in volumes_of(service):
            if source in HOST_FILES:
                assert target != source, f"{name}: {source} would hide the container's own"
            elif is_bind(source):
                assert not source.startswith(("/", "~")), f"{name}: {source} is not in the repo"
                host = (DEPLOY / source).resolve()
                assert host.is_relative_to(ROOT), f"{name}: {source} is outside the repo"
                # Docker would silently create a missing source as an empty directory.
                assert host.exists(), f"{name}: {source} does not exist in the repo"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == set(declared), f"declared, never mounted: {set(declared) - used}"


@pytest.mark.parametrize("stack", STACKS)
def test_every_variable_is_documented_with_its_default(stack: str) -> None:
    compose, example = STACKS[stack]
    assert_variables_documented([compose, GPU_COMPOSE] if stack == "node" else [compose], example)
    # Each variable is explained: a comment line right above it, or above its group.
    lines = example.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if line and not line.startswith("#"):
            above = lines[:index]
            assert any(a.startswith("# ") for a in above[-4:]), f"{example.name}: {line}"


@pytest.mark.parametrize("path", [NODE_COMPOSE, CENTRAL_COMPOSE], ids=lambda p: p.name)
def test_published_ports_and_credentials_come_from_env(path: Path) -> None:
    for name, service in services(path).items():
        for port in service.get("ports", []):
            host, _, container = str(port).rpartition(":")
            assert container.isdigit(), f"{name}: {port}"
            assert re.fullmatch(r"\$\{[^}]+\}:\$\{[^}]+\}", host), f"{name}: {port}"
        for key, value in service.get("environment", {}).items():
            if re.search(r"(PASSWORD|TOKEN|SECRET|_KEY|_USER|DATABASE_URL)$", key):
                match = VARIABLE.fullmatch(str(value))
                assert match, f"{name}: {key} is not from the env file"
                if key.endswith(("PASSWORD", "DATABASE_URL")):
                    assert match["op"] == ":?", f"{name}: {key} must have no default"
    assert "ports" not in services(NODE_COMPOSE)["ollama"], "Ollama is reached via the proxy"


def test_the_stores_listen_for_the_fleet_and_the_views_stay_local() -> None:
    central = services(CENTRAL_COMPOSE)
    env = env_file(CENTRAL_ENV)
    for name in ("postgres", "loki"):
        [port] = central[name]["ports"]
        assert port.startswith("${FLEET_BIND_ADDRESS:?"), name
    for name in ("prometheus", "grafana"):
        [port] = central[name]["ports"]
        assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), name
    assert env["BIND_ADDRESS"] == "127.0.0.1"
    [port] = services(NODE_COMPOSE)["proxy"]["ports"]
    assert port.startswith("${BIND_ADDRESS:?"), "the central Prometheus must reach the node"


@pytest.mark.parametrize("path", [NODE_COMPOSE, CENTRAL_COMPOSE], ids=lambda p: p.name)
def test_healthchecks_back_every_health_condition(path: Path) -> None:
    stack = services(path)
    for name, service in stack.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for other, condition in service.get("depends_on", {}).items():
            assert other in stack
            assert condition["condition"] in ("service_started", "service_healthy")


def test_node_runs_the_single_machine_ollama_and_proxy() -> None:
    single, node = services(COMPOSE), services(NODE_COMPOSE)
    assert node["ollama"] == single["ollama"]
    for key in ("build", "entrypoint", "command", "healthcheck", "stop_grace_period", "restart"):
        assert node["proxy"][key] == single["proxy"][key], key
    assert node["proxy"]["depends_on"] == {"ollama": {"condition": "service_healthy"}}


def test_central_runs_the_single_machine_loki_prometheus_and_grafana() -> None:
    single, central = services(COMPOSE), services(CENTRAL_COMPOSE)
    for name in ("loki", "prometheus", "grafana"):
        for key in ("image", "command", "healthcheck", "depends_on", "restart"):
            assert central[name].get(key) == single[name].get(key), f"{name}: {key}"
    assert central["loki"]["volumes"] == single["loki"]["volumes"]
    assert central["grafana"]["volumes"] == single["grafana"]["volumes"]
    prometheus = [v for v in central["prometheus"]["volumes"] if "prometheus.yml" not in v]
    assert prometheus == [v for v in single["prometheus"]["volumes"] if "prometheus.yml" not in v]
    # The data sources Grafana is provisioned with name these services and ports.
    datasources = load(DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yml")
    urls = {source["type"]: source["url"] for source in datasources["datasources"]}
    loki_port = load(LOKI_CONFIG)["server"]["http_listen_port"]
    assert urls == {"prometheus": "http://prometheus:9090", "loki": f"http://loki:{loki_port}"}
    assert {"prometheus", "loki"} <= set(central)


def test_the_node_proxy_is_wired_to_the_central_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = services(NODE_COMPOSE)["proxy"]
    env = env_file(NODE_ENV) | {name: REQUIRED[name] for name in required(NODE_COMPOSE)}
    for field in Settings.model_fields:
        monkeypatch.delenv(field.upper(), raising=False)
    for key, value in proxy["environment"].items():
        monkeypatch.setenv(key, interpolated(str(value), env))
    # What node/entrypoint.sh does with PROXY_NODE empty: the host's name.
    monkeypatch.setenv("PROXY_NODE", "gpu-01")
    args = _parser().parse_args(proxy["command"])
    settings = settings_from_args(args)

    assert settings.ollama_upstream == "http://ollama:11434"
    assert settings.analytics_backends == ("postgresql", "loki")
    assert settings.analytics_database_url is not None
    url = settings.analytics_database_url
    assert (url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)) == (
        REQUIRED["ANALYTICS_DATABASE_URL"]
    )
    assert settings.loki_url == REQUIRED["LOKI_URL"]
    assert settings.proxy_node == "gpu-01"
    drain = settings.shutdown_grace_seconds + settings.analytics_drain_seconds
    assert duration(proxy["stop_grace_period"]) > drain
    assert [str(p).rpartition(":")[2] for p in proxy["ports"]] == [str(settings.proxy_port)]

    # The entrypoint is the script of the repo, run by sh (a bind mount keeps no exec bit
    # on some hosts), and the host name is where the script reads it.
    entrypoint = proxy["entrypoint"]
    assert entrypoint[0] == "sh"
    mounts = dict((target, source) for source, target in volumes_of(proxy))
    assert (DEPLOY / mounts[entrypoint[1]]).resolve() == ENTRYPOINT
    assert mounts["/etc/host-hostname"] == "/etc/hostname"
    assert "/etc/host-hostname" in ENTRYPOINT.read_text(encoding="utf-8")


def test_the_node_env_example_points_at_the_central_defaults() -> None:
    central = env_file(CENTRAL_ENV)
    text = NODE_ENV.read_text(encoding="utf-8")
    [url] = re.findall(r"postgresql://\S+", text)
    match = re.fullmatch(r"postgresql://(\w+):PASSWORD@[\d.]+:(\d+)/(\w+)", url)
    assert match, url
    user, port, db = match.groups()
    assert (user, port, db) == (
        central["POSTGRES_USER"],
        central["POSTGRES_PORT"],
        central["POSTGRES_DB"],
    )
    assert f":{central['LOKI_PORT']}" in re.findall(r"http://[\d.]+:\d+", text)[0]


def run_entrypoint(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """node/entrypoint.sh with a stand-in ollama-metrics that prints what it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "ollama-metrics"
    stub.write_text('#!/bin/sh\necho "PROXY_NODE=$PROXY_NODE ARGS=$*"\n')
    stub.chmod(0o755)
    return subprocess.run(
        ["sh", str(ENTRYPOINT), "proxy", "--host", "0.0.0.0"],
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.process
@pytest.mark.parametrize(
    ("host_name", "given", "expected"),
    [
        ("gpu-01.lab\n", "", "gpu-01.lab"),
        ("gpu 01\n", None, "gpu-01"),
        ("x" * 80 + "\n", "", "x" * 64),
        ("gpu-01\n", "chosen", "chosen"),
    ],
)
def test_node_entrypoint_names_the_node(
    tmp_path: Path, host_name: str, given: str | None, expected: str
) -> None:
    hostname = tmp_path / "hostname"
    hostname.write_text(host_name)
    env = {"HOST_HOSTNAME_FILE": str(hostname)}
    if given is not None:
        env["PROXY_NODE"] = given
    result = run_entrypoint(tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"PROXY_NODE={expected} ARGS=proxy --host 0.0.0.0\n"
    assert NODE_NAME.fullmatch(expected)


@pytest.mark.process
def test_node_entrypoint_refuses_a_node_without_a_name(tmp_path: Path) -> None:
    result = run_entrypoint(tmp_path, {"HOST_HOSTNAME_FILE": str(tmp_path / "missing")})
    assert result.returncode == 2
    assert "set PROXY_NODE in deploy/.env or deploy/node.env" in result.stderr
    assert result.stdout == ""


# --- the central Prometheus ------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize(
    "args",
    [["check", "config", "deploy/prometheus-central.yml"]],
    ids=" ".join,
)
def test_promtool(args: list[str]) -> None:
    """promtool also reads and checks the targets files of file_sd_configs."""
    assert f"Checking {ALERTS.relative_to(ROOT)}" in promtool(*args)


def fleet_job(config: dict[str, Any]) -> dict[str, Any]:
    jobs: list[dict[str, Any]] = config["scrape_configs"]
    [job] = [job for job in jobs if job["job_name"] == "ollama-metrics"]
    return job


def test_nodes_file_is_a_file_sd_targets_file_with_a_node_label_each() -> None:
    entries = load(NODES_FILE)
    assert isinstance(entries, list)
    assert entries
    nodes, targets = [], []
    for entry in entries:
        assert set(entry) == {"targets", "labels"}, entry
        assert isinstance(entry["targets"], list), entry
        assert entry["targets"], entry
        for target in entry["targets"]:
            host, _, port = target.rpartition(":")
            assert host, f"{target}: HOST:PORT"
            assert port.isdigit(), f"{target}: HOST:PORT, no scheme, no path"
            targets.append(target)
        labels = entry["labels"]
        assert all(isinstance(v, str) for v in labels.values()), labels
        assert not any(name.startswith("__") for name in labels), labels
        assert NODE_NAME.fullmatch(labels["node"]), "a node label that could be a PROXY_NODE"
        assert len(entry["targets"]) == 1, "one proxy per node, or its series would collide"
        nodes.append(labels["node"])
    assert len(set(nodes)) == len(nodes), f"each node once: {nodes}"
    assert len(set(targets)) == len(targets), targets
    # The examples name the nodes' published port.
    port = env_file(NODE_ENV)["PROXY_PORT"]
    assert all(target.endswith(f":{port}") for target in targets)


def test_central_prometheus_loads_the_same_rules_and_the_targets_file() -> None:
    prometheus = services(CENTRAL_COMPOSE)["prometheus"]
    flags = dict(arg.split("=", 1) for arg in prometheus["command"])
    config_file = flags["--config.file"]
    assert container_to_host(prometheus, config_file) == CENTRAL_PROMETHEUS
    central, single = load(CENTRAL_PROMETHEUS), load(PROMETHEUS_CONFIG)
    assert central["rule_files"] == single["rule_files"]
    assert ALERTS in [DEPLOY / p for p in central["rule_files"]]
    directory = PurePosixPath(config_file).parent
    for pattern in central["rule_files"]:
        assert container_to_host(prometheus, str(directory / pattern)) == (DEPLOY / pattern)
    job = fleet_job(central)
    assert fleet_job(single)["job_name"] == job["job_name"], "the alerts select this job"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert "static_configs" not in job
    assert not job.get("honor_labels", False), "the targets file's node label must win"
    [sd] = job["file_sd_configs"]
    assert sd["files"] == ["prometheus/nodes.yml"]
    for name in sd["files"]:
        assert not PurePosixPath(name).is_absolute(), "absolute paths differ under promtool"
        assert container_to_host(prometheus, str(directory / name)) == NODES_FILE
    assert "--enable-feature=exemplar-storage" in prometheus["command"]


# --- the Fleet overview against a real Prometheus and two real proxies ----------------------


FLEET_PROMQL = [t for t in PROMQL if t.dashboard == "fleet.json"]


@pytest.fixture(scope="module")
def fleet(emulator: EmulatorServer) -> Iterator[dict[str, ProxyProcess]]:
    with contextlib.ExitStack() as stack:
        yield {
            node: stack.enter_context(
                ProxyProcess(emulator.url, env={"PROXY_NODE": node, "PS_POLL_INTERVAL": "0.5"})
            )
            for node in FLEET
        }


@pytest.fixture(scope="module")
def central_prometheus(
    fleet: dict[str, ProxyProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """deploy/prometheus-central.yml, scraping every second, its targets file listing the two
    proxies as deploy/prometheus/nodes.yml lists the nodes, its rules the deployment's."""
    work = tmp_path_factory.mktemp("prometheus-fleet")
    example = load(NODES_FILE)
    nodes = [
        {**example[0], "targets": [f"127.0.0.1:{proxy.port}"], "labels": {"node": node}}
        for node, proxy in fleet.items()
    ]
    (work / "nodes.yml").write_text(yaml.safe_dump(nodes))
    config = load(CENTRAL_PROMETHEUS)
    config["global"] = {**config["global"], "scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [
        str((CENTRAL_PROMETHEUS.parent / p).resolve()) for p in config["rule_files"]
    ]
    job = fleet_job(config)
    job["scrape_interval"] = "1s"
    for sd in job["file_sd_configs"]:
        sd["files"] = [str(work / "nodes.yml")]
    config["scrape_configs"] = [job]  # not Prometheus itself: its port is not 9090 here
    with prometheus_with(yaml.safe_dump(config), work, "--enable-feature=exemplar-storage") as url:
        yield url


def send_traffic(client: httpx.Client) -> int:
    for path, body in [
        ("/api/generate", {"model": "llama3.2", "prompt": "Why is the sky blue?", "stream": False}),
        ("/api/chat", {"model": "llama3.2", "messages": CHAT}),
    ]:
        answer = client.post(path, json=body)
        assert answer.status_code == 200, (path, answer.text)
    missing = {"model": "no-such-model", "prompt": "hi", "stream": False}
    assert client.post("/api/generate", json=missing).status_code == 404
    return 3


def by_node(answer: dict[str, Any]) -> dict[str, list[float]]:
    assert answer["status"] == "success", answer
    values: dict[str, list[float]] = {}
    for series in answer["data"]["result"]:
        node = series["metric"].get("node", "")
        values.setdefault(node, []).append(float(series["value"][1]))
    return values


@pytest.fixture(scope="module")
def fleet_scraped(central_prometheus: str, fleet: dict[str, ProxyProcess]) -> float:
    """Two rounds of traffic through each proxy, the second after a scrape saw the first (rate()
    needs two samples); returns the deadline for the queries to show it."""
    clients = {node: proxy.client() for node, proxy in fleet.items()}
    try:
        sent = {node: send_traffic(client) for node, client in clients.items()}
        deadline = time.monotonic() + DATA_TIMEOUT
        while True:
            seen = by_node(instant(central_prometheus, "sum by (node) (ollama_requests_total)"))
            if all(seen.get(node, [0])[0] >= count for node, count in sent.items()):
                break
            assert time.monotonic() < deadline, f"Prometheus never scraped both proxies: {seen}"
            time.sleep(0.2)
        for client in clients.values():
            send_traffic(client)
    finally:
        for client in clients.values():
            client.close()
    return time.monotonic() + DATA_TIMEOUT


@pytest.mark.process
def test_the_targets_file_names_each_node(central_prometheus: str, fleet_scraped: float) -> None:
    up = by_node(instant(central_prometheus, 'up{job="ollama-metrics"}'))
    assert up == {node: [1.0] for node in FLEET}


@pytest.mark.process
def test_proxy_node_reaches_prometheus_beside_the_targets_file_name(
    central_prometheus: str, fleet_scraped: float
) -> None:
    """ollama_proxy_info{node=PROXY_NODE}: the targets file's node label wins (every series
    then agrees), the proxy's own is kept as exported_node. Needs PROXY_NODE in the proxy."""
    answer = instant(central_prometheus, "ollama_proxy_info")
    assert answer["status"] == "success", answer
    labels = [series["metric"] for series in answer["data"]["result"]]
    assert sorted((m["node"], m.get("exported_node")) for m in labels) == [
        (node, node) for node in FLEET
    ]
    assert all(m.get("version") for m in labels), labels


@pytest.mark.process
def test_the_node_variable_lists_both_nodes(central_prometheus: str, fleet_scraped: float) -> None:
    from tests.deploy.test_dashboards import NODE_QUERY

    deadline = time.monotonic() + DATA_TIMEOUT
    while (nodes := label_values(central_prometheus, NODE_QUERY)) != FLEET:
        assert time.monotonic() < deadline, nodes
        time.sleep(0.5)


@pytest.mark.process
def test_the_central_prometheus_loads_the_alert_rules(
    central_prometheus: str, fleet_scraped: float
) -> None:
    answer = httpx.get(central_prometheus + "/api/v1/rules", timeout=10).json()
    assert answer["status"] == "success", answer
    loaded = {rule["name"] for group in answer["data"]["groups"] for rule in group["rules"]}
    expected = {rule["alert"] for group in load(ALERTS)["groups"] for rule in group["rules"]}
    assert loaded == expected
    # Healthy nodes: the scrape alert (pending from before the first scrapes) goes quiet.
    deadline = time.monotonic() + DATA_TIMEOUT
    while True:
        alerts = httpx.get(central_prometheus + "/api/v1/alerts", timeout=10).json()
        names = {alert["labels"]["alertname"] for alert in alerts["data"]["alerts"]}
        if "OllamaProxyScrapeMissing" not in names:
            break
        assert time.monotonic() < deadline, alerts
        time.sleep(0.5)


def for_nodes(promql: str, prometheus: str, nodes: list[str], deadline: float) -> None:
    """Until ``promql`` returns a number for each of ``nodes``, and for no other node."""
    while True:
        answer = instant(prometheus, promql)
        assert answer["status"] == "success", f"Prometheus refused {promql}: {answer}"
        values = by_node(answer)
        if sorted(values) == nodes and all(
            not math.isnan(v) for node in nodes for v in values[node]
        ):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{promql}: wanted data for {nodes}, got {values}")
        time.sleep(0.5)


@pytest.mark.process
@pytest.mark.parametrize("target", FLEET_PROMQL, ids=lambda target: target.name)
def test_fleet_promql_returns_data_for_both_nodes(
    target: Target, central_prometheus: str, fleet_scraped: float
) -> None:
    assert 'node=~"$node"' in target.expr
    # All (".*"), then one node: the panel shows it alone.
    for_nodes(substitute(target.expr), central_prometheus, FLEET, fleet_scraped)
    one = target.expr.replace("$node", "node-b")
    for_nodes(substitute(one), central_prometheus, ["node-b"], fleet_scraped)


def test_fleet_dashboard_shows_every_asked_for_view() -> None:
    metrics = " ".join(t.expr for t in FLEET_PROMQL)
    for needed in (
        "up{",
        "ollama_requests_total",
        "ollama_tokens_total",
        "ollama_models_loaded",
        "ollama_model_vram_bytes",
        'status=~"[45].."',
        "ollama_proxy_info",
    ):
        assert needed in metrics, needed
    tables = {t.panel for t in FLEET_PROMQL if t.panel_type == "table"}
    assert tables == {"Nodes"}
    for target in FLEET_PROMQL:
        assert re.search(r"\bby \(node\b", target.expr), f"per node: {target}"

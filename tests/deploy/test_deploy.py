"""The Docker deployment (deploy/, Dockerfile, .dockerignore), checked without a Docker engine.

The compose files are validated against the Compose Specification and by docker-compose
itself; Prometheus's configuration and alert rules by promtool; the Dockerfile and the build
context by reading them; and Loki's limits against what the proxy really pushes, captured
from a real ``LokiBackend`` by a local HTTP receiver.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml

from app.analytics.loki import DEFAULT_MAX_MODELS, LokiBackend
from app.analytics.rows import to_row
from app.analytics.writer import AnalyticsWriter
from app.cli import _parser, settings_from_args
from app.config import Settings
from app.metrics.instruments import DURATION_BUCKETS
from app.ollama.endpoints import known_labels
from tests.support import LocalHttpServer, sample_record

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
GPU_COMPOSE = DEPLOY / "docker-compose.gpu.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
PROMETHEUS_CONFIG = DEPLOY / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
LOKI_CONFIG = DEPLOY / "loki" / "loki-config.yaml"
DOCKERFILE = ROOT / "Dockerfile"
# The Compose Specification's schema as check-jsonschema ships it (`--builtin-schema
# vendor.compose-spec`), with its licence, kept current by that package's releases.
COMPOSE_SCHEMA = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"

VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
LOKI_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
MiB = 1 << 20
# Ollama's longest model name: host (350) / namespace (80) / model (80) : tag (80).
OLLAMA_MAX_MODEL_NAME = 350 + 1 + 80 + 1 + 80 + 1 + 80
# Room beyond the capped texts for the row fields that are not capped (path, user agent,
# client, the model name as the client sent it): small in practice.
UNCAPPED_ALLOWANCE = 64 * 1024
# The nodes the fleet's central Loki (docker-compose.central.yml) is sized for, at their worst.
FLEET_NODES = 10


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def services() -> dict[str, Any]:
    services: dict[str, Any] = load(COMPOSE)["services"]
    return services


def env_file(path: Path) -> dict[str, str]:
    """The NAME=value lines of an env file (``.env.example`` and the fleet's)."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: not NAME=value: {line!r}"
            assert name not in values, f"{path.name}: {name} twice"
            values[name] = value
    return values


def env_example() -> dict[str, str]:
    return env_file(ENV_EXAMPLE)


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def interpolated(value: str) -> str:
    """``value`` as compose would make it from the .env.example values."""
    env = env_example()
    return VARIABLE.sub(lambda m: env[m["name"]], value)


def duration(text: str) -> float:
    """Seconds in a Prometheus/Loki duration such as ``168h``, ``1h30m``, ``15d``."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", str(text))
    assert "".join(n + u for n, u in parts) == str(text), f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def size(text: str | int) -> int:
    """Bytes in a Loki size (dskit ByteSize, go-humanize): ``10MiB``, ``3MB``, ``1024``."""
    units = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}
    units |= {"gb": 1000**3, "gib": 1024**3}
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    assert match, f"not a size: {text!r}"
    assert match[2].lower() in units, f"unit of {text!r}"
    return int(float(match[1]) * units[match[2].lower()])


def volumes_of(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(source, target) of each volume of ``service``, short or long syntax."""
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            yield volume["source"], volume["target"]
        else:
            source, target, *_ = volume.split(":")
            yield source, target


# The one host file the stacks mount: the machine's name, for PROXY_NODE's default
# (deploy/node/entrypoint.sh).
HOST_FILES = {"/etc/hostname"}


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


# --- the compose files -----------------------------------------------------------------------


def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    drafts = {
        "draft-04": jsonschema.Draft4Validator,
        "draft-06": jsonschema.Draft6Validator,
        "draft-07": jsonschema.Draft7Validator,
        "draft/2019-09": jsonschema.Draft201909Validator,
        "draft/2020-12": jsonschema.Draft202012Validator,
    }
    declared = schema["$schema"]
    validator = next(cls for draft, cls in drafts.items() if draft in declared)
    validator.check_schema(schema)
    return validator(schema)


@pytest.mark.parametrize("path", [COMPOSE, GPU_COMPOSE], ids=lambda p: p.name)
def test_compose_file_follows_the_compose_specification(path: Path) -> None:
    document = load(path)
    errors = compose_validator().iter_errors(document)
    assert [f"{list(e.absolute_path)}: {e.message}" for e in errors] == []
    assert "version" not in document, "the Compose Specification has no version key"


def docker_compose(env_file: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "the Debian package docker-compose is not installed (scripts/setup.sh --dev)"
    command = [binary, "--env-file", str(env_file)]
    for path in files:
        command += ["-f", str(path)]
    # Only PATH: a variable of the test's own environment would beat the env file.
    return subprocess.run(
        [*command, "config"],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.process
@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, GPU_COMPOSE]], ids=["cpu", "gpu"])
def test_docker_compose_accepts_the_stack(files: list[Path], tmp_path: Path) -> None:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    assert "\nGRAFANA_ADMIN_PASSWORD=\n" in text
    env_file = tmp_path / ".env"
    env_file.write_text(text.replace("PASSWORD=\n", "PASSWORD=s3cret\n"))
    result = docker_compose(env_file, *files)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)["services"]
    assert config["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"
    assert config["proxy"]["build"]["context"] == str(ROOT)
    assert "127.0.0.1:11434:11434/tcp" in config["proxy"]["ports"]
    gpus = config["ollama"].get("deploy", {}).get("resources", {}).get("reservations", {})
    expected = [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert gpus.get("devices") == (expected if GPU_COMPOSE in files else None)


@pytest.mark.process
def test_docker_compose_refuses_to_start_without_a_grafana_password() -> None:
    result = docker_compose(ENV_EXAMPLE, COMPOSE)
    assert result.returncode != 0
    assert "set GRAFANA_ADMIN_PASSWORD in deploy/.env" in result.stderr


def test_images_are_pinned() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name, service in services().items():
        if "build" in service:
            assert "image" not in service, f"{name}: built here, so no image name to pull"
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} has no tag"
        assert "/" not in tag, f"{name}: {image} has no tag"
        assert "$" not in image, f"{name}: {image} is not fixed in the file"
        assert tag != "latest", f"{name}: {image} is not pinned"
        assert f"`{image}`" in readme, f"README.md's Docker compose table lacks {image}"


def test_bind_mounts_exist_and_named_volumes_are_declared() -> None:
    declared = load(COMPOSE).get("volumes") or {}
    for name, service in services().items():
        for source, target in volumes_of(service):
            if source in HOST_FILES:
                assert target != source, f"{name}: {source} would hide the container's own"
            elif is_bind(source):
                path = (DEPLOY / source).resolve()
                assert path.is_relative_to(ROOT), f"{name}: {source} is outside the repo"
                # Docker would silently create a missing source as an empty directory.
                assert path.exists(), f"{name}: {source} does not exist in the repo"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


def assert_variables_documented(files: Sequence[Path], example: Path) -> None:
    """Every ${NAME} of ``files`` is in ``example`` with the same default (or empty where
    it is required), and ``example`` holds no other (but COMPOSE_*)."""
    env = env_file(example)
    used = set()
    for path in files:
        for text in strings(load(path)):
            assert "$" not in VARIABLE.sub("", text), f"{path.name}: use ${{NAME}}: {text!r}"
            for match in VARIABLE.finditer(text):
                name, op = match["name"], match["op"]
                used.add(name)
                assert name in env, f"{name} is not in {example.name}"
                assert op in (":-", ":?"), f"{name}: give a default (:-) or require it (:?)"
                # Copying the example changes nothing but what the user must choose.
                assert env[name] == (match["arg"] if op == ":-" else ""), name
    assert set(env) - {n for n in env if n.startswith("COMPOSE_")} == used


def test_every_variable_is_documented_with_its_default() -> None:
    assert_variables_documented([COMPOSE, GPU_COMPOSE], ENV_EXAMPLE)


def test_published_ports_and_credentials_come_from_env_example() -> None:
    env = env_example()
    credentials = []
    for name, service in services().items():
        for port in service.get("ports", []):
            host, _, container = str(port).rpartition(":")
            assert container.isdigit(), f"{name}: {port}"
            assert re.fullmatch(r"(\$\{[^}]+\}:)*\$\{[^}]+\}", host), f"{name}: {port}"
            assert all(m["name"] in env for m in VARIABLE.finditer(host))
        for key, value in service.get("environment", {}).items():
            if re.search(r"(PASSWORD|TOKEN|SECRET|_KEY|_USER)$", key):
                credentials.append(key)
                match = VARIABLE.fullmatch(str(value))
                assert match, f"{name}: {key} is not from .env"
                assert match["name"] in env, f"{name}: {key} is not from .env"
    assert {"GF_SECURITY_ADMIN_USER", "GF_SECURITY_ADMIN_PASSWORD", "ANALYTICS_TOKEN"} <= set(
        credentials
    )
    assert "ports" not in services()["ollama"], "Ollama is reached through the proxy only"


def test_healthchecks_back_every_health_condition() -> None:
    stack = services()
    for name, service in stack.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for other, condition in service.get("depends_on", {}).items():
            assert other in stack
            assert condition["condition"] in ("service_started", "service_healthy")
    assert stack["proxy"]["depends_on"]["ollama"]["condition"] == "service_healthy"
    for other in ("prometheus", "loki"):
        assert stack["grafana"]["depends_on"][other]["condition"] == "service_healthy"


def test_the_proxy_is_wired_to_ollama_loki_and_prometheus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = services()["proxy"]
    for field in Settings.model_fields:
        monkeypatch.delenv(field.upper(), raising=False)
    for key, value in proxy["environment"].items():
        monkeypatch.setenv(key, interpolated(str(value)))
    # Empty in .env.example: deploy/node/entrypoint.sh makes it the host's name
    # (tests/deploy/test_fleet.py runs the script).
    assert proxy["environment"]["PROXY_NODE"] == "${PROXY_NODE:-}"
    assert proxy["entrypoint"] == ["sh", "/usr/local/lib/ollama-metrics/node-entrypoint.sh"]
    monkeypatch.setenv("PROXY_NODE", "gpu-01")
    args = _parser().parse_args(proxy["command"])
    assert args.command == "proxy"
    settings = settings_from_args(args)

    assert settings.ollama_upstream == "http://ollama:11434"
    assert settings.analytics_backends == ("sqlite", "loki")
    assert settings.proxy_node == "gpu-01"
    assert settings.analytics_token is None or not settings.analytics_token.get_secret_value()
    # SIGTERM: in-flight requests finish, then the analytics queues drain, then Docker kills.
    drain = settings.shutdown_grace_seconds + settings.analytics_drain_seconds
    assert duration(proxy["stop_grace_period"]) > drain
    mounted = [target for _, target in volumes_of(proxy)]
    assert str(settings.analytics_dir) in mounted, "the SQLite store must be on a volume"
    loki_port = load(LOKI_CONFIG)["server"]["http_listen_port"]
    assert settings.loki_url == f"http://loki:{loki_port}"

    port = settings.proxy_port
    assert [str(p).rpartition(":")[2] for p in proxy["ports"]] == [str(port)]
    assert f"http://127.0.0.1:{port}/test" in " ".join(proxy["healthcheck"]["test"])
    jobs = {job["job_name"]: job for job in load(PROMETHEUS_CONFIG)["scrape_configs"]}
    targets = [t for c in jobs["ollama-metrics"]["static_configs"] for t in c["targets"]]
    assert targets == [f"proxy:{port}"]
    assert jobs["ollama-metrics"].get("metrics_path", "/metrics") == "/metrics"


# --- Prometheus --------------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "deploy/prometheus.yml"],
        ["check", "rules", "deploy/prometheus/alerts.yml"],
        ["test", "rules", "deploy/prometheus/alerts_test.yml"],
    ],
    ids=" ".join,
)
def test_promtool(args: list[str]) -> None:
    promtool(*args)


def promtool(*args: str) -> str:
    """``promtool ARGS`` run in the repo; what it said (it must succeed)."""
    binary = shutil.which("promtool")
    assert binary, "the Debian package prometheus is not installed (scripts/setup.sh --dev)"
    result = subprocess.run([binary, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def container_to_host(service: dict[str, Any], container_path: str) -> Path | None:
    """The repo file that a bind mount of ``service`` shows at ``container_path``."""
    path = PurePosixPath(container_path)
    for source, target in volumes_of(service):
        if is_bind(source) and path.is_relative_to(target):
            return (DEPLOY / source / path.relative_to(target)).resolve()
    return None


def test_rule_files_are_the_same_in_the_container_and_under_promtool() -> None:
    prometheus = services()["prometheus"]
    flags = dict(arg.split("=", 1) for arg in prometheus["command"])
    config_in_container = flags["--config.file"]
    assert container_to_host(prometheus, config_in_container) == PROMETHEUS_CONFIG
    rule_files = load(PROMETHEUS_CONFIG)["rule_files"]
    assert rule_files
    for pattern in rule_files:
        assert not PurePosixPath(pattern).is_absolute(), "absolute paths differ under promtool"
        in_container = str(PurePosixPath(config_in_container).parent / pattern)
        assert container_to_host(prometheus, in_container) == (DEPLOY / pattern).resolve()
    assert ALERTS in [DEPLOY / p for p in rule_files]
    assert load(ALERTS_TEST)["rule_files"] == [ALERTS.name]
    assert "--enable-feature=exemplar-storage" in prometheus["command"]


def documented_metrics() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `([a-z_:]+)`", text, flags=re.MULTILINE))


def test_alerts_use_only_documented_metrics() -> None:
    documented = documented_metrics()
    assert {"ollama_requests_total", "ollama_upstream_up"} <= documented
    rules = [rule for group in load(ALERTS)["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert names == {
        "OllamaUpstreamDown",
        "OllamaErrorRatioHigh",
        "OllamaTTFTp95High",
        "OllamaAnalyticsDropping",
        "OllamaProxyScrapeMissing",
        "OllamaQueueWaitP95High",
        "OllamaModelThrashing",
        "OllamaModelSpilledToCPU",
        "OllamaTruncationsRising",
    }
    job = load(PROMETHEUS_CONFIG)["scrape_configs"][0]["job_name"]
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        for metric in re.findall(r"\b(?:ollama|gen_ai)_[a-z_]+", rule["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert metric in documented or base in documented, f"{rule['alert']}: {metric}"
        for selector in re.findall(r"\bup\{([^}]*)\}", rule["expr"]):
            assert selector == f'job="{job}"', rule["alert"]


def test_every_alert_has_a_unit_test_that_fires_and_one_that_does_not() -> None:
    names = {rule["alert"] for group in load(ALERTS)["groups"] for rule in group["rules"]}
    fired: set[str] = set()
    silent: set[str] = set()
    for test in load(ALERTS_TEST)["tests"]:
        for check in test.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else silent).add(check["alertname"])
    assert fired == names, f"never seen firing: {names - fired}"
    assert silent == names, f"never seen silent: {names - silent}"


def test_alerts_name_only_endpoints_the_proxy_labels() -> None:
    known = set(known_labels())
    for group in load(ALERTS)["groups"]:
        for rule in group["rules"]:
            for pattern in re.findall(r'\bendpoint=~?"([^"]*)"', rule["expr"]):
                assert set(pattern.split("|")) <= known, f"{rule['alert']}: {pattern}"


# --- the image ---------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.partition(" ") for line in lines)
        if word and not word.startswith("#")
    ]


def test_dockerfile_installs_the_package_from_pyproject_only() -> None:
    steps = instructions()
    installs = [args for step, args in steps if step == "RUN" and "pip install" in args]
    assert installs, "the package is not installed"
    for command in installs:
        targets = [a for a in command.split("pip install", 1)[1].split() if not a.startswith("-")]
        assert targets == ["."], f"install only this package, from pyproject.toml: {command}"
        assert " -r" not in command
        assert "--requirement" not in command
    assert "requirements" not in DOCKERFILE.read_text(encoding="utf-8").lower()
    copied = [args.split()[:-1] for step, args in steps if step == "COPY" and "--from" not in args]
    assert ["pyproject.toml", "README.md"] in copied


def test_dockerfile_runs_the_proxy_as_a_non_root_user_on_pinned_bases() -> None:
    steps = instructions()
    stages = [args.split() for step, args in steps if step == "FROM"]
    assert len(stages) >= 2, "multi-stage: build in one stage, run from a clean one"
    names = {stage[2] for stage in stages if len(stage) == 3}
    for stage in stages:
        image = stage[0]
        if image not in names:
            assert ":" in image, f"{image} is not pinned"
            assert not image.endswith(":latest"), f"{image} is not pinned"
    final = steps[max(i for i, (step, _) in enumerate(steps) if step == "FROM") :]
    users = [args for step, args in final if step == "USER"]
    assert users, "the proxy would run as root"
    assert users[-1].partition(":")[0] not in ("root", "0"), "the proxy would run as root"
    last = {step: args for step, args in final}
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert json.loads(last["ENTRYPOINT"]) == ["ollama-metrics"]
    assert "ollama-metrics" in scripts["project"]["scripts"]
    assert json.loads(last["CMD"]) == ["proxy", "--host", "0.0.0.0"]
    assert _parser().parse_args(json.loads(last["CMD"])).command == "proxy"
    assert last["EXPOSE"] == "11434"
    assert "/test" in last["HEALTHCHECK"]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore ``patterns`` keep ``path`` out of the build context: the last
    matching pattern wins, and a pattern matching a directory covers what is inside."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        if any(fnmatch.fnmatchcase(prefix, glob) for prefix in prefixes):
            ignored = not keep
    return ignored


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def build_context() -> set[str]:
    patterns = dockerignore()
    reopened = [p.removeprefix("!").strip("/") for p in patterns if p.startswith("!")]
    context = set()
    for directory, subdirectories, files in os.walk(ROOT):
        relative = Path(directory).relative_to(ROOT).as_posix()
        prefix = "" if relative == "." else relative + "/"
        # Skip what is ignored whole (.git, .venv, ...): nothing inside it is let back in.
        subdirectories[:] = [
            d
            for d in subdirectories
            if not dockerignored(prefix + d, patterns)
            or any(r.startswith(prefix + d + "/") for r in reopened)
        ]
        context |= {prefix + f for f in files if not dockerignored(prefix + f, patterns)}
    return context


def test_build_context_holds_the_package_and_nothing_else() -> None:
    context = build_context()
    package = {
        path.relative_to(ROOT).as_posix()
        for top in ("app", "migrations")
        for path in (ROOT / top).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert package
    assert context == package | {"pyproject.toml", "README.md"}
    for secret in (".git/HEAD", ".venv/pyvenv.cfg", "ollama_analytics/analytics.db"):
        assert dockerignored(secret, dockerignore()), secret


# --- Loki --------------------------------------------------------------------------------------


@pytest.fixture
def pushed() -> Iterator[tuple[LokiBackend, list[dict[str, Any]]]]:
    """A LokiBackend and the pushes a local receiver took from it."""
    pushes: list[dict[str, Any]] = []

    def take(
        method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str | None, bytes]:
        pushes.append(json.loads(body))
        return 204, None, b""

    with LocalHttpServer(take) as server:
        backend = LokiBackend(server.url)
        try:
            yield backend, pushes
        finally:
            backend.close()


def limits() -> dict[str, Any]:
    limits: dict[str, Any] = load(LOKI_CONFIG)["limits_config"]
    return limits


def row(**changes: Any) -> dict[str, Any]:
    cap = Settings().analytics_max_text_bytes
    return to_row(sample_record(**changes), store_prompts=True, max_text_bytes=cap)


def test_loki_keeps_the_records_for_a_while_then_deletes_them() -> None:
    config = load(LOKI_CONFIG)
    assert config["auth_enabled"] is False, "the proxy sends no tenant (LOKI_TENANT unset)"
    schema = config["schema_config"]["configs"][-1]
    assert (schema["store"], schema["schema"]) == ("tsdb", "v13")
    assert config["compactor"]["retention_enabled"] is True
    assert config["compactor"]["delete_request_store"] == schema["object_store"]
    retention = duration(limits()["retention_period"])
    assert retention == Settings().analytics_retention_days * 86400, "as long as SQLite keeps"


@pytest.mark.process
def test_loki_accepts_the_stream_labels_the_proxy_sends(
    pushed: tuple[LokiBackend, list[dict[str, Any]]],
) -> None:
    backend, pushes = pushed
    longest_model = "h" * 350 + "/" + "n" * 80 + "/" + "m" * 80 + ":" + "t" * 80
    backend.write(
        [
            row(model=longest_model),
            row(model="", endpoint="/api/tags", status=200),
            row(model="junk", status=404),
            row(endpoint="/api/experimental/model-recommendations", status=599),
        ]
    )
    streams = [stream["stream"] for push in pushes for stream in push["streams"]]
    assert len(streams) == 4
    limit = limits()
    for labels in streams:
        # Loki 3 adds service_name (taken from app) to streams that lack it.
        assert len(labels) + ("service_name" not in labels) <= limit["max_label_names_per_series"]
        for name, value in labels.items():
            assert LOKI_LABEL_NAME.fullmatch(name), name
            assert not name.startswith("__"), f"{name}: reserved for Loki"
            assert len(name) <= limit["max_label_name_length"]
            assert value, f"{name}: Loki drops empty labels"
            assert len(value.encode()) <= limit["max_label_value_length"], name
    assert len(longest_model) == OLLAMA_MAX_MODEL_NAME
    # Rows cut model names to the SQL column size (app/analytics/rows.py); Loki gets the same.
    assert max(len(s["model"]) for s in streams) == 255
    assert max(map(len, known_labels())) <= limit["max_label_value_length"]


def test_loki_has_room_for_every_stream_the_proxy_can_make() -> None:
    models = DEFAULT_MAX_MODELS + 2  # the admitted ones, other, none
    status_classes = 6  # 1xx to 5xx, unknown
    streams = models * len(known_labels()) * status_classes
    # Each node of a fleet has streams of its own (label node): the central Loki (the same
    # config) takes FLEET_NODES of them. Over the limit Loki answers 429, which the proxy
    # retries: its Loki queue would stop.
    assert limits()["max_global_streams_per_user"] >= streams * FLEET_NODES


@pytest.mark.process
def test_loki_takes_the_largest_record(
    pushed: tuple[LokiBackend, list[dict[str, Any]]],
) -> None:
    backend, pushes = pushed
    cap = Settings().analytics_max_text_bytes
    worst = "\x01" * cap  # JSON writes it as \u0001: six bytes for one
    texts = {n: worst for n in ("prompt", "request_body", "response", "thinking", "error")}
    backend.write([row(**texts, tool_calls=('"' * cap,))])
    [push] = pushes
    [[_, line]] = push["streams"][0]["values"]
    line_bytes = len(line.encode("utf-8"))
    assert line_bytes > 5 * 6 * cap, "not the worst case"
    limit = limits()
    assert size(limit["max_line_size"]) >= line_bytes + UNCAPPED_ALLOWANCE
    assert limit.get("max_line_size_truncate", False) is False, "a cut line is no JSON"
    # A push bigger than a burst is refused (429) on every retry.
    assert size(limit["per_stream_rate_limit_burst"]) >= size(limit["max_line_size"])
    assert limit["ingestion_burst_size_mb"] * MiB >= size(limit["max_line_size"])


@pytest.mark.process
def test_loki_takes_a_full_batch_of_long_chats(
    pushed: tuple[LokiBackend, list[dict[str, Any]]],
) -> None:
    """500 records (ANALYTICS_BATCH_SIZE) of a chat with some history: a 4 KiB prompt, 16 KiB
    of request body, 8 KiB each of thinking and answer. Loki's default burst (6 MB) would
    refuse that push on every retry, which stops the proxy's Loki queue for good."""
    backend, pushes = pushed
    chat = {
        "prompt": "p" * 4096,
        "request_body": "b" * 16384,
        "thinking": "t" * 8192,
        "response": "r" * 8192,
    }
    batch = Settings().analytics_batch_size
    backend.write([row(**chat) for _ in range(batch)])
    lines = [line for push in pushes for s in push["streams"] for _, line in s["values"]]
    assert len(lines) == batch
    total = sum(len(line.encode("utf-8")) for line in lines)
    limit = limits()
    assert limit["ingestion_burst_size_mb"] * MiB >= total
    assert size(limit["per_stream_rate_limit_burst"]) >= total
    assert limit["ingestion_rate_mb"] * MiB >= size(limit["per_stream_rate_limit"])
    # The distributor passes each push on to the ingester over gRPC.
    grpc = load(LOKI_CONFIG)["server"]["grpc_server_max_recv_msg_size"]
    assert grpc >= limit["ingestion_burst_size_mb"] * MiB


def test_loki_accepts_records_as_late_as_the_proxy_sends_them() -> None:
    """A record carries its request's arrival time and reaches Loki after the request ended
    (up to 300 s, the top duration bucket, for the slow ones), the batch interval, and the
    retries while Loki is down (backoff up to 30 s each)."""
    writer = inspect.signature(AnalyticsWriter).parameters
    late = DURATION_BUCKETS[-1] + writer["flush_interval"].default + writer["max_backoff"].default
    limit = limits()
    assert limit["reject_old_samples"] is True
    max_age = duration(limit["reject_old_samples_max_age"])
    assert late < 3600 <= max_age <= duration(limit["retention_period"])
    # Out of order within a stream: up to max_chunk_age / 2 behind its newest entry.
    max_chunk_age = duration(load(LOKI_CONFIG).get("ingester", {}).get("max_chunk_age", "2h"))
    assert max_chunk_age / 2 >= late

"""A real Prometheus (the Debian binary) scrapes the proxy and PromQL sees the right totals."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.emulator import EmulatorServer
from tests.support import ProxyProcess, running_prometheus

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def proxy(emulator: EmulatorServer) -> Iterator[ProxyProcess]:
    with ProxyProcess(emulator.url, env={"PS_POLL_INTERVAL": "0.2"}) as process:
        yield process


@pytest.fixture(scope="module")
def prometheus(proxy: ProxyProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_prometheus(proxy.port, tmp_path_factory.mktemp("prometheus")) as url:
        yield url


def query(prometheus: str, promql: str) -> float | None:
    answer = httpx.get(prometheus + "/api/v1/query", params={"query": promql}).json()
    assert answer["status"] == "success", answer
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def eventually(prometheus: str, promql: str, expected: float, timeout: float = 40) -> float | None:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = query(prometheus, promql)
        if value == expected:
            return value
        time.sleep(0.5)
    return value


def test_promql_returns_the_token_total(
    emulator: EmulatorServer, proxy: ProxyProcess, prometheus: str
) -> None:
    expected = 0
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        for prompt in ("Why is the sky blue?", "Write a haiku", "Summarize this text"):
            body = {"model": "llama3.2", "prompt": prompt, "stream": False}
            answer = client.post("/api/generate", json=body).json()
            expected += answer["prompt_eval_count"] + answer["eval_count"]
    assert eventually(prometheus, "sum(ollama_tokens_total)", expected) == expected
    assert eventually(prometheus, 'up{job="ollama-metrics"}', 1) == 1
    assert eventually(prometheus, "ollama_upstream_up", 1) == 1
    # The /api/ps poller's view reached Prometheus too.
    assert eventually(prometheus, 'ollama_model_loaded{model="llama3.2:latest"}', 1) == 1


def test_exposition_passes_promtool(proxy: ProxyProcess) -> None:
    promtool = shutil.which("promtool")
    assert promtool
    text = httpx.get(proxy.url + "/metrics").text
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_openmetrics_scrape_carries_exemplars(proxy: ProxyProcess) -> None:
    httpx.post(
        proxy.url + "/api/chat",
        json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
    )
    text = httpx.get(
        proxy.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    ).text
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("ollama_request_duration_seconds_bucket")
    ]
    with_exemplar = [line for line in lines if ' # {request_id="' in line]
    assert with_exemplar, "no exemplar on the duration histogram"
    assert text.rstrip().endswith("# EOF")

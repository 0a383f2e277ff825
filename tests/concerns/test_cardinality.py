"""Whatever clients send, the number of series stays bounded."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from app.ollama.endpoints import known_labels
from tests.emulator import EmulatorServer
from tests.metrics_support import scrape
from tests.support import ProxyProcess

pytestmark = pytest.mark.process

MAX_MODELS = 100


@pytest.fixture(scope="module")
def proxy(emulator: EmulatorServer) -> Iterator[ProxyProcess]:
    env = {"PS_POLL_INTERVAL": "0", "METRICS_MAX_MODELS": str(MAX_MODELS)}
    with ProxyProcess(emulator.url, env=env) as process:
        yield process


def _send_all(url: str, requests: list[tuple[str, dict[str, object]]]) -> list[int]:
    def worker(chunk: list[tuple[str, dict[str, object]]]) -> list[int]:
        with httpx.Client(base_url=url, timeout=60) as client:
            return [client.post(path, json=body).status_code for path, body in chunk]

    chunks = [requests[i::8] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        return [status for statuses in pool.map(worker, chunks) for status in statuses]


def test_junk_models_prompts_and_paths_leave_series_bounded(proxy: ProxyProcess) -> None:
    junk_models = [
        ("/api/generate", {"model": f"junk-{i}-{secrets.token_hex(4)}", "prompt": "x"})
        for i in range(1000)
    ]
    prompts = [
        (
            "/api/generate",
            {
                "model": "llama3.2",
                "prompt": f"{secrets.token_hex(8)} {word} {i}",
                "stream": False,
                "options": {"num_predict": 1},
            },
        )
        for i, word in zip(
            range(10_000),
            ["summarize", "translate", "write code", "why?", "hello", "poem", "classify"] * 1500,
            strict=False,
        )
    ]
    statuses = _send_all(proxy.url, junk_models + prompts)
    assert statuses.count(404) == 1000
    assert statuses.count(200) == 10_000
    with httpx.Client(base_url=proxy.url) as client:
        for _ in range(50):
            client.get(f"/{secrets.token_hex(6)}/{secrets.token_hex(6)}")

    samples = scrape(proxy.url)
    labels: dict[str, set[str]] = {"model": set(), "category": set(), "endpoint": set()}
    for _, sample_labels in samples:
        for name, value in sample_labels:
            if name in labels:
                labels[name].add(value)
    assert len(labels["model"]) <= MAX_MODELS + 1
    # Names Ollama refused never take a slot: the model in use keeps its own label.
    assert {"llama3.2:latest", "other"} <= labels["model"] <= {"", "llama3.2:latest", "other"}
    assert len(labels["category"]) <= 50
    assert labels["endpoint"] <= set(known_labels())
    assert "other" in labels["endpoint"]
    # Every series of every family, together: bounded by the label limits, not by traffic.
    assert len(samples) < 20_000

"""Analytics as a user meets it: traffic through the real proxy, then /analytics/*."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import PostgresDatabases
from tests.emulator import EmulatorConfig, EmulatorServer
from tests.support import CHAT, SQL_STORES, ProxyProcess

pytestmark = pytest.mark.process

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def wait_for_records(
    proxy: ProxyProcess, count: int, headers: dict[str, str] = AUTH, **params: Any
) -> list[dict[str, Any]]:
    """Search until ``count`` records are there (the writer is asynchronous) or 40 s pass."""
    deadline = time.monotonic() + 40
    while True:
        answer = httpx.get(
            proxy.url + "/analytics/search", params={"limit": 1000, **params}, headers=headers
        )
        assert answer.status_code == 200, answer.text
        records = list(answer.json()["records"])
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


@pytest.fixture(scope="module", params=SQL_STORES)
def proxy(
    request: pytest.FixtureRequest, emulator: EmulatorServer, postgres: PostgresDatabases
) -> Iterator[ProxyProcess]:
    env = {"ANALYTICS_TOKEN": TOKEN, "PS_POLL_INTERVAL": "0", "ANALYTICS_BACKEND": request.param}
    if request.param == "postgresql":
        env["ANALYTICS_DATABASE_URL"] = postgres.create()
    with ProxyProcess(emulator.url, env=env) as process:
        yield process


def test_search_finds_the_prompt_and_the_record_tells_everything(
    emulator: EmulatorServer, proxy: ProxyProcess
) -> None:
    marker = f"zebra{time.monotonic_ns()}"
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": f"Tell me about {marker}"}],
    }
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        streamed = client.post("/api/chat", content=json.dumps(body))
        lines = [json.loads(line) for line in streamed.text.splitlines()]
    final = lines[-1]
    text = "".join(line["message"]["content"] for line in lines)
    records = wait_for_records(proxy, 1, prompt_search=marker)
    assert len(records) == 1
    found = records[0]
    assert found["prompt"] == f"Tell me about {marker}"
    assert found["model"] == "llama3.2:latest"
    assert found["endpoint"] == "/api/chat"
    assert found["status"] == 200
    assert found["streamed"] is True
    assert found["response"] == text
    assert found["prompt_tokens"] == final["prompt_eval_count"]
    assert found["completion_tokens"] == final["eval_count"]
    assert found["tokens_per_second"] == pytest.approx(
        final["eval_count"] / (final["eval_duration"] / 1e9)
    )
    assert found["duration_s"] > 0
    assert found["ttft_s"] is not None
    assert 0 < found["ttft_s"] <= found["duration_s"]
    assert found["ollama_load_s"] == pytest.approx(final["load_duration"] / 1e9)
    full = httpx.get(proxy.url + f"/analytics/records/{found['id']}", headers=AUTH).json()
    assert json.loads(full["request_body"]) == body
    assert full["timestamp"].endswith("Z")
    # The response's own words find it too, and filters narrow it.
    again = wait_for_records(
        proxy, 1, prompt_search=f"{marker} " + text.split()[0], model="llama3.2"
    )
    assert [r["id"] for r in again] == [found["id"]]
    assert wait_for_records(proxy, 0, prompt_search=marker, model="qwen3") == []


def test_stats_count_what_went_through(proxy: ProxyProcess) -> None:
    before = httpx.get(proxy.url + "/analytics/stats", params={"hours": 1}, headers=AUTH).json()
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        for i in range(5):
            client.post(
                "/api/generate", json={"model": "llama3.2", "prompt": f"p{i}", "stream": False}
            )
        client.post("/api/generate", json={"model": "missing", "prompt": "x"})
    deadline = time.monotonic() + 20
    while True:
        stats = httpx.get(proxy.url + "/analytics/stats", params={"hours": 1}, headers=AUTH).json()
        if stats["total_requests"] >= before["total_requests"] + 6 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert stats["total_requests"] == before["total_requests"] + 6
    assert stats["errors"] == before["errors"] + 1
    assert stats["latency"]["p95_s"] >= stats["latency"]["p50_s"] > 0
    assert stats["tokens"]["completion_total"] > before["tokens"]["completion_total"]
    assert any(m["name"] == "llama3.2:latest" for m in stats["models"])
    assert stats["hourly"]
    assert stats["top_clients"][0]["client"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": 5000}, "limit"),
        ({"limit": 0}, "limit"),
        ({"status": "abc"}, "status"),
        ({"start_time": "yesterday"}, "start_time"),
        ({"end_time": "2026-13-45"}, "end_time"),
        ({"min_duration": -1}, "min_duration"),
        ({"cursor": "'; DROP TABLE requests; --"}, "cursor"),
        ({"placement": "tpu"}, "placement"),
        ({"cold_cause": "bored"}, "cold_cause"),
        ({"cold_start": "perhaps"}, "cold_start"),
        ({"truncation": "middle"}, "truncation"),
    ],
)
def test_invalid_parameters_are_422_naming_the_parameter(
    proxy: ProxyProcess, params: dict[str, Any], name: str
) -> None:
    answer = httpx.get(proxy.url + "/analytics/search", params=params, headers=AUTH)
    assert answer.status_code == 422
    assert any(error["loc"][-1] == name for error in answer.json()["detail"])


def test_search_without_a_sql_store_says_what_enables_it(emulator: EmulatorServer) -> None:
    with ProxyProcess(emulator.url, env={"ANALYTICS_BACKEND": "jsonl"}) as proxy:
        httpx.post(
            proxy.url + "/api/generate", json={"model": "llama3.2", "prompt": "x", "stream": False}
        )
        answer = httpx.get(proxy.url + "/analytics/search")
        assert answer.status_code == 501
        assert "ANALYTICS_BACKEND" in answer.json()["detail"]
        assert "sqlite" in answer.json()["detail"]
        proxy.stop()
        files = list(proxy.workdir.glob("requests-*.jsonl.gz"))
        assert len(files) == 1


def test_sigterm_under_traffic_loses_no_accepted_record() -> None:
    with EmulatorServer(EmulatorConfig(token_delay=0.05)) as slow:
        proxy = ProxyProcess(slow.url, env={"PS_POLL_INTERVAL": "0"}).start()
        outcomes: dict[int, str] = {}
        lock = threading.Lock()

        def client(i: int) -> None:
            body = {"model": "llama3.2", "messages": CHAT, "options": {"num_predict": 30}}
            try:
                answer = httpx.post(proxy.url + "/api/chat", json=body, timeout=60)
                done = answer.status_code == 200 and '"done":true' in answer.text
                outcome = "completed" if done else f"cut:{answer.status_code}"
            except httpx.ConnectError:
                outcome = "refused"  # never accepted: the proxy had stopped listening
            except (httpx.ReadError, httpx.RemoteProtocolError):
                # Reset: left in the listen backlog when the listener closed, or cut. Which
                # one the emulator's log tells (below).
                outcome = "reset"
            except httpx.HTTPError as exc:
                outcome = f"error:{exc!r}"
            with lock:
                outcomes[i] = outcome

        threads = [threading.Thread(target=client, args=(i,)) for i in range(30)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while len([r for r in slow.requests() if r["path"] == "/api/chat"]) < 20:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert proxy.process is not None
        proxy.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join()
        assert proxy.process.wait(timeout=60) == -signal.SIGTERM
        forwarded = len([r for r in slow.requests() if r["path"] == "/api/chat"])
    with sqlite3.connect(proxy.workdir / "analytics.db") as db:
        stored = db.execute("SELECT count(*) FROM requests WHERE endpoint = '/api/chat'").fetchone()
    proxy.cleanup()
    completed = [i for i, outcome in outcomes.items() if outcome == "completed"]
    # Streams in flight at SIGTERM were allowed to finish; none was cut (a reset request
    # never reached Ollama: it was never accepted) ...
    assert set(outcomes.values()) <= {"completed", "refused", "reset"}, outcomes
    assert forwarded == len(completed) >= 20, outcomes
    # ... and every one of them was written before the process exited.
    assert stored[0] == len(completed)


@pytest.mark.postgres
def test_proxy_serves_on_while_the_store_is_down_and_catches_up(
    emulator: EmulatorServer, postgres: PostgresDatabases
) -> None:
    url = postgres.create()
    postgres.drop(url)
    env = {
        "ANALYTICS_BACKEND": "postgresql",
        "ANALYTICS_DATABASE_URL": url,
        "PS_POLL_INTERVAL": "0",
    }
    with ProxyProcess(emulator.url, env=env) as proxy, httpx.Client(base_url=proxy.url) as client:
        for i in range(50):
            answer = client.post(
                "/api/generate", json={"model": "llama3.2", "prompt": f"down {i}", "stream": False}
            )
            assert answer.status_code == 200
        metrics = client.get("/metrics").text
        assert 'ollama_analytics_queue_depth{backend="postgresql"} 50.0' in metrics
        postgres.recreate(url)
        deadline = time.monotonic() + 30
        while (
            'ollama_analytics_records_written_total{backend="postgresql"} 50.0'
            not in client.get("/metrics").text
        ):
            assert time.monotonic() < deadline, (
                "the records were not written after the store returned"
            )
            time.sleep(0.2)
        assert (
            len(
                client.get(
                    "/analytics/search", params={"prompt_search": "down", "limit": 100}
                ).json()["records"]
            )
            == 50
        )
        assert (
            'ollama_analytics_dropped_total{backend="postgresql",reason="queue_full"} 0.0'
            in client.get("/metrics").text
        )


def test_a_locked_store_does_not_hold_requests_back(emulator: EmulatorServer) -> None:
    with (
        ProxyProcess(emulator.url, env={"PS_POLL_INTERVAL": "0"}) as proxy,
        httpx.Client(base_url=proxy.url, timeout=10) as client,
    ):
        client.post("/api/generate", json={"model": "llama3.2", "prompt": "warm", "stream": False})
        wait_for_records(proxy, 1, headers={})
        # Another process holds the SQLite write lock: the writer's inserts wait on it.
        locker = sqlite3.connect(proxy.workdir / "analytics.db", timeout=1)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            for i in range(20):
                answer = client.post(
                    "/api/generate",
                    json={"model": "llama3.2", "prompt": f"locked {i}", "stream": False},
                )
                assert answer.status_code == 200
        finally:
            locker.rollback()
            locker.close()
        assert len(wait_for_records(proxy, 21, headers={})) == 21


def test_the_analytics_api_is_in_the_openapi_schema(proxy: ProxyProcess) -> None:
    schema = httpx.get(proxy.url + "/openapi.json").json()
    for path in (
        "/analytics/search",
        "/analytics/records/{record_id}",
        "/analytics/stats",
        "/test",
    ):
        assert path in schema["paths"]
    names = {p["name"] for p in schema["paths"]["/analytics/search"]["get"]["parameters"]}
    assert {"model", "prompt_search", "start_time", "limit", "cursor"} <= names

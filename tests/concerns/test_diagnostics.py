"""Why a request was slow, from realistic scenarios: an emulator that schedules as Ollama does
(one parallel slot), the real proxy, the records and the metrics it makes of them."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

from tests.emulator import EmulatorConfig, EmulatorServer
from tests.metrics_support import scrape, total
from tests.support import ProxyProcess

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def one_slot() -> Iterator[tuple[EmulatorServer, ProxyProcess]]:
    """OLLAMA_NUM_PARALLEL=1: a second request to a warm model waits for the slot."""
    with (
        EmulatorServer(EmulatorConfig(num_parallel=1)) as emulator,
        ProxyProcess(emulator.url, env={"PS_POLL_INTERVAL": "0"}) as proxy,
    ):
        yield emulator, proxy


def records_of(proxy: ProxyProcess, marker: str, expected: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        found = httpx.get(
            proxy.url + "/analytics/search", params={"prompt_search": marker, "limit": 100}
        ).json()["records"]
        if len(found) == expected:
            return [
                dict(httpx.get(f"{proxy.url}/analytics/records/{r['id']}").json()) for r in found
            ]
        assert time.monotonic() < deadline, f"{len(found)} of {expected} records"
        time.sleep(0.05)


def test_requests_queued_for_one_slot_wait_as_long_as_the_work_before_them(
    one_slot: tuple[EmulatorServer, ProxyProcess],
) -> None:
    _, proxy = one_slot
    marker = uuid.uuid4().hex
    # Warm the model first: the waits below are for the slot, not for a load.
    httpx.post(proxy.url + "/api/generate", json={"model": "llama3.2", "prompt": "hi"}, timeout=30)
    before = scrape(proxy.url)
    body = {"model": "llama3.2", "options": {"num_predict": 40}, "stream": False}
    threads = [
        threading.Thread(
            target=httpx.post,
            args=(proxy.url + "/api/generate",),
            kwargs={"json": {**body, "prompt": f"{marker} {i}"}, "timeout": 60},
        )
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = records_of(proxy, marker, 4)
    # In the order Ollama served them: by how long each waited.
    records.sort(key=lambda r: r["queue_wait_s"])
    waits = [r["queue_wait_s"] for r in records]
    work = [r["ollama_prompt_eval_s"] + r["ollama_eval_s"] + r["ollama_load_s"] for r in records]
    assert waits[0] < 0.05  # the first found the slot free
    # Each later one waited for the work of those served before it: the waits add up.
    for k in range(1, 4):
        assert waits[k] == pytest.approx(sum(work[:k]), rel=0.25, abs=0.05), (waits, work)
    for r in records:  # and the wait is in no phase: not in load_duration
        assert r["ollama_load_s"] < 0.05
    after = scrape(proxy.url)
    counted = total(after, "ollama_queue_wait_seconds_count") - total(
        before, "ollama_queue_wait_seconds_count"
    )
    summed = total(after, "ollama_queue_wait_seconds_sum") - total(
        before, "ollama_queue_wait_seconds_sum"
    )
    assert counted == 4
    assert summed == pytest.approx(sum(waits), rel=1e-6)


def test_the_client_app_is_named_for_the_real_clients(
    one_slot: tuple[EmulatorServer, ProxyProcess],
) -> None:
    _, proxy = one_slot
    marker = uuid.uuid4().hex
    with ollama.Client(host=proxy.url) as client:
        client.generate("llama3.2", f"{marker} python", options={"num_predict": 3})
    httpx.post(
        proxy.url + "/api/generate",
        json={"model": "llama3.2", "prompt": f"{marker} titled", "stream": False},
        headers={"X-Title": "Meeting Notes"},
    )
    records = {r["prompt"].split()[-1]: r for r in records_of(proxy, marker, 2)}
    assert records["python"]["client_app"] == "ollama-python"
    assert records["titled"]["client_app"] == "meeting-notes"
    samples = scrape(proxy.url)
    assert total(samples, "ollama_client_requests_total", client_app="ollama-python") >= 1
    assert total(samples, "ollama_client_requests_total", client_app="meeting-notes") == 1


def test_a_stream_that_stalls_shows_its_longest_pause(slow_emulator: EmulatorServer) -> None:
    marker = uuid.uuid4().hex
    with ProxyProcess(slow_emulator.url, env={"PS_POLL_INTERVAL": "0"}) as proxy:
        answer = httpx.post(
            proxy.url + "/api/generate",
            json={"model": "llama3.2", "prompt": marker, "options": {"num_predict": 6}},
            timeout=30,
        )
        assert answer.status_code == 200
        (record,) = records_of(proxy, marker, 1)
        samples = scrape(proxy.url)
    # The slow emulator paces tokens at TOKEN_DELAY (0.05 s): no pause is shorter than
    # most, none is as long as the whole stream.
    assert TOKEN_DELAY * 0.5 <= record["max_gap_s"] < record["duration_s"]
    assert total(samples, "ollama_stream_max_gap_seconds_count") == 1


TOKEN_DELAY = 0.05


def test_a_prompt_longer_than_its_context_is_named_as_cut(
    one_slot: tuple[EmulatorServer, ProxyProcess],
) -> None:
    _, proxy = one_slot
    marker = uuid.uuid4().hex
    cases = {
        "long": {"prompt": f"{marker} long " + "word " * 400, "options": {"num_ctx": 100}},
        "short": {"prompt": f"{marker} short", "options": {"num_ctx": 100}},
        "budget": {"prompt": f"{marker} budget", "options": {"num_predict": 3}},
    }
    before = scrape(proxy.url)
    for body in cases.values():
        answer = httpx.post(
            proxy.url + "/api/generate",
            json={"model": "llama3.2", "stream": False, **body},
            timeout=30,
        )
        assert answer.status_code == 200
    records = {r["prompt"].split()[1]: r for r in records_of(proxy, marker, 3)}
    # Ollama cut the long prompt to contextShiftPromptLimit(100, 5) = 53 tokens.
    assert (records["long"]["prompt_tokens"], records["long"]["truncation"]) == (53, "prompt")
    assert records["long"]["context_tokens"] == 100
    assert (records["short"]["truncation"], records["short"]["context_tokens"]) == (None, 100)
    assert records["budget"]["truncation"] == "output"
    after = scrape(proxy.url)
    for kind in ("prompt", "output"):
        grown = total(after, "ollama_truncations_total", kind=kind) - total(
            before, "ollama_truncations_total", kind=kind
        )
        assert grown == 1, kind

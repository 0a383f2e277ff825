"""Why a request was slow, from realistic scenarios: an emulator that schedules as Ollama does
(one parallel slot), the real proxy, the records and the metrics it makes of them."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.emulator import EmulatorConfig, EmulatorServer
from tests.metrics_support import scrape, total
from tests.support import LocalHttpServer, ProxyProcess

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


# -- cold starts, loads, reloads and placement: an emulator that schedules as Ollama does ----

POLL = "0.2"  # the proxy polls /api/ps five times a second here


@contextmanager
def scheduled(**config: Any) -> Iterator[tuple[EmulatorServer, ProxyProcess]]:
    """An emulator with the given scheduler knobs and a proxy that polls it quickly; yields
    once the proxy has read its first /api/ps answer (before that, memory is unknown)."""
    with (
        EmulatorServer(EmulatorConfig(**config)) as emulator,
        ProxyProcess(emulator.url, env={"PS_POLL_INTERVAL": POLL}) as proxy,
    ):
        deadline = time.monotonic() + 10
        while ("ollama_models_loaded", ()) not in scrape(proxy.url):
            assert time.monotonic() < deadline, "the proxy never read /api/ps"
            time.sleep(0.05)
        yield emulator, proxy


def generate(proxy: ProxyProcess, model: str, prompt: str, **body: Any) -> httpx.Response:
    answer = httpx.post(
        proxy.url + "/api/generate",
        json={"model": model, "prompt": prompt, "stream": False, **body},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return answer


def polled(proxy: ProxyProcess, condition: Callable[[dict[str, Any]], bool]) -> None:
    """Wait until the proxy's /api/ps view (its loaded-model series) satisfies ``condition``."""
    deadline = time.monotonic() + 10
    while True:
        loaded = {
            dict(labels)["model"]: value
            for (name, labels), value in scrape(proxy.url).items()
            if name == "ollama_model_vram_ratio"
        }
        if condition(loaded):
            return
        assert time.monotonic() < deadline, f"the proxy never saw it: {loaded}"
        time.sleep(0.05)


def test_requests_waiting_for_one_load_are_all_cold_starts_of_one_load() -> None:
    with scheduled(cold_load_delay=0.6, num_parallel=1) as (_, proxy):
        marker = uuid.uuid4().hex
        threads = [
            threading.Thread(target=generate, args=(proxy, "qwen3", f"{marker} {i}"))
            for i in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        records = records_of(proxy, marker, 3)
        # Each waited for the load it arrived during: Ollama counts that in load_duration.
        assert all(r["ollama_load_s"] >= 0.5 for r in records), records  # arrived later
        assert [r["cold_cause"] for r in records] == ["first_load"] * 3
        for r in records:
            assert r["diagnosis"].startswith("cold start: "), r["diagnosis"]
            assert "loading qwen3:latest, not in memory before" in r["diagnosis"]
        samples = scrape(proxy.url)
        assert total(samples, "ollama_cold_starts_total", model="qwen3:latest") == 3
        assert total(samples, "ollama_model_loads_total", model="qwen3:latest") == 1
        marker = uuid.uuid4().hex
        generate(proxy, "qwen3", marker)
        (warm,) = records_of(proxy, marker, 1)
        assert warm["cold_cause"] is None
        assert warm["ollama_load_s"] < 0.25
        assert total(scrape(proxy.url), "ollama_cold_starts_total", model="qwen3:latest") == 3


def test_three_models_with_room_for_two_thrash_and_each_reload_is_named() -> None:
    with scheduled(cold_load_delay=0.3, max_loaded_models=2) as (emulator, proxy):
        marker = uuid.uuid4().hex
        turns = ["llama3.2", "qwen3", "gemma:2b"] * 2
        for i, model in enumerate(turns):
            generate(proxy, model, f"{marker} {i}")
            loaded = [m["name"] for m in httpx.get(emulator.url + "/api/ps").json()["models"]]
            assert len(loaded) <= 2, loaded
        records = sorted(records_of(proxy, marker, len(turns)), key=lambda r: r["id"])
        causes = [r["cold_cause"] for r in records]
        assert causes[:3] == ["first_load"] * 3
        # Ollama evicts by keep-alive, then name: the second round finds what it needs gone.
        second = [r for r in records[3:] if r["cold_cause"] is not None]
        assert second, causes
        for r in second:
            assert r["cold_cause"] == "evicted", causes
            assert r["cold_detail"].startswith("by "), r
            assert "loaded again after it was evicted by " in r["diagnosis"]
        samples = scrape(proxy.url)
        reloads = total(samples, "ollama_model_reloads_total")
        assert reloads == len(second)
        assert total(samples, "ollama_model_loads_total") == 3 + len(second)
        assert total(samples, "ollama_model_unloads_total") >= 1 + len(second)


def test_a_new_num_ctx_forces_a_reload_and_says_so() -> None:
    with scheduled(cold_load_delay=0.4) as (emulator, proxy):
        marker = uuid.uuid4().hex
        generate(proxy, "llama3.2", f"{marker} first")
        polled(proxy, lambda loaded: "llama3.2:latest" in loaded)
        generate(proxy, "llama3.2", f"{marker} again")
        generate(proxy, "llama3.2", f"{marker} bigger", options={"num_ctx": 8192})
        records = {r["prompt"].split()[1]: r for r in records_of(proxy, marker, 3)}
        assert records["again"]["cold_cause"] is None
        assert records["again"]["context_tokens"] == 4096  # what /api/ps says it runs with
        bigger = records["bigger"]
        assert bigger["ollama_load_s"] >= 0.4
        assert (bigger["cold_cause"], bigger["cold_detail"]) == (
            "options",
            "num_ctx 8192 ≠ loaded 4096",
        )
        assert "reloaded because num_ctx 8192 ≠ loaded 4096" in bigger["diagnosis"]
        samples = scrape(proxy.url)
        assert total(samples, "ollama_model_reloads_total", model="llama3.2:latest") == 1
        ps = httpx.get(emulator.url + "/api/ps").json()["models"]
        assert [m["context_length"] for m in ps] == [8192]


def test_a_model_whose_keep_alive_ran_out_is_loaded_again_after_expiry() -> None:
    with scheduled(cold_load_delay=0.3) as (_, proxy):
        marker = uuid.uuid4().hex
        generate(proxy, "gemma:2b", f"{marker} first", keep_alive="1s")
        polled(proxy, lambda loaded: "gemma:2b" in loaded)
        polled(proxy, lambda loaded: "gemma:2b" not in loaded)  # 1 s after it went idle
        generate(proxy, "gemma:2b", f"{marker} later")
        records = {r["prompt"].split()[1]: r for r in records_of(proxy, marker, 2)}
        assert records["later"]["cold_cause"] == "expired"
        assert "after its keep-alive expired" in records["later"]["diagnosis"]
        samples = scrape(proxy.url)
        assert total(samples, "ollama_model_unloads_total", model="gemma:2b") == 1
        assert total(samples, "ollama_model_reloads_total", model="gemma:2b") == 1


def test_a_model_too_big_for_the_gpu_runs_partly_on_the_cpu_and_the_record_says_so() -> None:
    # qwen3 with a 4096 context takes about 5.7 GB; the GPU has 4 GB.
    with scheduled(vram_bytes=4_000_000_000) as (emulator, proxy):
        marker = uuid.uuid4().hex
        generate(proxy, "qwen3", f"{marker} load")
        polled(proxy, lambda loaded: "qwen3:latest" in loaded)
        generate(proxy, "qwen3", f"{marker} placed")
        records = {r["prompt"].split()[1]: r for r in records_of(proxy, marker, 2)}
        (ps,) = httpx.get(emulator.url + "/api/ps").json()["models"]
        share = ps["size_vram"] / ps["size"]
        assert 0 < share < 1
        placed = records["placed"]
        assert placed["placement"] == "mixed"
        assert placed["gpu_share"] == pytest.approx(share)
        assert f"model {round((1 - share) * 100)} % on CPU" in placed["diagnosis"]
        samples = scrape(proxy.url)
        assert total(samples, "ollama_model_vram_ratio", model="qwen3:latest") == pytest.approx(
            share
        )


def test_the_real_openai_and_ollama_clients_see_cold_starts_named() -> None:
    with scheduled(cold_load_delay=0.4) as (_, proxy):
        marker = uuid.uuid4().hex
        openai_client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused")
        openai_client.chat.completions.create(
            model="gemma:2b", messages=[{"role": "user", "content": f"{marker} openai"}]
        )
        with ollama.Client(host=proxy.url) as client:
            client.generate("qwen3", f"{marker} ollama")
        records = {r["prompt"].split()[-1]: r for r in records_of(proxy, marker, 2)}
        # /v1 reports no durations: cold because gemma was absent from /api/ps on arrival.
        assert records["openai"]["ollama_load_s"] is None
        assert records["openai"]["cold_cause"] == "first_load"
        assert records["openai"]["diagnosis"].startswith("cold start of gemma:2b")
        assert records["ollama"]["cold_cause"] == "first_load"
        assert records["ollama"]["client_app"] == "ollama-python"
        samples = scrape(proxy.url)
        assert total(samples, "ollama_cold_starts_total") == 2


# -- bad input: nothing crashes, no label grows, what is not known is said so ---------------


def test_bad_headers_and_options_are_answered_and_stay_unknown() -> None:
    with scheduled() as (emulator, proxy):
        marker = uuid.uuid4().hex
        agents = [b"x" * 10_000, bytes(range(128, 256)) * 4, b"\xff\xfe binary\x80"]
        for i, agent in enumerate(agents):
            answer = httpx.post(
                proxy.url + "/api/generate",
                json={"model": "llama3.2", "prompt": f"{marker} agent{i}", "stream": False},
                headers={"User-Agent": agent},
                timeout=30,
            )
            assert answer.status_code == 200
        sent = {}
        for i, num_ctx in enumerate([-5, 10**12, "big", 0.5]):
            body = {"prompt": f"{marker} ctx{i}", "options": {"num_ctx": num_ctx}}
            direct = httpx.post(
                emulator.url + "/api/generate",
                json={"model": "llama3.2", "stream": False, **body},
                timeout=30,
            )
            proxied = httpx.post(
                proxy.url + "/api/generate",
                json={"model": "llama3.2", "stream": False, **body},
                timeout=30,
            )
            assert proxied.status_code == direct.status_code
            sent[f"ctx{i}"] = proxied.status_code
        records = {
            r["prompt"].split()[1]: r for r in records_of(proxy, marker, len(agents) + len(sent))
        }
        apps = {records[f"agent{i}"]["client_app"] for i in range(len(agents))}
        assert all(len(app) <= 32 for app in apps)
        samples = scrape(proxy.url)
        labels = {
            dict(k)["client_app"] for (n, k) in samples if n == "ollama_client_requests_total"
        }
        assert len(labels) <= 22  # 20 names, other, unknown
        for name, status in sent.items():
            record = records[name]
            # Never the junk the request sent: unknown, or what /api/ps says the model was
            # loaded with (a huge num_ctx is capped at the trained 131072: Ollama reloads).
            context = record["context_tokens"]
            assert context is None or 4 <= context <= 131_072, record
            if status != 200:
                assert (record["cold_cause"], record["placement"]) == (None, None), record


def test_an_api_ps_that_answers_junk_leaves_the_causes_unknown() -> None:
    """Ollama behind something that breaks /api/ps: cold starts are still seen from
    load_duration, but no cause, placement or context is claimed."""
    done = {
        "model": "llama3.2",
        "created_at": "2026-12-03T10:00:00Z",
        "response": "hi",
        "done": True,
        "done_reason": "stop",
        "total_duration": 3_710_000_000,
        "load_duration": 3_500_000_000,
        "prompt_eval_count": 3,
        "prompt_eval_duration": 100_000_000,
        "eval_count": 1,
        "eval_duration": 100_000_000,
    }

    def respond(
        method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str | None, bytes]:
        if path == "/api/ps":
            return 200, "application/json", b'{"models": "junk"}'
        return 200, "application/json; charset=utf-8", json.dumps(done).encode()

    with (
        LocalHttpServer(respond) as upstream,
        ProxyProcess(upstream.url, env={"PS_POLL_INTERVAL": POLL}) as proxy,
    ):
        marker = uuid.uuid4().hex
        generate(proxy, "llama3.2", marker)
        (record,) = records_of(proxy, marker, 1)
        assert record["cold_cause"] == "unknown"
        assert (record["placement"], record["context_tokens"]) == (None, None)
        assert record["diagnosis"] == "cold start: 3.5 s loading llama3.2:latest"
        samples = scrape(proxy.url)
        assert total(samples, "ollama_cold_starts_total") == 1
        assert ("ollama_models_loaded", ()) not in samples  # unknown, never a false 0

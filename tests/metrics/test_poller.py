"""The /api/ps poller against the real emulator and tiny scripted HTTP servers, no mocks."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ClassVar

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from app.metrics.poller import (
    MAX_MODELS,
    POKE_GAP,
    STALE_AFTER_INTERVALS,
    LoadedModelsCollector,
    ModelPoller,
)
from app.ollama.residency import Residency
from app.proxy.upstream import Upstream
from tests.emulator import EmulatorServer
from tests.support import LocalHttpServer, free_port

LLAMA = "llama3.2:latest"
EMBED = "nomic-embed-text:latest"


@pytest.fixture(scope="module")
def upstream() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def emulator(upstream: EmulatorServer) -> EmulatorServer:
    upstream.start()  # in case a test stopped it and failed before starting it again
    upstream.reset(catalog=True)
    return upstream


class ScriptedServer(LocalHttpServer):
    """A local HTTP server answering every GET with whatever the test last set."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b'{"models": []}'
        self.delay = 0.0
        self.asked: list[tuple[str, str, dict[str, str]]] = []
        super().__init__(self.respond)

    def respond(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str | None, bytes]:
        self.asked.append((method, path, headers))
        time.sleep(self.delay)
        return self.status, "application/json", self.body

    def answer(self, document: object, *, status: int = 200) -> None:
        self.status, self.body = status, json.dumps(document).encode()


def entry(name: str, size: int, vram: int) -> dict[str, Any]:
    return {"name": name, "model": name, "size": size, "size_vram": vram}


class Rig:
    """A fresh registry, collector and poller, with every on_result call recorded."""

    made: ClassVar[list[Rig]] = []  # for ``run`` to stop

    def __init__(self, url: str, interval: float) -> None:
        Rig.made.append(self)
        self.registry = CollectorRegistry()
        self.collector = LoadedModelsCollector(registry=self.registry)
        self.results: list[bool] = []
        # What a scrape would have seen of ollama_models_loaded as each result came in.
        self.seen: list[tuple[bool, float | None]] = []
        self.residency = Residency()
        self.poller = ModelPoller(
            ollama=Upstream(url, connect_timeout=5, max_connections=1),
            interval=interval,
            collector=self.collector,
            on_result=self.record,
            on_models=self.residency.observe,
        )

    def record(self, ok: bool) -> None:
        self.results.append(ok)
        self.seen.append((ok, self.value("ollama_models_loaded")))

    def value(self, name: str, model: str | None = None) -> float | None:
        labels = {} if model is None else {"model": model}
        return self.registry.get_sample_value(name, labels)

    def samples(self) -> list[str]:
        return [sample.name for family in self.registry.collect() for sample in family.samples]


def run(test: Callable[[], Awaitable[None]]) -> None:
    """Run ``test``, then stop every poller it made (each keeps its connection to Ollama)."""

    async def main() -> None:
        try:
            await test()
        finally:
            while Rig.made:
                await Rig.made.pop().poller.stop()

    asyncio.run(main())


async def wait_for(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def load(url: str, model: str) -> None:
    if model == EMBED:
        httpx.post(url + "/api/embed", json={"model": model, "input": "x"}).raise_for_status()
    else:
        body = {"model": model, "prompt": "hi", "stream": False}
        httpx.post(url + "/api/generate", json=body).raise_for_status()


def unload(url: str, model: str) -> None:
    httpx.post(url + "/api/generate", json={"model": model, "keep_alive": 0}).raise_for_status()


def test_nothing_is_exported_before_the_first_good_poll() -> None:
    async def scenario() -> None:
        rig = Rig(f"http://127.0.0.1:{free_port()}", interval=0.1)
        assert rig.samples() == []
        assert not await rig.poller.poll_once()  # nothing listens there
        assert rig.results == [False]
        assert rig.samples() == []
        assert rig.collector.current() is None
        exposition = generate_latest(rig.registry).decode()
        assert "ollama_model_loaded" in exposition  # described, but without samples
        assert "ollama_models_loaded" not in exposition  # absent, not a false 0

    run(scenario)


@pytest.mark.process
def test_loaded_models_carry_the_sizes_api_ps_reported(emulator: EmulatorServer) -> None:
    load(emulator.url, "llama3.2")
    load(emulator.url, EMBED)
    direct = httpx.get(emulator.url + "/api/ps").json()["models"]
    assert {m["model"] for m in direct} == {LLAMA, EMBED}

    async def scenario() -> None:
        rig = Rig(emulator.url + "/", interval=1.0)
        assert await rig.poller.poll_once()
        assert rig.results == [True]
        assert rig.value("ollama_models_loaded") == 2
        for model in direct:
            assert rig.value("ollama_model_loaded", model["model"]) == 1
            assert rig.value("ollama_model_size_bytes", model["model"]) == model["size"]
            assert rig.value("ollama_model_vram_bytes", model["model"]) == model["size_vram"]

    run(scenario)


@pytest.mark.process
def test_an_unloaded_model_disappears_on_the_next_poll(emulator: EmulatorServer) -> None:
    load(emulator.url, "llama3.2")
    load(emulator.url, EMBED)

    async def scenario() -> None:
        rig = Rig(emulator.url, interval=0.05)
        await rig.poller.start()
        try:
            await wait_for(lambda: rig.value("ollama_models_loaded") == 2)
            await asyncio.to_thread(unload, emulator.url, "llama3.2")
            await wait_for(lambda: rig.value("ollama_models_loaded") == 1)
            assert rig.value("ollama_model_loaded", LLAMA) is None
            assert rig.value("ollama_model_size_bytes", LLAMA) is None
            assert rig.value("ollama_model_vram_bytes", LLAMA) is None
            assert rig.value("ollama_model_loaded", EMBED) == 1
        finally:
            await rig.poller.stop()

    run(scenario)


@pytest.mark.process
def test_upstream_outage_keeps_then_clears_the_snapshot_and_recovers(
    emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    interval = 0.2
    load(emulator.url, "llama3.2")

    async def scenario() -> None:
        rig = Rig(emulator.url, interval=interval)
        seen = rig.seen
        await rig.poller.start()
        try:
            await wait_for(lambda: rig.value("ollama_model_loaded", LLAMA) == 1)
            await asyncio.to_thread(emulator.stop)
            await wait_for(lambda: any(not ok for ok, _ in seen))
            first_failure = next(i for i, (ok, _) in enumerate(seen) if not ok)
            assert seen[first_failure] == (False, 1)  # a blip does not drop the models

            await wait_for(lambda: rig.value("ollama_models_loaded") is None, within=50 * interval)
            assert rig.samples() == []
            # The snapshot expires by time (three intervals after the last success, checked at
            # scrape time), not by a count of failed polls: a loaded machine polls less often.
            assert all(not ok for ok, _ in seen[first_failure:])

            await asyncio.to_thread(emulator.start)
            await asyncio.to_thread(load, emulator.url, EMBED)
            await wait_for(lambda: rig.value("ollama_model_loaded", EMBED) == 1)
            assert seen[-1][0], seen  # recovered
            assert rig.value("ollama_model_loaded", LLAMA) is None  # the restart unloaded it
        finally:
            await rig.poller.stop()

    with caplog.at_level(logging.INFO, logger="app.metrics.poller"):
        run(scenario)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    warnings = [m for level, m in messages if level == logging.WARNING]
    infos = [m for level, m in messages if level == logging.INFO]
    assert len(warnings) == 1, messages  # one line per outage, not one per failed poll
    assert "Cannot read loaded models" in warnings[0]
    assert len(infos) == 1
    assert "readable again" in infos[0]


@pytest.mark.process
def test_polls_go_under_the_base_path_with_the_urls_credentials_as_a_header(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An Ollama behind an auth proxy: ``http://user:s3cret@host/ollama``. Each poll asks
    ``/ollama/api/ps`` on one kept-alive connection with Basic credentials, and no log line
    holds them."""

    async def scenario() -> None:
        with ScriptedServer() as server:
            base = server.url.replace("http://", "http://user:s3cret@") + "/ollama/"
            rig = Rig(base, interval=1.0)
            server.answer({"models": [entry("m", 10, 10)]})
            assert await rig.poller.poll_once()
            assert await rig.poller.poll_once()
            server.status = 503
            assert not await rig.poller.poll_once()
            assert [(method, path) for method, path, _ in server.asked] == [
                ("GET", "/ollama/api/ps")
            ] * 3
            for _, _, headers in server.asked:
                assert headers["authorization"] == "Basic dXNlcjpzM2NyZXQ="  # user:s3cret
                assert headers["host"] == server.url.removeprefix("http://")
            assert rig.results == [True, True, False]

    with caplog.at_level(logging.INFO, logger="app.metrics.poller"):
        run(scenario)
    assert "HTTP 503" in caplog.text
    assert "s3cret" not in caplog.text
    assert "user:" not in caplog.text


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"this is not JSON"),
        (200, b'{"models": null}'),
        (200, b"{}"),
        (200, b"[]"),
        (200, b'{"models": [42]}'),
        (200, b'{"models": [{"size": 1, "size_vram": 1}]}'),
        (200, b'{"models": [{"model": "m", "size": -1}]}'),
        (200, b'{"models": [{"model": "m", "size": "big"}]}'),
        (200, b'{"models": [{"model": "m", "size_vram": true}]}'),
        (200, b"[" * 100_000),
        (500, b'{"error": "boom"}'),
        (404, b"404 page not found"),
    ],
)
def test_a_bad_answer_is_a_failed_poll(status: int, body: bytes) -> None:
    async def scenario() -> None:
        with ScriptedServer() as server:
            rig = Rig(server.url, interval=1.0)
            server.answer({"models": [entry("kept", 10, 5)]})
            assert await rig.poller.poll_once()
            server.status, server.body = status, body
            assert not await rig.poller.poll_once()
            assert rig.results == [True, False]
            assert rig.value("ollama_model_size_bytes", "kept") == 10  # still within 3 intervals

    run(scenario)


@pytest.mark.process
def test_garbage_does_not_end_the_loop_and_a_good_answer_heals_it() -> None:
    async def scenario() -> None:
        with ScriptedServer() as server:
            server.body = b"<html>not ollama</html>"
            rig = Rig(server.url, interval=0.05)
            await rig.poller.start()
            try:
                await wait_for(lambda: rig.results.count(False) >= 3)
                server.body = b'{"models": null}'
                count = len(rig.results)
                await wait_for(lambda: len(rig.results) >= count + 3)
                assert rig.poller.running
                assert rig.samples() == []
                server.answer({"models": [{"name": "named-only", "model": "", "size": 7}]})
                await wait_for(lambda: rig.value("ollama_models_loaded") == 1)
                assert rig.value("ollama_model_loaded", "named-only") == 1  # name as fallback
                assert rig.value("ollama_model_size_bytes", "named-only") == 7
                assert rig.value("ollama_model_vram_bytes", "named-only") is None  # not sent
            finally:
                await rig.poller.stop()

    run(scenario)


@pytest.mark.process
def test_a_hanging_upstream_times_out_within_the_interval() -> None:
    async def scenario() -> None:
        with ScriptedServer() as server:
            server.delay = 1.0
            rig = Rig(server.url, interval=0.1)
            started = time.monotonic()
            assert not await rig.poller.poll_once()
            assert time.monotonic() - started < 0.5

    run(scenario)


@pytest.mark.process
def test_stop_ends_the_named_task() -> None:
    async def scenario() -> None:
        with ScriptedServer() as server:
            rig = Rig(server.url, interval=0.05)
            await rig.poller.start()
            await rig.poller.start()  # idempotent: still one task
            pollers = [t for t in asyncio.all_tasks() if t.get_name().startswith("ollama-ps")]
            assert len(pollers) == 1
            await wait_for(lambda: rig.results.count(True) >= 2)
            await rig.poller.stop()
            assert pollers[0].done()
            assert not rig.poller.running
            assert asyncio.all_tasks() == {asyncio.current_task()}
            count = len(rig.results)
            await asyncio.sleep(0.15)
            assert len(rig.results) == count  # no more polls
            await rig.poller.stop()  # stopping twice is harmless

    run(scenario)


@pytest.mark.process
def test_per_model_series_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    many = {"models": [entry(f"model-{i:03d}", 1000 + i, i) for i in range(150)]}

    async def scenario() -> None:
        with ScriptedServer() as server:
            server.answer(many)
            rig = Rig(server.url, interval=1.0)
            assert await rig.poller.poll_once()
            assert await rig.poller.poll_once()
            assert rig.samples().count("ollama_model_loaded") == MAX_MODELS
            assert rig.samples().count("ollama_model_size_bytes") == MAX_MODELS
            assert rig.value("ollama_model_size_bytes", "model-099") == 1099
            assert rig.value("ollama_model_loaded", "model-100") is None
            assert rig.value("ollama_models_loaded") == 150  # the count is not truncated

    with caplog.at_level(logging.WARNING, logger="app.metrics.poller"):
        run(scenario)
    assert len(caplog.records) == 1  # logged once, not once per poll
    assert "150 loaded models" in caplog.records[0].getMessage()


def test_the_collector_clashes_with_nothing_and_rejects_a_second_copy() -> None:
    registry = CollectorRegistry()
    LoadedModelsCollector(registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        LoadedModelsCollector(registry=registry)


def test_a_bad_interval_or_url_fails_at_construction() -> None:
    async def scenario() -> None:
        collector = LoadedModelsCollector(registry=CollectorRegistry())
        with pytest.raises(ValueError, match="interval"):
            ModelPoller(
                ollama=Upstream("http://127.0.0.1:1", connect_timeout=1, max_connections=1),
                interval=0,
                collector=collector,
            )

    run(scenario)


@pytest.mark.process
def test_the_vram_ratio_says_where_each_model_runs() -> None:
    async def scenario() -> None:
        with ScriptedServer() as server:
            rig = Rig(server.url, interval=1.0)
            server.answer(
                {
                    "models": [
                        entry("gpu", 1000, 1000),
                        entry("mixed", 1000, 620),
                        entry("cpu", 1000, 0),
                        entry("empty", 0, 0),  # no size: no ratio, not a division by zero
                    ]
                }
            )
            assert await rig.poller.poll_once()
            assert rig.value("ollama_model_vram_ratio", "gpu") == 1.0
            assert rig.value("ollama_model_vram_ratio", "mixed") == 0.62
            assert rig.value("ollama_model_vram_ratio", "cpu") == 0.0
            assert rig.value("ollama_model_vram_ratio", "empty") is None

    run(scenario)


@pytest.mark.process
@pytest.mark.parametrize(("sent", "read"), [(4096, 4096), ("4096", None), (-1, None), (None, None)])
def test_the_loaded_context_is_read_and_junk_is_unknown(sent: object, read: int | None) -> None:
    async def scenario() -> None:
        with ScriptedServer() as server:
            rig = Rig(server.url, interval=1.0)
            server.answer({"models": [{**entry("m", 10, 10), "context_length": sent}]})
            assert await rig.poller.poll_once()  # junk in it does not fail the poll
            assert rig.residency.memory("m").context_length == read
            assert rig.residency.memory("not-loaded").context_length is None

    run(scenario)


@pytest.mark.process
def test_a_poke_polls_at_once_and_the_schedule_holds() -> None:
    async def scenario() -> None:
        with ScriptedServer() as server:
            rig = Rig(server.url, interval=30.0)
            await rig.poller.start()
            await wait_for(lambda: len(rig.results) == 1)
            rig.poller.poke()  # a cold start was seen: look again soon, not in 30 s
            await wait_for(lambda: len(rig.results) == 2, within=POKE_GAP + 2.0)
            second = time.monotonic()
            for _ in range(50):  # a thrashing model pokes on every request
                rig.poller.poke()
                await asyncio.sleep(0.01)
            await wait_for(lambda: len(rig.results) == 3, within=POKE_GAP + 2.0)
            # One poll for all those pokes, and not before POKE_GAP after the last one.
            assert time.monotonic() - second >= POKE_GAP * 0.9
            await asyncio.sleep(0.3)
            assert len(rig.results) == 3
            await rig.poller.stop()

    run(scenario)


@pytest.mark.process
def test_the_residency_follows_the_answers_and_forgets_when_they_stop() -> None:
    async def scenario() -> None:
        with ScriptedServer() as server:
            rig = Rig(server.url, interval=0.1)
            server.answer({"models": [{**entry("m", 1000, 380), "context_length": 8192}]})
            assert await rig.poller.poll_once()
            assert rig.residency.memory("m")[:2] == ("mixed", 0.38)
            assert rig.residency.memory("m").context_length == 8192
            server.answer({"models": "junk"})  # a junk answer is a failed poll: not fed
            assert not await rig.poller.poll_once()
            assert rig.residency.memory("m").context_length == 8192
            await asyncio.sleep(STALE_AFTER_INTERVALS * 0.1 + 0.05)
            assert not rig.residency.known()  # unknown, not "not loaded"
            assert rig.residency.memory("m").context_length is None

    run(scenario)

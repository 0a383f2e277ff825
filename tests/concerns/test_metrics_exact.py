"""Every number in /metrics equals what Ollama (the emulator) reported, exactly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.emulator import EmulatorServer
from tests.metrics_support import scrape, total
from tests.support import CHAT, TOOLS, ProxyProcess

pytestmark = pytest.mark.process

# (path, body): native, OpenAI and Anthropic; streamed and not; with and without usage asked.
MIX: list[tuple[str, dict[str, Any]]] = [
    ("/api/generate", {"model": "llama3.2", "prompt": "Why is the sky blue?"}),
    (
        "/api/generate",
        {
            "model": "llama3.2",
            "prompt": "Tell a joke",
            "stream": False,
            "options": {"num_predict": 5},
        },
    ),
    ("/api/chat", {"model": "qwen3", "messages": CHAT, "think": True}),
    ("/api/chat", {"model": "llama3.2", "messages": CHAT, "stream": False}),
    ("/api/chat", {"model": "llama3.2", "messages": CHAT, "tools": TOOLS}),
    ("/api/embed", {"model": "nomic-embed-text", "input": ["first text", "second one"]}),
    ("/api/embeddings", {"model": "nomic-embed-text", "prompt": "legacy"}),
    ("/api/generate", {"model": "llama3.2"}),  # load: no tokens
    ("/v1/chat/completions", {"model": "llama3.2", "messages": CHAT, "stream": True}),
    (
        "/v1/chat/completions",
        {
            "model": "qwen3",
            "messages": CHAT,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    ("/v1/chat/completions", {"model": "llama3.2", "messages": CHAT, "max_tokens": 9}),
    ("/v1/completions", {"model": "llama3.2", "prompt": "Once upon", "stream": True}),
    ("/v1/completions", {"model": "llama3.2", "prompt": "Once upon", "max_tokens": 3}),
    ("/v1/embeddings", {"model": "nomic-embed-text", "input": ["a b c", "d"]}),
    ("/v1/messages", {"model": "llama3.2", "max_tokens": 7, "messages": CHAT, "stream": True}),
    ("/v1/messages", {"model": "qwen3", "max_tokens": 11, "messages": CHAT}),
    ("/v1/responses", {"model": "llama3.2", "input": "Hi", "stream": True}),
    ("/v1/responses", {"model": "qwen3", "instructions": "Be brief.", "input": CHAT}),
]
NATIVE_GENERATION = ("/api/generate", "/api/chat")


@dataclass
class Reported:
    prompt: int = 0
    completion: int = 0
    load_ns: int = 0
    prompt_eval_ns: int = 0
    eval_ns: int = 0


def reported(emulator: EmulatorServer, path: str, body: dict[str, Any]) -> Reported:
    """What Ollama reports for this request, asked directly and without streaming."""
    direct = {**body, "stream": False}
    direct.pop("stream_options", None)
    if path in ("/api/embed", "/api/embeddings", "/v1/embeddings"):
        direct.pop("stream")
    answer = httpx.post(emulator.url + path, json=direct, timeout=30).json()
    if path in NATIVE_GENERATION:
        return Reported(
            answer.get("prompt_eval_count", 0),
            answer.get("eval_count", 0),
            answer.get("load_duration", 0),
            answer.get("prompt_eval_duration", 0),
            answer.get("eval_duration", 0),
        )
    if path == "/api/embed":
        return Reported(answer["prompt_eval_count"], 0, answer["load_duration"])
    if path == "/api/embeddings":
        return Reported()
    if path in ("/v1/messages", "/v1/responses"):
        return Reported(answer["usage"]["input_tokens"], answer["usage"]["output_tokens"])
    usage = answer["usage"]
    return Reported(usage["prompt_tokens"], usage.get("completion_tokens", 0))


@pytest.fixture(scope="module")
def proxy(emulator: EmulatorServer) -> Iterator[ProxyProcess]:
    with ProxyProcess(emulator.url, env={"PS_POLL_INTERVAL": "0"}) as process:
        yield process


def test_every_number_matches_what_ollama_reported(
    emulator: EmulatorServer, proxy: ProxyProcess
) -> None:
    expected = [reported(emulator, path, body) for path, body in MIX]
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        for path, body in MIX:
            answer = client.post(path, content=json.dumps(body))
            assert answer.status_code == 200, (path, answer.text)
        missing = client.post("/api/generate", json={"model": "nope", "prompt": "x"})
        assert missing.status_code == 404
        broken = client.post(
            "/api/generate",
            json={"model": "llama3.2", "prompt": "x", "options": {"emulator_fail_after": 2}},
        )
        assert broken.status_code == 200
        assert "error" in broken.text.splitlines()[-1]
        # Ollama's own answer to a pull of what does not exist: the client's error.
        refused = client.post("/api/pull", json={"model": "no-such-model"})
        assert refused.status_code == 200
        assert "error" in refused.text.splitlines()[-1]
    samples = scrape(proxy.url)
    prompt_tokens = sum(r.prompt for r in expected)
    completion_tokens = sum(r.completion for r in expected)
    assert prompt_tokens > 0
    assert completion_tokens > 0
    assert total(samples, "ollama_tokens_total", type="prompt") == prompt_tokens
    assert total(samples, "ollama_tokens_total", type="completion") == completion_tokens
    assert (
        total(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type="input") == prompt_tokens
    )
    assert (
        total(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type="output")
        == completion_tokens
    )
    assert total(samples, "gen_ai_client_token_usage_count", gen_ai_token_type="input") == sum(
        1 for r in expected if r.prompt
    )

    # Ollama's own durations, exactly (nanoseconds → seconds).
    native = [r for r in expected if r.load_ns]
    assert total(samples, "ollama_load_duration_seconds_count") == len(native)
    assert total(samples, "ollama_load_duration_seconds_sum") == pytest.approx(
        sum(r.load_ns for r in native) / 1e9, rel=1e-12
    )
    evals = [r for r in expected if r.eval_ns]
    assert total(samples, "ollama_eval_duration_seconds_count") == len(evals)
    assert total(samples, "ollama_eval_duration_seconds_sum") == pytest.approx(
        sum(r.eval_ns for r in evals) / 1e9, rel=1e-12
    )
    assert total(samples, "ollama_prompt_eval_duration_seconds_sum") == pytest.approx(
        sum(r.prompt_eval_ns for r in expected) / 1e9, rel=1e-12
    )
    assert total(samples, "ollama_tokens_per_second_sum", phase="generation") == pytest.approx(
        sum(r.completion / (r.eval_ns / 1e9) for r in evals), rel=1e-12
    )
    assert total(samples, "ollama_tokens_per_second_count", phase="prompt") == sum(
        1 for r in expected if r.prompt_eval_ns and r.prompt
    )

    # Requests by status and endpoint; the stream that broke is an upstream error.
    assert total(samples, "ollama_requests_total") == len(MIX) + 3
    assert total(samples, "ollama_requests_total", status="404", endpoint="/api/generate") == 1
    assert total(samples, "ollama_requests_total", endpoint="/v1/chat/completions") == 3
    assert total(samples, "ollama_upstream_errors_total", reason="midstream") == 1
    assert total(samples, "ollama_requests_in_flight") == 0
    streamed_with_tokens = sum(
        1
        for path, body in MIX
        if body.get("stream", path in NATIVE_GENERATION)
        and body.get("messages", body.get("prompt", body.get("input")))
    )
    assert total(samples, "ollama_time_to_first_token_seconds_count") == streamed_with_tokens + 1
    assert total(samples, "ollama_request_duration_seconds_count") == len(MIX) + 3
    assert (
        total(
            samples,
            "gen_ai_client_operation_duration_seconds_count",
            gen_ai_operation_name="embeddings",
        )
        == 3
    )


def test_numbers_match_what_the_client_libraries_received(emulator: EmulatorServer) -> None:
    with (
        ProxyProcess(emulator.url, env={"PS_POLL_INTERVAL": "0"}) as proxy,
        ollama.Client(host=proxy.url) as native,
        openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused") as compatible,
    ):
        chat = native.chat(model="llama3.2", messages=CHAT)
        final = list(native.generate(model="llama3.2", prompt="Write a poem", stream=True))[-1]
        embedded = native.embed(model="nomic-embed-text", input=["a", "b"])
        completion = compatible.chat.completions.create(model="llama3.2", messages=CHAT)
        streamed = list(
            compatible.chat.completions.create(
                model="qwen3", messages=CHAT, stream=True, stream_options={"include_usage": True}
            )
        )
        samples = scrape(proxy.url)
    usage = streamed[-1].usage
    assert usage is not None
    assert completion.usage is not None
    llama = {"model": "llama3.2:latest"}
    assert total(samples, "ollama_tokens_total", type="prompt", **llama) == (
        chat.prompt_eval_count + final.prompt_eval_count + completion.usage.prompt_tokens
    )
    assert total(samples, "ollama_tokens_total", type="completion", **llama) == (
        chat.eval_count + final.eval_count + completion.usage.completion_tokens
    )
    assert total(samples, "ollama_tokens_total", model="qwen3:latest", type="completion") == (
        usage.completion_tokens
    )
    assert total(samples, "ollama_tokens_total", model="nomic-embed-text:latest") == (
        embedded.prompt_eval_count
    )
    assert total(samples, "ollama_eval_duration_seconds_sum", **llama) == pytest.approx(
        (chat.eval_duration + final.eval_duration) / 1e9, rel=1e-12
    )
    assert total(samples, "ollama_requests_total", category="question") == 3
    assert total(samples, "ollama_requests_total", category="creative") == 1

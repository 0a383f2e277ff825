"""The stored record of each API shape says what the client saw: the real ``openai`` and
``anthropic`` clients through the proxy, the record read back from ``/analytics``."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.emulator import EmulatorServer
from tests.metrics_support import scrape, total
from tests.support import TOOLS, ProxyProcess

pytestmark = pytest.mark.process

WEATHER = {
    "name": "get_weather",
    "description": "weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
RESPONSES_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def proxy(emulator: EmulatorServer) -> Iterator[ProxyProcess]:
    with ProxyProcess(emulator.url, env={"PS_POLL_INTERVAL": "0"}) as process:
        yield process


def words() -> str:
    """A prompt no other request of the run sends, to find its record by."""
    return f"Why is the sky blue, {uuid.uuid4().hex}?"


def record_where(
    proxy: ProxyProcess, match: Callable[[dict[str, Any]], bool], **params: str
) -> dict[str, Any]:
    """The one stored record that ``match`` accepts (the writer is asynchronous)."""
    deadline = time.monotonic() + 30
    while True:
        found = httpx.get(
            proxy.url + "/analytics/search", params={"limit": "1000", **params}
        ).json()
        ids = [r["id"] for r in found["records"] if match(r)]
        if ids:
            assert len(ids) == 1, ids
            return dict(httpx.get(f"{proxy.url}/analytics/records/{ids[0]}").json())
        assert time.monotonic() < deadline, "no such record after 30 s"
        time.sleep(0.05)


def record_of(proxy: ProxyProcess, prompt: str) -> dict[str, Any]:
    return record_where(proxy, lambda r: r["prompt"] == prompt)


def tokens(proxy: ProxyProcess) -> dict[str, float]:
    samples = scrape(proxy.url)
    return {
        kind: total(samples, "ollama_tokens_total", type=kind) for kind in ("prompt", "completion")
    }


def test_a_responses_create_is_recorded_as_exactly_as_a_chat(proxy: ProxyProcess) -> None:
    prompt = words()
    before = tokens(proxy)
    with openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused") as client:
        answer = client.responses.create(model="qwen3", instructions="Be brief.", input=prompt)
    assert answer.usage is not None
    record = record_of(proxy, prompt)
    assert (record["model"], record["endpoint"]) == ("qwen3:latest", "/v1/responses")
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        answer.usage.input_tokens,
        answer.usage.output_tokens,
    )
    assert record["response"] == answer.output_text
    assert record["category"] == "question"
    assert record["upstream_error"] is None
    after = tokens(proxy)
    assert after["prompt"] - before["prompt"] == answer.usage.input_tokens
    assert after["completion"] - before["completion"] == answer.usage.output_tokens


def test_a_responses_stream_gives_tokens_text_and_time_to_first_token(
    proxy: ProxyProcess,
) -> None:
    prompt = words()
    with (
        openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused") as client,
        client.responses.stream(
            model="qwen3", input=[{"role": "user", "content": prompt}]
        ) as stream,
    ):
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.usage is not None
    record = record_of(proxy, prompt)
    assert record["streamed"] is True
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )
    assert record["response"] == text
    assert record["thinking"]  # qwen3 thinks: the reasoning summary deltas
    assert 0 < record["ttft_s"] <= record["duration_s"]
    assert (record["done_reason"], record["upstream_error"]) == ("completed", None)


def test_a_responses_function_call_is_recorded(proxy: ProxyProcess) -> None:
    prompt = words()
    with openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused") as client:
        answer = client.responses.create(
            model="llama3.2",
            input=prompt,
            tools=[RESPONSES_TOOL],  # type: ignore[list-item]
        )
    calls = [item for item in answer.output if item.type == "function_call"]
    assert calls
    record = record_of(proxy, prompt)
    # Stored as JSON text (app/record.py).
    assert [(c["name"], c["arguments"]) for c in json.loads(record["tool_calls"])] == [
        (c.name, c.arguments) for c in calls
    ]


def test_a_native_tool_call_on_the_final_chunk_is_recorded(proxy: ProxyProcess) -> None:
    prompt = words()
    # (The ollama client's generate() takes no tools; Ollama's /api/generate does.)
    body = {"model": "llama3.2", "prompt": prompt, "tools": TOOLS}
    answer = httpx.post(proxy.url + "/api/generate", json=body, timeout=30)
    final = json.loads(answer.text.splitlines()[-1])
    assert final["done"]
    assert final["tool_calls"]
    record = record_of(proxy, prompt)
    assert json.loads(record["tool_calls"]) == final["tool_calls"]
    assert record["completion_tokens"] == final["eval_count"]


def test_anthropic_messages_count_ollamas_tokens_not_its_estimate(proxy: ProxyProcess) -> None:
    prompt = words()
    with (
        anthropic.Anthropic(base_url=proxy.url, api_key="unused") as client,
        client.messages.stream(
            model="llama3.2", max_tokens=20, messages=[{"role": "user", "content": prompt}]
        ) as stream,
    ):
        start = next(e for e in stream if e.type == "message_start")
        final = stream.get_final_message()
    estimate = start.message.usage.input_tokens
    record = record_of(proxy, prompt)
    assert record["prompt_tokens"] == final.usage.input_tokens
    assert record["completion_tokens"] == final.usage.output_tokens
    # The emulator's count differs from the estimate (length / 4), so the test can tell them.
    assert final.usage.input_tokens != estimate


def test_an_anthropic_tool_use_keeps_its_arguments(proxy: ProxyProcess) -> None:
    prompt = words()
    with (
        anthropic.Anthropic(base_url=proxy.url, api_key="unused") as client,
        client.messages.stream(
            model="llama3.2",
            max_tokens=50,
            tools=[WEATHER],  # type: ignore[list-item]
            messages=[{"role": "user", "content": prompt}],
        ) as stream,
    ):
        final = stream.get_final_message()
    used = [block for block in final.content if block.type == "tool_use"]
    assert used
    record = record_of(proxy, prompt)
    assert [(c["name"], c["input"]) for c in json.loads(record["tool_calls"])] == [
        (block.name, block.input) for block in used
    ]
    assert record["done_reason"] == "tool_use"


def test_a_body_over_the_read_limit_keeps_its_model_and_tokens(proxy: ProxyProcess) -> None:
    # 33 MiB of prompt: more than the proxy reads (32 MiB), so it streams the body on unread.
    marker = uuid.uuid4().hex
    prompt = f"{marker} " + "word " * (33 * 1024 * 1024 // 5)
    body = json.dumps({"model": "llama3.2", "prompt": prompt, "stream": False}).encode()
    answer = httpx.post(proxy.url + "/api/generate", content=body, timeout=120)
    assert answer.status_code == 200, answer.text[:200]
    reported = answer.json()
    record = record_where(
        proxy, lambda r: r["request_bytes"] == len(body), endpoint="/api/generate"
    )
    assert record["model"] == "llama3.2:latest"
    # Ollama cut the prompt to its context (llama_server.go completionPromptForRequest).
    assert record["prompt_tokens"] == reported["prompt_eval_count"] > 0
    assert record["completion_tokens"] == reported["eval_count"]


@pytest.mark.parametrize(
    ("method", "path", "body", "model"),
    [
        ("POST", "/api/copy", {"source": "llama3.2", "destination": "copy-{n}"}, "llama3.2:latest"),
        ("POST", "/api/pull", {"name": "qwen3", "stream": False}, "qwen3:latest"),
        ("DELETE", "/api/delete", {"name": "copy-{n}"}, "copy-{n}:latest"),
        ("POST", "/api/show", {"name": "llama3.2"}, "llama3.2:latest"),
        ("GET", "/v1/models/llama3.2", None, "llama3.2:latest"),
        # Refused names are kept as sent, without an added ":latest".
        ("POST", "/api/show", {"model": "no-such-{n}"}, "no-such-{n}"),
        ("DELETE", "/api/delete", {"model": "no-such-{n}"}, "no-such-{n}"),
    ],
)
def test_model_management_records_name_the_model(
    emulator: EmulatorServer,
    proxy: ProxyProcess,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    model: str,
) -> None:
    n = uuid.uuid4().hex[:8]
    if path == "/api/delete" and "copy" in model:
        copied = httpx.post(
            proxy.url + "/api/copy", json={"source": "llama3.2", "destination": f"copy-{n}"}
        )
        assert copied.status_code == 200
    sent = None if body is None else json.loads(json.dumps(body).replace("{n}", n))
    answer = httpx.request(method, proxy.url + path, json=sent, timeout=30)
    expected = model.replace("{n}", n)
    record = record_where(
        proxy,
        lambda r: (r["model"], r["method"], r["path"]) == (expected, method, path),
    )
    assert record["status"] == answer.status_code
    # Leave the session's emulator with the models it had (other suites list them).
    httpx.request("DELETE", emulator.url + "/api/delete", json={"model": f"copy-{n}"})


def test_a_refused_pull_is_the_clients_error_not_ollama_failing(proxy: ProxyProcess) -> None:
    name = f"no-such-{uuid.uuid4().hex[:8]}"
    before = total(scrape(proxy.url), "ollama_upstream_errors_total", reason="midstream")
    answer = httpx.post(proxy.url + "/api/pull", json={"model": name})
    assert (answer.status_code, json.loads(answer.text.splitlines()[-1])) == (
        200,
        {"error": "pull model manifest: file does not exist"},
    )
    record = record_where(proxy, lambda r: r["model"] == f"{name}:latest")
    assert record["error"] == "pull model manifest: file does not exist"
    assert record["upstream_error"] is None
    after = total(scrape(proxy.url), "ollama_upstream_errors_total", reason="midstream")
    assert after == before


def test_in_flight_requests_carry_their_own_model_and_route(
    slow_emulator: EmulatorServer,
) -> None:
    with ProxyProcess(slow_emulator.url, env={"PS_POLL_INTERVAL": "0"}) as proxy:
        # A minute of tokens: still streaming whatever the machine's load; the client
        # leaves early, and the proxy cancels it upstream.
        body = {"model": "llama3.2", "prompt": words(), "options": {"num_predict": 1200}}
        with httpx.stream("POST", proxy.url + "/api/generate", json=body, timeout=30) as answer:
            lines = answer.iter_lines()  # kept: a dropped iterator closes the stream
            next(lines)
            samples = scrape(proxy.url)
            in_flight = {"endpoint": "/api/generate", "model": "llama3.2:latest"}
            assert total(samples, "ollama_requests_in_flight", **in_flight) == 1
            assert total(samples, "ollama_requests_in_flight", model="other") == 0
        httpx.get(proxy.url + "/api/tags")
        deadline = time.monotonic() + 30
        while total(scrape(proxy.url), "ollama_requests_in_flight") != 0:
            assert time.monotonic() < deadline, "in flight after the client left"
            time.sleep(0.05)
        assert total(scrape(proxy.url), "ollama_requests_in_flight", endpoint="/api/tags") == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {"model": "llama3.2", "max_tokens": 30, "stream": True}),
        ("/v1/responses", {"model": "llama3.2", "stream": True}),
    ],
)
def test_a_stream_ollama_broke_off_without_a_word_is_recorded_as_cut(
    proxy: ProxyProcess, path: str, body: dict[str, Any]
) -> None:
    # Ollama sends no event at all when the model fails mid-stream on these routes
    # (middleware/anthropic.go, middleware/openai.go): the stream just stops.
    prompt = words()
    key = "messages" if path == "/v1/messages" else "input"
    sent = {**body, key: [{"role": "user", "content": prompt}]}
    before = total(scrape(proxy.url), "ollama_upstream_errors_total", reason="midstream")
    answer = httpx.post(
        proxy.url + path, json=sent, headers={"X-Emulator-Fault": "fail-after-3"}, timeout=30
    )
    assert answer.status_code == 200
    # As Ollama: no error event, no end event; the stream just stops.
    for marker in (b"event: error", b"response.failed", b"message_stop", b"response.completed"):
        assert marker not in answer.content
    record = record_of(proxy, prompt)
    assert (record["upstream_error"], record["error"]) == (
        "midstream",
        "the stream ended before Ollama finished it",
    )
    assert record["prompt_tokens"] is None  # message_start's estimate is no count
    after = total(scrape(proxy.url), "ollama_upstream_errors_total", reason="midstream")
    assert after == before + 1

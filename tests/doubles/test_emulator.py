"""The Ollama emulator is faithful to the v0.33 API: real clients and raw bytes agree.

One emulator process serves the module; each test starts from a clean request log,
the default config and the initial model catalog.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import math
import re
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import psutil
import pytest

from tests.emulator import EmulatorConfig, EmulatorServer, tokens
from tests.emulator.gojson import F32, dumps, rfc3339nano

CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z$")
SKY = "Why is the sky blue?"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
METRIC_KEYS = [
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
]


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer() as emulator:
        yield emulator


@pytest.fixture
def emu(server: EmulatorServer) -> Iterator[EmulatorServer]:
    server.reset(catalog=True)
    yield server
    server.configure(**EmulatorConfig().as_dict())
    server.reset(catalog=True)


@pytest.fixture
def http(emu: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url, timeout=10) as client:
        yield client


@pytest.fixture
def oclient(emu: EmulatorServer) -> Iterator[ollama.Client]:
    client = ollama.Client(host=emu.url)
    yield client
    client.close()


@pytest.fixture
def oai(emu: EmulatorServer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=emu.url + "/v1", api_key="x", max_retries=0)
    yield client
    client.close()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def streamed_with_usage(**fields: Any) -> dict[str, Any]:
    """A /v1 request body that streams and asks for the usage chunk."""
    return {**fields, "stream": True, "stream_options": {"include_usage": True}}


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.text.endswith("\n")
    return [json.loads(line) for line in response.text.split("\n")[:-1]]


def sse_data(text: str) -> list[str]:
    events = text.split("\n\n")
    assert events[-1] == "", "SSE stream must end with a blank line"
    assert all(event.startswith("data: ") for event in events[:-1])
    return [event.removeprefix("data: ") for event in events[:-1]]


def anthropic_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        events.append(
            (name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: ")))
        )
    return events


def metrics_of(expected: tokens.Expected) -> dict[str, int]:
    """The planned metrics: all but total_duration, which is measured."""
    return {key: getattr(expected, key) for key in METRIC_KEYS[1:]}


def prompt_with(fragment: str) -> str:
    """A prompt whose deterministic answer contains `fragment` (for escaping checks)."""
    for index in range(500):
        prompt = f"question number {index}"
        if fragment in tokens.expected_generation("llama3.2", prompt).text:
            return prompt
    raise AssertionError(f"no prompt yields {fragment!r}")


# --- transport -------------------------------------------------------------------


@pytest.mark.process
def test_root_head_and_version(http: httpx.Client) -> None:
    root = http.get("/")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert root.headers["content-type"] == "text/plain; charset=utf-8"
    assert "server" not in root.headers
    head = http.head("/")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == "17"
    version = http.get("/api/version")
    assert version.content == b'{"version":"0.33.0"}'
    assert version.headers["content-type"] == "application/json; charset=utf-8"
    assert http.head("/api/version").status_code == 200
    assert http.head("/api/tags").status_code == 200


@pytest.mark.process
def test_gin_404_405_and_trailing_slash(http: httpx.Client) -> None:
    missing = http.get("/api/nothing")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    assert missing.headers["content-type"] == "text/plain"
    wrong = http.post("/api/tags")
    assert (wrong.status_code, wrong.text) == (405, "405 method not allowed")
    assert wrong.headers["content-type"] == "text/plain"
    assert http.head("/api/ps").status_code == 405  # HEAD is only registered where Ollama does
    redirect = http.get("/api/tags/?x=1")
    assert redirect.status_code == 301
    assert redirect.headers["location"] == "/api/tags?x=1"
    post_redirect = http.post("/api/chat/", content=b"{}")
    assert post_redirect.status_code == 307
    assert post_redirect.headers["location"] == "/api/chat"
    assert http.get("/api/chat/").status_code == 404  # no GET /api/chat: neither 301 nor 405


# --- native inference --------------------------------------------------------------


@pytest.mark.process
def test_chat_stream_bytes_and_metrics(http: httpx.Client) -> None:
    expected = tokens.expected_generation("llama3.2", user(SKY))
    response = http.post("/api/chat", json={"model": "llama3.2", "messages": user(SKY)})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["transfer-encoding"] == "chunked"
    chunks = lines(response)
    assert len(chunks) == expected.chunk_count + 1
    # Some chunks carry two tokens, as llama-server streams them: lines < eval_count.
    assert expected.chunk_count < expected.eval_count == tokens.DEFAULT_EVAL_COUNT
    for chunk, planned in zip(chunks, expected.chunks, strict=False):
        assert list(chunk) == ["model", "created_at", "message", "done"]
        assert chunk["model"] == "llama3.2"  # echoed as sent, not normalised
        assert chunk["message"] == {"role": "assistant", "content": planned.content}
        assert CREATED_AT.match(chunk["created_at"])
    assert "".join(c["message"]["content"] for c in chunks) == expected.text
    final = chunks[-1]
    assert list(final) == ["model", "created_at", "message", "done", "done_reason", *METRIC_KEYS]
    assert final["message"] == {"role": "assistant", "content": expected.final.content}
    assert final["done_reason"] == "stop"
    assert {k: final[k] for k in METRIC_KEYS[1:]} == metrics_of(expected)
    assert (
        final["total_duration"]
        >= expected.timed_duration
        == (expected.load_duration + expected.prompt_eval_duration + expected.eval_duration)
    )
    assert expected.prompt_eval_count == tokens.TEMPLATE_OVERHEAD + tokens.PER_MESSAGE_OVERHEAD + 7


@pytest.mark.process
def test_go_escaping_on_the_wire(http: httpx.Client) -> None:
    prompt = prompt_with("R&D")
    raw = http.post("/api/generate", json={"model": "llama3.2", "prompt": prompt}).content
    assert b"R\\u0026D" in raw
    assert b"R&D" not in raw
    assert b'":"' in raw
    assert b'": "' not in raw
    raw_cafe = http.post("/api/generate", json={"model": "llama3.2", "prompt": prompt_with("café")})
    assert "café".encode() in raw_cafe.content  # raw UTF-8, not \u00e9
    assert b"\\u00e9" not in raw_cafe.content
    tag = http.post("/api/generate", json={"model": "llama3.2", "prompt": prompt_with("x<y")})
    assert b"x\\u003cy" in tag.content


@pytest.mark.process
def test_ollama_client_chat_stream_and_non_stream(oclient: ollama.Client) -> None:
    expected = tokens.expected_generation("llama3.2:latest", user(SKY), num_predict=5)
    parts = list(oclient.chat("llama3.2", user(SKY), stream=True, options={"num_predict": 5}))
    assert [p.message.content for p in parts[:-1]] == [c.content for c in expected.chunks]
    assert "".join(p.message.content for p in parts) == expected.text
    assert parts[-1].done
    assert parts[-1].done_reason == "length"
    assert parts[-1].eval_count == 5 == expected.eval_count
    whole = oclient.chat("llama3.2", user(SKY))
    default = tokens.expected_generation("llama3.2", user(SKY))
    assert whole.message.content == default.text
    assert whole.message.content.endswith(".")
    assert whole.prompt_eval_count == default.prompt_eval_count
    assert whole.load_duration == default.load_duration
    assert whole.eval_duration == default.eval_duration
    assert (whole.total_duration or 0) >= default.timed_duration
    assert whole.done_reason == "stop"


@pytest.mark.process
def test_generate_stream_context_and_raw(oclient: ollama.Client, http: httpx.Client) -> None:
    expected = tokens.expected_generation("llama3.2", SKY)
    parts = list(oclient.generate("llama3.2", SKY, stream=True))
    assert "".join(p.response for p in parts) == expected.text
    assert parts[-1].context == expected.context
    assert len(expected.context) == expected.prompt_eval_count + expected.eval_count
    # A generate of the prompt and a one-message chat are templated alike.
    assert (
        expected.prompt_eval_count
        == tokens.expected_generation("llama3.2", user(SKY)).prompt_eval_count
    )
    raw = lines(http.post("/api/generate", json={"model": "llama3.2", "prompt": SKY, "raw": True}))
    assert "context" not in raw[-1]
    assert raw[-1]["prompt_eval_count"] == tokens.count_text_tokens(SKY)
    followup = oclient.generate("llama3.2", "and at night?", context=expected.context)
    assert followup.prompt_eval_count == (
        tokens.generate_prompt_tokens("and at night?") + len(expected.context)
    )


@pytest.mark.process
@pytest.mark.parametrize(
    ("options", "num_ctx", "num_keep"),
    [
        ({}, 4096, 4),  # the CPU-only default context (server/routes.go defaultNumCtx)
        ({"num_ctx": 100}, 100, 4),
        ({"num_ctx": 100, "num_keep": 20}, 100, 20),
    ],
)
def test_a_generate_prompt_longer_than_the_context_is_cut(
    http: httpx.Client, options: dict[str, int], num_ctx: int, num_keep: int
) -> None:
    prompt = "word " * 10_000
    assert tokens.generate_prompt_tokens(prompt) > num_ctx
    answer = http.post(
        "/api/generate",
        json={"model": "llama3.2", "prompt": prompt, "stream": False, "options": options},
    ).json()
    # llm/llama_server.go completionPromptForRequest, contextShiftPromptLimit (+1: BOS).
    assert answer["prompt_eval_count"] == num_ctx - max((num_ctx - (num_keep + 1)) // 2, 1)
    short = http.post(
        "/api/generate",
        json={"model": "llama3.2", "prompt": "word " * 10, "stream": False, "options": options},
    ).json()
    assert short["prompt_eval_count"] == tokens.generate_prompt_tokens("word " * 10)


@pytest.mark.process
def test_thinking_on_qwen3(oclient: ollama.Client, http: httpx.Client) -> None:
    expected = tokens.expected_generation("qwen3", user("hello"))
    assert len(expected.thinking_tokens) == tokens.THINKING_TOKENS  # on by default
    parts = list(oclient.chat("qwen3", user("hello"), stream=True, think=True))
    assert "".join(p.message.thinking or "" for p in parts) == expected.thinking
    first_text = next(i for i, p in enumerate(parts) if p.message.content)
    assert not any(p.message.thinking for p in parts[first_text + 1 :])  # thinking comes first
    assert "".join(p.message.content for p in parts) == expected.text
    assert parts[-1].eval_count == len(expected.thinking_tokens) + len(expected.text_tokens)
    off = oclient.chat("qwen3", user("hello"), think=False)
    assert off.message.thinking is None
    assert off.eval_count == tokens.DEFAULT_EVAL_COUNT
    generated = oclient.generate("qwen3", "hello")
    assert generated.thinking == expected.thinking
    assert generated.response == expected.text
    not_a_thinker = http.post(
        "/api/chat", json={"model": "llama3.2", "messages": user("x"), "think": True}
    )
    assert not_a_thinker.status_code == 400
    assert not_a_thinker.json() == {"error": '"llama3.2" does not support thinking'}


@pytest.mark.process
def test_native_tool_calls(oclient: ollama.Client, http: httpx.Client) -> None:
    response = oclient.chat("llama3.2", user("Weather in Paris?"), tools=[WEATHER_TOOL])
    (call,) = response.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments, dict)
    assert set(call.function.arguments) == {"city", "days"}
    assert response.message.content == ""
    body = {"model": "llama3.2", "messages": user("Weather in Paris?"), "tools": [WEATHER_TOOL]}
    streamed = lines(http.post("/api/chat", json=body))
    expected = tokens.expected_generation(
        "llama3.2", user("Weather in Paris?"), tools=[WEATHER_TOOL]
    )
    assert streamed[0]["message"]["tool_calls"] == expected.tool_calls
    assert re.fullmatch(r"call_[a-z0-9]{8}", expected.tool_calls[0]["id"])
    assert streamed[-1]["eval_count"] == tokens.TOOL_CALL_TOKENS
    assert streamed[-1]["prompt_eval_count"] == expected.prompt_eval_count
    # After the tool answered, the model replies with text.
    history = [
        *user("Weather in Paris?"),
        {"role": "assistant", "content": "", "tool_calls": expected.tool_calls},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    reply = oclient.chat("llama3.2", history, tools=[WEATHER_TOOL])
    assert not reply.message.tool_calls
    assert reply.message.content
    with pytest.raises(ollama.ResponseError) as excinfo:
        oclient.chat("gemma:2b", user("x"), tools=[WEATHER_TOOL])
    assert excinfo.value.status_code == 400
    assert excinfo.value.error == "registry.ollama.ai/library/gemma:2b does not support tools"


@pytest.mark.process
def test_final_chunk_can_carry_text(http: httpx.Client) -> None:
    # llm/llama_server.go Completion (the stop event's content) and Chat (the last delta).
    expected = tokens.expected_generation("qwen3", user("hello"))
    assert expected.final.content  # this answer ends on a final chunk with text
    chat = lines(http.post("/api/chat", json={"model": "qwen3", "messages": user("hello")}))
    assert chat[-1]["done"] is True
    assert chat[-1]["message"]["content"] == expected.final.content
    assert "".join(c["message"]["content"] for c in chat) == expected.text
    assert "".join(c["message"].get("thinking", "") for c in chat) == expected.thinking
    generated = lines(http.post("/api/generate", json={"model": "qwen3", "prompt": "hello"}))
    assert generated[-1]["response"] == expected.final.content
    assert "".join(c["response"] for c in generated) == expected.text
    # The OpenAI layer sends the final text as a content chunk before the finish chunk.
    body = {"model": "qwen3", "messages": user("hello"), "stream": True}
    events = [
        json.loads(d) for d in sse_data(http.post("/v1/chat/completions", json=body).text)[:-1]
    ]
    assert events[-2]["choices"][0]["delta"] == {"content": expected.final.content}
    assert events[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    # ... and the Anthropic layer as the last text_delta.
    anthropic = anthropic_events(
        http.post(
            "/v1/messages",
            json={"model": "qwen3", "max_tokens": 100, "messages": user("hello"), "stream": True},
        ).text
    )
    deltas = [d["delta"] for n, d in anthropic if n == "content_block_delta"]
    assert "".join(d.get("text", "") for d in deltas) == (
        tokens.expected_generation("qwen3", user("hello"), num_predict=100).text
    )


@pytest.mark.process
def test_generate_tool_calls_ride_the_final_chunk(http: httpx.Client) -> None:
    # server/routes.go GenerateHandler: the builtin parser's calls only when cr.Done.
    prompt = "Weather in Paris?"
    body = {"model": "llama3.2", "prompt": prompt, "tools": [WEATHER_TOOL]}
    expected = tokens.expected_generation("llama3.2", prompt, tools=[WEATHER_TOOL])
    streamed = lines(http.post("/api/generate", json=body))
    assert all("tool_calls" not in c for c in streamed[:-1])
    assert streamed[-1]["done"] is True
    assert streamed[-1]["tool_calls"] == expected.tool_calls
    assert streamed[-1]["prompt_eval_count"] == (
        tokens.generate_prompt_tokens(prompt) + tokens.tools_tokens([WEATHER_TOOL])
    )
    raw = lines(http.post("/api/generate", json={**body, "raw": True}))
    assert "tool_calls" not in raw[-1]  # no template, no tools
    refused = http.post("/api/generate", json={**body, "model": "gemma:2b"})
    assert refused.status_code == 400
    assert "does not support tools" in refused.json()["error"]


@pytest.mark.process
def test_chat_tool_calls_ride_the_final_chunk(http: httpx.Client) -> None:
    # llm/llama_server.go Chat accumulates every tool call and attaches them to the final
    # response only; a delta with only logprobs is still sent.
    body = {"model": "llama3.2", "messages": user("Weather in Paris?"), "tools": [WEATHER_TOOL]}
    expected = tokens.expected_generation(
        "llama3.2", user("Weather in Paris?"), tools=[WEATHER_TOOL]
    )
    (only,) = lines(http.post("/api/chat", json=body))  # no token showed: one line
    assert only["done"] is True
    assert only["message"]["tool_calls"] == expected.tool_calls
    assert only["eval_count"] == tokens.TOOL_CALL_TOKENS
    thinking = lines(http.post("/api/chat", json={**body, "model": "qwen3"}))
    assert all("tool_calls" not in c["message"] for c in thinking[:-1])
    assert thinking[-1]["message"]["tool_calls"]
    assert "".join(c["message"].get("thinking", "") for c in thinking)
    with_logprobs = lines(http.post("/api/chat", json={**body, "logprobs": True}))
    assert len(with_logprobs) == tokens.TOOL_CALL_TOKENS + 1
    for chunk in with_logprobs[:-1]:  # chunks with only logprobs
        assert chunk["message"] == {"role": "assistant", "content": ""}
        (entry,) = chunk["logprobs"]
        assert entry["token"]
    assert with_logprobs[-1]["message"]["tool_calls"] == expected.tool_calls
    assert "logprobs" not in with_logprobs[-1]
    whole = http.post("/api/chat", json={**body, "stream": False, "logprobs": True}).json()
    assert len(whole["logprobs"]) == tokens.TOOL_CALL_TOKENS
    assert whole["message"]["tool_calls"] == expected.tool_calls
    # Chat's final chunk keeps the logprobs of the text it carries (unlike generate's).
    text = lines(
        http.post("/api/chat", json={"model": "qwen3", "messages": user("hello"), "logprobs": True})
    )
    assert [e["token"] for e in text[-1]["logprobs"]] == [
        *tokens.expected_generation("qwen3", user("hello")).final.pieces
    ]
    # /v1/messages: the first native chunk is the final one, so message_start has its count.
    schema = WEATHER_TOOL["function"]["parameters"]
    native = {"name": "get_weather", "description": "", "parameters": schema}
    converted = [{"type": "function", "function": native}]  # what the middleware sends on
    messages = {
        "model": "llama3.2",
        "max_tokens": 100,
        "messages": user("Weather in Paris?"),
        "tools": [{"name": "get_weather", "input_schema": schema}],
        "stream": True,
    }
    start = anthropic_events(http.post("/v1/messages", json=messages).text)[0][1]
    counted = tokens.expected_generation(
        "llama3.2", user("Weather in Paris?"), tools=converted
    ).prompt_eval_count
    assert start["message"]["usage"]["input_tokens"] == counted


@pytest.mark.process
def test_load_and_unload_forms(http: httpx.Client, oclient: ollama.Client) -> None:
    load = http.post("/api/generate", json={"model": "gemma:2b"})
    assert load.headers["content-type"] == "application/json; charset=utf-8"
    assert list(load.json()) == ["model", "created_at", "response", "done", "done_reason"]
    assert load.json()["done_reason"] == "load"
    assert "gemma:2b" in [m.model for m in oclient.ps().models]
    chat_load = http.post("/api/chat", json={"model": "gemma:2b", "messages": []}).json()
    assert chat_load["message"] == {"role": "assistant", "content": ""}
    unload = http.post("/api/generate", json={"model": "gemma:2b", "keep_alive": 0})
    assert unload.json()["done_reason"] == "unload"
    assert "gemma:2b" not in [m.model for m in oclient.ps().models]
    oclient.generate("qwen3", keep_alive=-1)
    oclient.generate("llama3.2", keep_alive="1m")
    running = oclient.ps().models
    assert [m.model for m in running] == ["qwen3:latest", "llama3.2:latest"]  # longest first
    assert running[0].expires_at is not None
    assert running[0].expires_at.year > 2200  # negative keep_alive: forever


@pytest.mark.process
def test_logprobs_when_requested(http: httpx.Client) -> None:
    body = {"model": "llama3.2", "prompt": SKY, "logprobs": True, "top_logprobs": 2}
    chunks = lines(http.post("/api/generate", json=body))
    expected = tokens.expected_generation("llama3.2", SKY)
    for chunk, planned in zip(chunks, expected.chunks, strict=False):
        entries = chunk["logprobs"]  # one entry for each token of the chunk
        assert [e["token"] for e in entries] == list(planned.pieces)
        assert "".join(e["token"] for e in entries) == chunk["response"]
        for entry in entries:
            assert entry["bytes"] == list(entry["token"].encode())
            assert entry["logprob"] < 0
            assert len(entry["top_logprobs"]) == 2
    assert max(len(c["logprobs"]) for c in chunks[:-1]) == 2
    assert "logprobs" not in chunks[-1]  # llm/llama_server.go Completion: finalResp has none
    whole = http.post("/api/generate", json={**body, "stream": False}).json()
    streamed = [lp["token"] for c in chunks[:-1] for lp in c["logprobs"]]
    assert [lp["token"] for lp in whole["logprobs"]] == streamed
    assert (
        "logprobs"
        not in lines(http.post("/api/generate", json={"model": "llama3.2", "prompt": SKY}))[0]
    )
    out_of_range = http.post("/api/generate", json={**body, "top_logprobs": 21})
    assert out_of_range.json() == {"error": "top_logprobs must be between 0 and 20"}


@pytest.mark.process
def test_empty_catalog_shapes(http: httpx.Client) -> None:
    for name in ("llama3.2", "qwen3", "gemma:2b", "nomic-embed-text"):
        assert http.request("DELETE", "/api/delete", json={"model": name}).status_code == 200
    assert http.get("/api/tags").content == b'{"models":[]}'
    assert http.get("/api/ps").content == b'{"models":[]}'
    assert http.get("/v1/models").content == b'{"object":"list","data":null}\n'


@pytest.mark.process
def test_embed_and_legacy_embeddings(oclient: ollama.Client, http: httpx.Client) -> None:
    inputs = ["first text", "a second, longer text"]
    result = oclient.embed("nomic-embed-text", inputs)
    assert len(result.embeddings) == 2
    assert len(result.embeddings[0]) == 768
    assert math.isclose(math.fsum(v * v for v in result.embeddings[0]), 1.0, rel_tol=1e-5)
    reference = tokens.embedding_vector("nomic-embed-text", "first text")
    assert max(abs(a - b) for a, b in zip(result.embeddings[0], reference, strict=True)) < 1e-6
    assert result.prompt_eval_count == tokens.embed_prompt_tokens(inputs)
    raw = http.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"}).json()
    assert list(raw) == [
        "model",
        "embeddings",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
    ]
    short = http.post(
        "/api/embed", json={"model": "nomic-embed-text", "input": "x", "dimensions": 64}
    ).json()
    assert len(short["embeddings"][0]) == 64
    empty = http.post("/api/embed", json={"model": "nomic-embed-text", "input": []})
    assert empty.content == b'{"model":"nomic-embed-text","embeddings":[]}'
    bad = http.post("/api/embed", json={"model": "nomic-embed-text", "input": [1, 2]})
    assert (bad.status_code, bad.json()) == (400, {"error": "invalid input type"})
    legacy = oclient.embeddings("nomic-embed-text", "first text").embedding
    assert len(legacy) == 768
    assert math.fsum(v * v for v in legacy) > 2
    too_long = {"model": "nomic-embed-text", "input": "word " * 2000, "truncate": False}
    assert http.post("/api/embed", json=too_long).json() == {
        "error": "the input length exceeds the context length"
    }
    missing = http.post("/api/embeddings", json={"model": "nope", "prompt": "x"})
    assert missing.json() == {"error": 'model "nope" not found, try pulling it first'}


# --- model management ---------------------------------------------------------------


@pytest.mark.process
def test_list_ps_and_show(oclient: ollama.Client) -> None:
    names = [m.model for m in oclient.list().models]
    assert set(names) == {"llama3.2:latest", "qwen3:latest", "gemma:2b", "nomic-embed-text:latest"}
    assert names[0] == "qwen3:latest"  # newest first
    assert oclient.ps().models == []
    oclient.generate("llama3.2", "hi")
    (loaded,) = oclient.ps().models
    assert loaded.model == "llama3.2:latest"
    assert loaded.size_vram
    assert loaded.expires_at
    assert loaded.expires_at.timestamp() > time.time() + 200  # default keep_alive 5m
    shown = oclient.show("llama3.2")
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert list(shown.modelinfo) == sorted(shown.modelinfo)  # a Go map
    assert shown.capabilities == ["completion", "tools"]
    assert shown.details is not None
    assert shown.details.family == "llama"
    with pytest.raises(ollama.ResponseError) as excinfo:
        oclient.show("nope")
    assert (excinfo.value.status_code, excinfo.value.error) == (404, "model 'nope' not found")


@pytest.mark.process
def test_pull_progress_and_errors(oclient: ollama.Client, http: httpx.Client) -> None:
    progress = list(oclient.pull("smollm2:135m", stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "success"
    layer = [p for p in progress if p.digest]
    assert layer[0].completed is None
    assert layer[0].total
    assert any(p.completed == p.total for p in layer)
    assert re.fullmatch(r"pulling [0-9a-f]{12}", layer[0].status)
    assert "smollm2:135m" in [m.model for m in oclient.list().models]
    assert oclient.pull("all-minilm", stream=False).status == "success"
    unknown = http.post("/api/pull", json={"model": "no-such-model"})
    assert unknown.status_code == 200
    assert lines(unknown) == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    with pytest.raises(ollama.ResponseError, match="file does not exist"):
        list(oclient.pull("no-such-model", stream=True))
    waited = http.post("/api/pull", json={"model": "no-such-model", "stream": False})
    assert waited.status_code == 500
    assert waited.headers["content-type"] == "application/json"


@pytest.mark.process
def test_copy_delete_create_push(oclient: ollama.Client, http: httpx.Client) -> None:
    assert oclient.copy("llama3.2", "mine:v1").status == "success"
    assert oclient.show("mine:v1").capabilities == ["completion", "tools"]
    copy_missing = http.post("/api/copy", json={"source": "nope", "destination": "x"})
    assert (copy_missing.status_code, copy_missing.json()) == (
        404,
        {"error": 'model "nope" not found'},
    )
    deleted = http.request("DELETE", "/api/delete", json={"model": "mine:v1"})
    assert (deleted.status_code, deleted.content) == (200, b"")
    with pytest.raises(ollama.ResponseError):
        oclient.delete("mine:v1")
    created = list(oclient.create("helper", from_="llama3.2", system="Be brief.", stream=True))
    statuses = [c.status for c in created]
    assert statuses[-2:] == ["writing manifest", "success"]
    assert any(s.startswith("creating new layer sha256:") for s in statuses)
    assert "helper:latest" in [m.model for m in oclient.list().models]
    neither = http.post("/api/create", json={"model": "x"})
    assert neither.json() == {"error": "neither 'from' or 'files' was specified"}
    pushed = [p.status for p in oclient.push("helper", stream=True)]
    assert pushed[0] == "retrieving manifest"
    assert pushed[-2:] == ["pushing manifest", "success"]


@pytest.mark.process
def test_name_is_accepted_for_model(http: httpx.Client, oclient: ollama.Client) -> None:
    # server/routes.go PullHandler/DeleteHandler take cmp.Or(Model, Name); PushHandler
    # takes Model, else Name, else "model is required".
    pulled = lines(http.post("/api/pull", json={"name": "smollm2:135m"}))
    assert pulled[-1] == {"status": "success"}
    assert "smollm2:135m" in [m.model for m in oclient.list().models]
    pushed = lines(http.post("/api/push", json={"name": "smollm2:135m"}))
    assert pushed[-1] == {"status": "success"}
    neither = http.post("/api/push", json={"stream": False})
    assert (neither.status_code, neither.json()) == (400, {"error": "model is required"})
    deleted = http.request("DELETE", "/api/delete", json={"name": "smollm2:135m"})
    assert (deleted.status_code, deleted.content) == (200, b"")
    assert "smollm2:135m" not in [m.model for m in oclient.list().models]


@pytest.mark.process
def test_account_and_cloud_routes_without_an_account(http: httpx.Client) -> None:
    # server/routes.go SignoutHandler, webExperimentalProxyHandler,
    # ModelRecommendationsExperimentalHandler; server/cloud_proxy.go writeCloudUnauthorized.
    for method, path in (("POST", "/api/signout"), ("DELETE", "/api/user/keys/c29tZWtleQ")):
        answer = http.request(method, path)
        assert (answer.status_code, answer.json()) == (
            401,
            {"error": "you are not currently signed in"},
        )
    for path in ("/api/experimental/web_search", "/api/experimental/web_fetch"):
        assert http.post(path, content=b" ").json() == {"error": "missing request body"}
        answer = http.post(path, json={"query": "ollama"})
        assert answer.status_code == 401
        assert list(answer.json()) == ["error", "signin_url"]
        assert answer.json()["signin_url"].startswith("https://ollama.com/connect?name=")
    recommended = http.get("/api/experimental/model-recommendations")
    assert recommended.status_code == 200
    entries = recommended.json()["recommendations"]
    assert entries[0] == {
        "model": "kimi-k2.6:cloud",
        "description": "State-of-the-art coding, long-horizon execution, and multimodal"
        " agent swarm capability",
        "context_length": 262_144,
        "max_output_tokens": 262_144,
    }
    assert entries[-1] == {
        "model": "qwen3.5",
        "description": "Reasoning, coding, and visual understanding locally",
        "vram_bytes": 14_000_000_000,
    }
    assert http.post("/api/experimental/model-recommendations").status_code == 405


@pytest.mark.process
def test_audio_transcriptions(http: httpx.Client) -> None:
    # middleware/openai.go TranscriptionMiddleware/TranscriptionWriter,
    # openai/openai.go FromTranscriptionRequest.
    audio = {"file": ("speech.wav", b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav")}
    messages = [
        {
            "role": "system",
            "content": "Transcribe the audio exactly as spoken. Output only the spoken words."
            " Do not answer any question in the audio.",
        },
        {"role": "user", "content": "What exact words are spoken in this audio?"},
    ]
    text = tokens.expected_generation("llama3.2", messages).text.strip()
    answer = http.post("/v1/audio/transcriptions", files=audio, data={"model": "llama3.2"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.content == dumps({"text": text}).encode() + b"\n"
    plain = http.post(
        "/v1/audio/transcriptions",
        files=audio,
        data={"model": "llama3.2", "response_format": "text"},
    )
    assert (plain.headers["content-type"], plain.text) == ("text/plain", text)

    def error(**kwargs: Any) -> tuple[int, str]:
        reply = http.post("/v1/audio/transcriptions", **kwargs)
        return reply.status_code, reply.json()["error"]["message"]

    assert error(json={"model": "llama3.2"}) == (
        400,
        "failed to parse multipart form: request Content-Type isn't multipart/form-data",
    )
    assert error(files=audio) == (400, "model is required")
    assert error(files={"other": audio["file"]}, data={"model": "llama3.2"}) == (
        400,
        "file is required: http: no such file",
    )
    empty = {"file": ("speech.wav", b"", "audio/wav")}
    assert error(files=empty, data={"model": "llama3.2"}) == (400, "audio file is empty")
    assert error(files=audio, data={"model": "nope"}) == (404, "model 'nope' not found")
    broken = http.post(
        "/v1/audio/transcriptions",
        files=audio,
        data={"model": "llama3.2"},
        headers=fault("fail-after-2"),
    )
    assert (broken.status_code, broken.content) == (200, b"")  # the error line is dropped


@pytest.mark.process
def test_blob_upload_digest_verification(
    emu: EmulatorServer, http: httpx.Client, oclient: ollama.Client, tmp_path: Any
) -> None:
    data = b"GGUF" + bytes(range(256)) * 100
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    missing = http.head(f"/api/blobs/{digest}")
    assert missing.status_code == 404
    wrong = "sha256:" + "0" * 64
    mismatch = http.post(f"/api/blobs/{wrong}", content=data)
    assert mismatch.status_code == 400
    assert "digest mismatch" in mismatch.json()["error"]
    assert http.post("/api/blobs/sha256:zz", content=b"").json() == {
        "error": "invalid digest format"
    }
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    assert oclient.create_blob(path) == digest
    assert http.head(f"/api/blobs/{digest}").status_code == 200
    again = http.post(f"/api/blobs/{digest}", content=data)
    assert (again.status_code, again.content) == (200, b"")  # already there
    made = oclient.create("from-file", files={"model.gguf": digest})
    assert made.status == "success"
    uploads = [
        r for r in emu.requests() if r["path"] == f"/api/blobs/{digest}" and r["method"] == "POST"
    ]
    assert uploads[0]["status"] == 201
    assert uploads[0]["body_sha256"] == digest.removeprefix("sha256:")
    assert uploads[0]["body_len"] == len(data)


@pytest.mark.process
def test_large_blob_upload_keeps_memory_flat(emu: EmulatorServer) -> None:
    chunk = bytes(range(256)) * 4096  # 1 MiB
    count = 256
    hasher = hashlib.sha256()
    for _ in range(count):
        hasher.update(chunk)
    digest = "sha256:" + hasher.hexdigest()
    process = psutil.Process(emu.pid)
    before = process.memory_info().rss

    def body() -> Iterator[bytes]:
        for _ in range(count):
            yield chunk

    response = httpx.post(f"{emu.url}/api/blobs/{digest}", content=body(), timeout=60)
    assert response.status_code == 201
    grown = process.memory_info().rss - before
    assert grown < 64 * 1024 * 1024, f"emulator grew by {grown} bytes for a 256 MiB upload"
    (entry,) = [r for r in emu.requests() if r["method"] == "POST"]
    assert entry["body_len"] == count * len(chunk)


# --- errors ------------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/api/chat", b"", 400, "missing request body"),
        (
            "/api/chat",
            b"{x",
            400,
            "invalid character 'x' looking for beginning of object key string",
        ),
        ("/api/generate", b"x", 400, "invalid character 'x' looking for beginning of value"),
        ("/api/generate", b'{"model":', 400, "unexpected EOF"),
        (
            "/api/generate",
            b'{"model":"a" "b"}',
            400,
            "invalid character '\"' after object key:value pair",
        ),
        (
            "/api/chat",
            b'{"model":"llama3.2","messages":"hi"}',
            400,
            "json: cannot unmarshal string into Go struct field ChatRequest.messages"
            " of type []api.Message",
        ),
        ("/api/chat", b'{"model":"nope","messages":[]}', 404, "model 'nope' not found"),
        ("/api/chat", b'{"messages":[]}', 400, "model is required"),
        ("/api/generate", b'{"model":""}', 404, "model '' not found"),
        (
            "/api/generate",
            b'{"model":"llama3.2","prompt":"x","options":{"num_predict":"many"}}',
            400,
            'option "num_predict" must be of type integer',
        ),
        (
            "/api/generate",
            b'{"model":"llama3.2","prompt":"x","keep_alive":"10"}',
            400,
            'time: missing unit in duration "10"',
        ),
        ("/api/show", b'{"model":"nope"}', 404, "model 'nope' not found"),
        ("/api/delete", b'{"model":"nope"}', 404, "model 'nope' not found"),
        (
            "/api/embed",
            b'{"model":"nope","input":"x"}',
            404,
            'model "nope" not found, try pulling it first',
        ),
        (
            "/api/chat",
            b'{"model":"nomic-embed-text","messages":[{"role":"user","content":"x"}]}',
            400,
            '"nomic-embed-text" does not support chat',
        ),
    ],
)
def test_native_error_bodies(
    http: httpx.Client, path: str, body: bytes, status: int, message: str
) -> None:
    response = http.request("DELETE" if path == "/api/delete" else "POST", path, content=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.content == dumps({"error": message}).encode()


@pytest.mark.process
def test_openai_and_anthropic_error_shapes(http: httpx.Client) -> None:
    missing = http.post("/v1/chat/completions", json={"model": "nope", "messages": user("x")})
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert missing.content == (
        b'{"error":{"message":"model \'nope\' not found","type":"not_found_error",'
        b'"param":null,"code":null}}\n'
    )
    empty = http.post("/v1/chat/completions", json={"model": "llama3.2", "messages": []})
    assert empty.status_code == 400
    assert empty.json()["error"]["message"] == "[] is too short - 'messages'"
    assert empty.json()["error"]["type"] == "invalid_request_error"
    no_body = http.post("/v1/completions", content=b"")
    assert no_body.json()["error"]["message"] == "EOF"
    fmt = http.post(
        "/v1/embeddings", json={"model": "nomic-embed-text", "input": "x", "encoding_format": "hex"}
    )
    assert fmt.status_code == 400
    assert "Invalid value for 'encoding_format' = hex" in fmt.text
    crashed = http.post(
        "/v1/chat/completions",
        json={"model": "llama3.2", "messages": user("x")},
        headers={"X-Emulator-Fault": "status-500"},
    )
    assert crashed.status_code == 500
    assert crashed.json()["error"]["type"] == "api_error"
    anthropic = http.post(
        "/v1/messages", json={"model": "nope", "max_tokens": 5, "messages": user("x")}
    )
    assert anthropic.status_code == 404
    body = anthropic.json()
    assert list(body) == ["type", "error", "request_id"]
    assert body["error"] == {"type": "not_found_error", "message": "model 'nope' not found"}
    assert re.fullmatch(r"req_[0-9a-f]{24}", body["request_id"])
    no_max = http.post(
        "/v1/messages", json={"model": "llama3.2", "max_tokens": 0, "messages": user("x")}
    )
    assert no_max.status_code == 400
    assert no_max.json()["error"]["type"] == "invalid_request_error"


# --- faults ------------------------------------------------------------------------------


@pytest.mark.process
def test_midstream_error_line_native(http: httpx.Client, oclient: ollama.Client) -> None:
    body = {"model": "llama3.2", "messages": user(SKY), "options": {"emulator_fail_after": 3}}
    response = http.post("/api/chat", json=body)
    assert response.status_code == 200
    chunks = lines(response)
    assert len(chunks) == 4
    assert not any(c.get("done") for c in chunks)
    # llm/llama_server.go: the text ends with ": <detail>"
    assert response.text.endswith(
        '{"error":"an error was encountered while running the model: unexpected EOF"}\n'
    )
    with pytest.raises(ollama.ResponseError, match="an error was encountered"):
        for _ in oclient.chat(
            "llama3.2", user(SKY), stream=True, options={"emulator_fail_after": 3}
        ):
            pass
    before_first = http.post(
        "/api/generate",
        json={"model": "llama3.2", "prompt": "x"},
        headers={"X-Emulator-Fault": "fail-after-0"},
    )
    assert before_first.status_code == 500
    assert before_first.headers["content-type"] == "application/json"
    assert before_first.content == (
        b'{"error":"an error was encountered while running the model: unexpected EOF"}'
    )
    not_streamed = http.post(
        "/api/chat",
        json={**body, "stream": False},
    )
    assert not_streamed.status_code == 500


@pytest.mark.process
def test_midstream_error_openai_quirk(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        json={"model": "llama3.2", "messages": user(SKY), "stream": True},
        headers={"X-Emulator-Fault": "fail-after-2"},
    )
    assert response.status_code == 200
    events = [json.loads(e) for e in sse_data(response.text)]  # no [DONE]
    assert len(events) == 3
    assert events[-1]["choices"] == [{"index": 0, "delta": {"content": ""}, "finish_reason": None}]
    assert all(e["choices"][0]["finish_reason"] is None for e in events)


@pytest.mark.process
def test_midstream_error_on_messages_and_responses_sends_no_event(http: httpx.Client) -> None:
    # middleware/anthropic.go and middleware/openai.go ResponsesWriter: the native error
    # line decodes as an empty ChatResponse, which converts to no event at all.
    messages = http.post(
        "/v1/messages",
        json={"model": "llama3.2", "max_tokens": 20, "messages": user(SKY), "stream": True},
        headers=fault("fail-after-3"),
    )
    assert messages.status_code == 200
    names = [name for name, _ in anthropic_events(messages.text)]
    assert names[0] == "message_start"
    assert names[-1] == "content_block_delta"
    assert not {"error", "message_delta", "message_stop"} & set(names)
    responses = http.post(
        "/v1/responses",
        json={"model": "llama3.2", "input": SKY, "stream": True},
        headers=fault("fail-after-3"),
    )
    assert responses.status_code == 200
    names = [name for name, _ in anthropic_events(responses.text)]
    assert names[-1] == "response.output_text.delta"
    assert not {"response.failed", "response.completed", "error"} & set(names)


@pytest.mark.process
def test_reset_status_and_hang_faults(emu: EmulatorServer, http: httpx.Client) -> None:
    body = {"model": "llama3.2", "prompt": SKY}
    received: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream(
            "POST", "/api/generate", json=body, headers={"X-Emulator-Fault": "reset-after-3"}
        ) as r,
    ):
        received.extend(r.iter_lines())
    assert len([line for line in received if line]) == 3
    crashed = http.post("/api/generate", json=body, headers={"X-Emulator-Fault": "status-500"})
    assert crashed.status_code == 500
    assert crashed.content == b'{"error":"llama-server process has terminated: exit status 2"}'
    with pytest.raises(httpx.ReadTimeout):
        http.post("/api/chat", json=body, headers={"X-Emulator-Fault": "hang"}, timeout=0.3)
    log = wait_for(emu, lambda entries: entries[-1]["cancelled"])
    assert log[0]["aborted"]
    assert not log[0]["completed"]
    assert log[-1]["cancelled"]
    assert log[-1]["status"] is None


def wait_for(emu: EmulatorServer, condition: Any, timeout: float = 3.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        entries = emu.requests()
        if entries and condition(entries):
            return entries
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met; log: {entries}")
        time.sleep(0.02)


# --- request log and pacing --------------------------------------------------------------


@pytest.mark.process
def test_request_log_records_bodies_and_cancellation(
    emu: EmulatorServer, http: httpx.Client
) -> None:
    payload = json.dumps({"model": "llama3.2", "messages": user(SKY)}).encode()
    assert (
        http.post("/api/chat?trace=1", content=payload, headers={"X-Test": "yes"}).status_code
        == 200
    )
    emu.configure(token_delay=0.05)
    with http.stream("POST", "/api/chat", content=payload) as response:
        stream = response.iter_lines()
        assert json.loads(next(stream))["done"] is False
    first, second = wait_for(emu, lambda e: len(e) == 2 and e[1]["cancelled"])
    assert first["method"] == "POST"
    assert first["path"] == "/api/chat"
    assert first["query"] == "trace=1"
    assert ["x-test", "yes"] in first["headers"]
    assert first["body_len"] == len(payload)
    assert first["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert first["completed"]
    assert not first["cancelled"]
    assert first["status"] == 200
    # one write per NDJSON line
    assert first["chunks_sent"] == tokens.expected_generation("llama3.2", user(SKY)).chunk_count + 1
    assert first["bytes_sent"] > 0
    assert second["cancelled"]
    assert not second["completed"]
    assert 1 <= second["chunks_sent"] < tokens.DEFAULT_EVAL_COUNT
    http.get("/_emulator/requests")  # control calls are not logged
    assert len(emu.requests()) == 2
    emu.reset()
    assert emu.requests() == []


@pytest.mark.process
def test_headers_wait_for_the_first_token(emu: EmulatorServer, http: httpx.Client) -> None:
    emu.configure(first_token_delay=0.3, token_delay=0.01)
    started = time.monotonic()
    with http.stream(
        "POST", "/api/generate", json={"model": "llama3.2", "prompt": "hi"}
    ) as response:
        waited = time.monotonic() - started
        assert response.status_code == 200
        body = b"".join(response.iter_bytes())
    assert waited >= 0.28
    assert time.monotonic() - started >= 0.3 + 0.01 * tokens.DEFAULT_EVAL_COUNT * 0.9
    assert body.count(b"\n") == tokens.expected_generation("llama3.2", "hi").chunk_count + 1


def timed(http: httpx.Client, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(nanoseconds the client waited, the final native object)."""
    started = time.monotonic_ns()
    answer = http.post(path, json=body)
    elapsed = time.monotonic_ns() - started
    assert answer.status_code == 200, answer.text
    return elapsed, lines(answer)[-1] if body.get("stream", True) else answer.json()


def running(http: httpx.Client) -> list[str]:
    return [m["name"] for m in http.get("/api/ps").json()["models"]]


def timed_part(final: dict[str, Any]) -> int:
    return sum(
        final.get(key, 0) for key in ("load_duration", "prompt_eval_duration", "eval_duration")
    )


@pytest.mark.process
def test_durations_fit_in_the_time_the_request_took(
    emu: EmulatorServer, http: httpx.Client
) -> None:
    # server/routes.go: total_duration = time.Since(checkpointStart) at the final response,
    # so it holds the load, the prompt evaluation and the generation, and the client waited
    # at least that long. The emulator sleeps each duration it reports.
    cases = [
        ("/api/generate", {"model": "llama3.2", "prompt": SKY}),
        ("/api/chat", {"model": "qwen3", "messages": user(SKY)}),
        ("/api/chat", {"model": "llama3.2", "messages": user(SKY), "stream": False}),
    ]
    for path, body in cases:
        elapsed, final = timed(http, path, body)
        assert elapsed >= final["total_duration"] >= timed_part(final) > 0, (path, final)
    embed = {"model": "nomic-embed-text", "input": SKY, "stream": False}  # (stream: unused)
    elapsed, embedded = timed(http, "/api/embed", embed)
    assert elapsed >= embedded["total_duration"] >= embedded["load_duration"] > 0
    # A cold load (the model is not in /api/ps) is inside load_duration, and /api/ps lists
    # the model only once it is loaded (server/sched.go).
    emu.configure(cold_load_delay=0.4)
    warm = tokens.expected_generation("gemma:2b", user(SKY))
    results: list[tuple[int, dict[str, Any]]] = []
    cold = {"model": "gemma:2b", "messages": user(SKY), "stream": False}
    loader = threading.Thread(target=lambda: results.append(timed(http, "/api/chat", cold)))
    loader.start()
    time.sleep(0.15)
    assert "gemma:2b" not in running(http)  # still loading
    loader.join()
    ((elapsed, final),) = results
    assert "gemma:2b" in running(http)
    assert final["load_duration"] >= 0.4e9 > warm.load_duration
    assert elapsed >= final["total_duration"] >= timed_part(final)
    elapsed, again = timed(http, "/api/chat", cold)  # now warm: the model's own figure
    assert again["load_duration"] == warm.load_duration
    assert elapsed >= again["total_duration"] >= timed_part(again)


@pytest.mark.process
def test_waiting_for_a_slot_is_not_load_duration(emu: EmulatorServer, http: httpx.Client) -> None:
    # With OLLAMA_NUM_PARALLEL=1 a second request to a warm model waits for the slot
    # (llm/llama_server.go sem.Acquire, after checkpointLoaded): the wait lands in
    # total - load - prompt_eval - eval, not in load_duration.
    emu.configure(num_parallel=1, token_delay=0.02)
    expected = tokens.expected_generation("llama3.2", "first", num_predict=20)
    timed(http, "/api/generate", {"model": "llama3.2", "prompt": "warm up", "stream": False})
    results: dict[str, tuple[int, dict[str, Any]]] = {}

    def ask(prompt: str) -> None:
        with httpx.Client(base_url=emu.url, timeout=10) as own:
            body = {"model": "llama3.2", "prompt": prompt, "options": {"num_predict": 20}}
            results[prompt] = timed(own, "/api/generate", {**body, "stream": False})

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    wait_for(emu, lambda entries: len(entries) == 2)  # the first holds the slot
    second = threading.Thread(target=ask, args=("second",))
    second.start()
    first.join()
    second.join()
    for elapsed, final in results.values():
        assert final["load_duration"] == expected.load_duration  # no wait in it
        assert elapsed >= final["total_duration"] >= timed_part(final)
    residual = {p: final["total_duration"] - timed_part(final) for p, (_, final) in results.items()}
    # The pacing (token_delay above the model's rate) is in both residuals; the second's
    # also holds most of the first's generation: 20 tokens at 0.02 s.
    assert residual["second"] - residual["first"] >= 0.25e9


# --- scheduler (server/sched.go) ---------------------------------------------------------


def ps_models(http: httpx.Client) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in http.get("/api/ps").json()["models"]}


def expires_at(entry: dict[str, Any]) -> float:
    """expires_at in Unix seconds (Go's RFC3339Nano, nanoseconds cut to microseconds)."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", entry["expires_at"]).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(text).timestamp()


class PsWatch:
    """Polls /api/ps in the background: the most models it ever listed at once."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as own:
            while not self._stop.is_set():
                self.most = max(self.most, len(own.get("/api/ps").json()["models"]))
                time.sleep(0.01)

    def __enter__(self) -> PsWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def arrived(emu: EmulatorServer, count: int) -> None:
    """Wait until `count` inference requests (not /api/ps polls) have arrived."""
    wait_for(emu, lambda entries: sum(e["path"] != "/api/ps" for e in entries) >= count)


def in_thread(url: str, path: str, body: dict[str, Any]) -> tuple[threading.Thread, list[Any]]:
    """Send `body` from a thread of its own; the list gets (elapsed ns, final object)."""
    results: list[Any] = []

    def send() -> None:
        with httpx.Client(base_url=url, timeout=20) as own:
            results.append(timed(own, path, body))

    thread = threading.Thread(target=send)
    thread.start()
    return thread, results


@pytest.mark.process
def test_one_slot_makes_concurrent_requests_wait_in_a_staircase(emu: EmulatorServer) -> None:
    # llm/llama_server.go sem.Acquire: with one slot, four requests at once are served one
    # after the other; each waits for the work of those before it, outside load_duration.
    emu.configure(num_parallel=1, token_delay=0.02)
    body = {"model": "llama3.2", "options": {"num_predict": 15}, "stream": False}
    with httpx.Client(base_url=emu.url, timeout=10) as own:
        timed(own, "/api/generate", {**body, "prompt": "warm up"})
    together = threading.Barrier(4)
    finals: list[dict[str, Any]] = []

    def ask(prompt: str) -> None:
        with httpx.Client(base_url=emu.url, timeout=10) as own:
            own.get("/api/version")  # connected before the start line
            together.wait()
            finals.append(timed(own, "/api/generate", {**body, "prompt": prompt})[1])

    threads = [threading.Thread(target=ask, args=(f"q {i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    finals.sort(key=lambda f: f["total_duration"] - timed_part(f))
    residuals = [f["total_duration"] - timed_part(f) for f in finals]
    held = finals[0]["total_duration"] - finals[0]["load_duration"]  # one request's slot time
    for k, residual in enumerate(residuals):
        assert residual - residuals[0] == pytest.approx(k * held, rel=0.15, abs=0.03e9)
    warm = tokens.expected_generation("llama3.2", "q 0").load_duration
    assert all(f["load_duration"] == warm for f in finals)


@pytest.mark.process
def test_three_models_with_room_for_two_load_cold_and_evict_by_name(
    emu: EmulatorServer, http: httpx.Client
) -> None:
    # OLLAMA_MAX_LOADED_MODELS=2: a third model evicts one (processPending, count cap).
    # The victim is the shortest keep-alive, then the first name (findRunnerToUnload), not
    # the least recently used: with equal keep-alives, gemma:2b < llama3.2 < qwen3.
    emu.configure(max_loaded_models=2, cold_load_delay=0.2)
    order = ["llama3.2", "qwen3", "gemma:2b", "llama3.2", "qwen3", "gemma:2b"]
    # gemma evicts llama3.2; llama3.2 evicts gemma; qwen3 is still loaded; gemma evicts
    # llama3.2 (the first name of the two).
    cold = [True, True, True, True, False, True]
    loaded_after = [
        {"llama3.2:latest"},
        {"llama3.2:latest", "qwen3:latest"},
        {"qwen3:latest", "gemma:2b"},
        {"qwen3:latest", "llama3.2:latest"},
        {"qwen3:latest", "llama3.2:latest"},
        {"qwen3:latest", "gemma:2b"},
    ]
    with PsWatch(emu.url) as watch:
        for model, is_cold, expected in zip(order, cold, loaded_after, strict=True):
            body = {"model": model, "prompt": "hi", "options": {"num_predict": 2}}
            elapsed, final = timed(http, "/api/generate", {**body, "stream": False})
            warm = tokens.expected_generation(model, "hi").load_duration
            if is_cold:
                assert final["load_duration"] >= 0.2e9, model
            else:
                assert final["load_duration"] == warm, model
            assert elapsed >= final["total_duration"] >= timed_part(final)
            assert set(ps_models(http)) == expected
    assert watch.most == 2


@pytest.mark.process
def test_the_victim_is_the_shortest_keep_alive_that_is_idle(
    emu: EmulatorServer, http: httpx.Client
) -> None:
    emu.configure(max_loaded_models=2)
    generate = {"prompt": "hi", "stream": False, "options": {"num_predict": 2}}
    timed(http, "/api/generate", {**generate, "model": "qwen3", "keep_alive": "10m"})
    timed(http, "/api/generate", {**generate, "model": "gemma:2b", "keep_alive": "1h"})
    # Shortest keep-alive first, although gemma:2b sorts first by name.
    timed(http, "/api/generate", {**generate, "model": "llama3.2"})  # keep-alive 5m
    assert set(ps_models(http)) == {"gemma:2b", "llama3.2:latest"}
    # A busy runner is passed over for an idle one, whatever their keep-alives.
    emu.configure(token_delay=0.05)
    slow = {"model": "llama3.2", "prompt": "slow", "options": {"num_predict": 12}}
    busy, _ = in_thread(emu.url, "/api/generate", {**slow, "stream": False})
    arrived(emu, 4)
    time.sleep(0.05)
    emu.configure(token_delay=0.0)
    timed(http, "/api/generate", {**generate, "model": "qwen3", "keep_alive": "10m"})
    assert set(ps_models(http)) == {"llama3.2:latest", "qwen3:latest"}  # gemma:2b went
    busy.join()
    # When none is idle, the first in order is the victim, once its requests are done.
    emu.configure(token_delay=0.05)
    first, first_result = in_thread(emu.url, "/api/generate", {**slow, "stream": False})
    other = {"model": "qwen3", "prompt": "slow", "options": {"num_predict": 12}}
    second, _ = in_thread(emu.url, "/api/generate", {**other, "stream": False})
    arrived(emu, 7)
    time.sleep(0.05)
    emu.configure(token_delay=0.0)
    started = time.monotonic_ns()
    _, final = timed(http, "/api/generate", {**generate, "model": "gemma:2b"})
    first.join()
    second.join()
    # llama3.2 (5m) < qwen3 (10m): gemma:2b waited for llama3.2's request to finish.
    assert set(ps_models(http)) == {"qwen3:latest", "gemma:2b"}
    assert final["load_duration"] > 0.2e9  # the wait for the busy victim is load_duration
    assert time.monotonic_ns() - started >= final["load_duration"]
    assert first_result


@pytest.mark.process
def test_keep_alive_expiry_and_expires_at(emu: EmulatorServer, http: httpx.Client) -> None:
    emu.configure(cold_load_delay=0.2, token_delay=0.05)
    body = {"model": "gemma:2b", "prompt": "hi", "options": {"num_predict": 8}}
    thread, _ = in_thread(emu.url, "/api/generate", {**body, "keep_alive": 1, "stream": False})
    arrived(emu, 1)
    time.sleep(0.3)  # loaded, generating
    # Before the runner first goes idle its expires_at is Go's zero time, which /api/ps
    # reports as now + keep-alive on every poll (server/sched.go loadedModels).
    first = expires_at(ps_models(http)["gemma:2b"])
    time.sleep(0.1)
    assert expires_at(ps_models(http)["gemma:2b"]) > first
    thread.join()
    idle = expires_at(ps_models(http)["gemma:2b"])
    assert idle == pytest.approx(time.time() + 1, abs=0.3)
    time.sleep(0.1)
    assert expires_at(ps_models(http)["gemma:2b"]) == idle  # fixed once idle
    time.sleep(1.1)
    assert "gemma:2b" not in ps_models(http)  # unloaded at expiry
    emu.configure(token_delay=0.0)
    _, final = timed(http, "/api/generate", {**body, "stream": False})
    assert final["load_duration"] >= 0.2e9  # cold again
    # The last explicit keep_alive sticks: a request without one leaves it.
    timed(http, "/api/generate", {**body, "keep_alive": -1, "stream": False})
    timed(http, "/api/generate", {**body, "stream": False})
    assert expires_at(ps_models(http)["gemma:2b"]) > time.time() + 100 * 365 * 86400
    # OLLAMA_KEEP_ALIVE: the default for a runner loaded without keep_alive.
    emu.configure(keep_alive=0.3, cold_load_delay=0.0)
    timed(http, "/api/generate", {**body, "model": "llama3.2", "stream": False})
    assert "llama3.2:latest" in ps_models(http)
    time.sleep(0.5)
    assert "llama3.2:latest" not in ps_models(http)
    # keep_alive 0 with a prompt: unloaded as soon as the request ends.
    timed(http, "/api/generate", {**body, "model": "qwen3", "keep_alive": 0, "stream": False})
    assert "qwen3:latest" not in ps_models(http)


@pytest.mark.process
def test_a_vram_budget_puts_part_of_a_model_on_the_cpu(
    emu: EmulatorServer, http: httpx.Client
) -> None:
    emu.configure(vram_bytes=4_000_000_000)
    body = {"prompt": "hi", "options": {"num_predict": 4}, "stream": False}
    timed(http, "/api/generate", {**body, "model": "llama3.2"})
    llama = ps_models(http)["llama3.2:latest"]
    assert llama["size_vram"] == llama["size"] == 2_019_393_189 + 4096 * 114_688
    # qwen3 needs more than 80 % of the VRAM left: llama3.2 is evicted (Scheduler.load,
    # requireFull), and alone qwen3 still spills to the CPU.
    elapsed, final = timed(http, "/api/generate", {**body, "model": "qwen3"})
    qwen = ps_models(http)["qwen3:latest"]
    assert set(ps_models(http)) == {"qwen3:latest"}
    assert 0 < qwen["size_vram"] == 4_000_000_000 < qwen["size"]
    cpu_share = (qwen["size"] - qwen["size_vram"]) / qwen["size"]
    planned = tokens.expected_generation("qwen3", "hi", num_predict=4)
    slowdown = 1 + 9 * cpu_share
    assert final["eval_duration"] == pytest.approx(planned.eval_duration * slowdown, abs=10)
    assert final["prompt_eval_duration"] == pytest.approx(
        planned.prompt_eval_duration * slowdown, abs=10
    )
    assert final["eval_duration"] / final["eval_count"] > 3 * 8_604_120  # qwen3's GPU rate
    assert elapsed >= final["total_duration"] >= timed_part(final)
    # num_gpu 0 (no GPU in play): no fit check, and all of it on the CPU, ten times slower.
    cpu = {**body, "model": "gemma:2b", "options": {"num_predict": 4, "num_gpu": 0}}
    elapsed, final = timed(http, "/api/generate", cpu)
    gemma = ps_models(http)["gemma:2b"]
    assert (gemma["size_vram"], set(ps_models(http))) == (0, {"qwen3:latest", "gemma:2b"})
    planned = tokens.expected_generation("gemma:2b", "hi", num_predict=4)
    assert final["eval_duration"] == 10 * planned.eval_duration
    assert elapsed >= final["total_duration"] >= timed_part(final)


@pytest.mark.process
def test_a_different_num_ctx_reloads_the_model(emu: EmulatorServer, http: httpx.Client) -> None:
    # server/sched.go needsReload: the launched num_ctx differs (unless both automatic),
    # so processPending evicts the runner and loads it again, cold.
    emu.configure(cold_load_delay=0.3)
    body = {"model": "llama3.2", "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
    warm = tokens.expected_generation("llama3.2", "hi").load_duration
    _, final = timed(http, "/api/generate", body)
    assert final["load_duration"] >= 0.3e9
    assert ps_models(http)["llama3.2:latest"]["context_length"] == 4096
    _, final = timed(http, "/api/generate", body)
    assert final["load_duration"] == warm
    bigger = {**body, "options": {"num_predict": 2, "num_ctx": 8192}}
    thread, results = in_thread(emu.url, "/api/generate", bigger)
    arrived(emu, 3)
    time.sleep(0.15)
    assert "llama3.2:latest" not in ps_models(http)  # unloaded, and absent while it loads
    thread.join()
    ((_, final),) = results
    assert final["load_duration"] >= 0.3e9
    loaded = ps_models(http)["llama3.2:latest"]
    assert loaded["context_length"] == 8192
    assert loaded["size"] == 2_019_393_189 + 8192 * 114_688
    _, final = timed(http, "/api/generate", bigger)  # the same options: warm
    assert final["load_duration"] == warm
    # Back to the automatic context: 4096 differs from the launched 8192, a reload again.
    _, final = timed(http, "/api/generate", body)
    assert final["load_duration"] >= 0.3e9
    assert ps_models(http)["llama3.2:latest"]["context_length"] == 4096
    # An explicit value equal to the automatic one does not reload.
    same = {**body, "options": {"num_predict": 2, "num_ctx": 4096}}
    assert timed(http, "/api/generate", same)[1]["load_duration"] == warm
    # Nor does num_gpu -1 (the default); shift false does (a launch flag).
    default_gpu = {**body, "options": {"num_predict": 2, "num_gpu": -1}}
    assert timed(http, "/api/generate", default_gpu)[1]["load_duration"] == warm
    assert timed(http, "/api/generate", {**body, "shift": False})[1]["load_duration"] >= 0.3e9


@pytest.mark.process
def test_a_full_pending_queue_answers_503(emu: EmulatorServer, http: httpx.Client) -> None:
    # OLLAMA_MAX_QUEUE=1: one load runs (processPending), one request waits for it, the
    # next is refused at once (getRunner: ErrMaxQueue), before any output.
    emu.configure(max_queue=1, cold_load_delay=0.4)
    body = {"prompt": "hi", "stream": False, "options": {"num_predict": 2}}
    first_sent = time.monotonic()
    loading, loading_result = in_thread(emu.url, "/api/generate", {**body, "model": "llama3.2"})
    arrived(emu, 1)
    time.sleep(0.05)
    assert "llama3.2:latest" not in ps_models(http)  # absent while it loads
    later = time.monotonic() - first_sent
    queued, queued_result = in_thread(emu.url, "/api/generate", {**body, "model": "qwen3"})
    arrived(emu, 2)
    time.sleep(0.05)
    refused = http.post("/api/generate", json={**body, "model": "gemma:2b"})
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/json; charset=utf-8"
    assert refused.content == (
        b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'
    )
    openai_refused = http.post(
        "/v1/chat/completions", json={"model": "gemma:2b", "messages": user("hi")}
    )
    assert openai_refused.status_code == 503
    assert openai_refused.json()["error"]["type"] == "api_error"
    loading.join()
    queued.join()
    # The queued request waited for the rest of the first load, then loaded its own model.
    assert queued_result[0][1]["load_duration"] >= (0.75 - later) * 1e9
    assert loading_result[0][1]["load_duration"] >= 0.4e9
    assert set(ps_models(http)) == {"llama3.2:latest", "qwen3:latest"}
    # Warm requests take the fast path, never the queue.
    assert timed(http, "/api/generate", {**body, "model": "llama3.2"})[0] > 0


# --- OpenAI layer ------------------------------------------------------------------------


@pytest.mark.process
def test_openai_client_chat(oai: openai.OpenAI) -> None:
    expected = tokens.expected_generation("llama3.2", user(SKY), num_predict=7)
    completion = oai.chat.completions.create(model="llama3.2", messages=user(SKY), max_tokens=7)
    assert completion.choices[0].message.content == expected.text
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == expected.prompt_eval_count
    assert completion.usage.completion_tokens == 7
    assert re.fullmatch(r"chatcmpl-\d{1,3}", completion.id)
    assert completion.system_fingerprint == "fp_ollama"
    chunks = list(
        oai.chat.completions.create(
            model="llama3.2",
            messages=user(SKY),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    default = tokens.expected_generation("llama3.2", user(SKY))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == default.text
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == default.prompt_eval_count + default.eval_count
    plain = list(oai.chat.completions.create(model="llama3.2", messages=user(SKY), stream=True))
    assert all(c.usage is None for c in plain)
    assert plain[-1].choices[0].finish_reason == "stop"


@pytest.mark.process
def test_openai_client_reasoning_and_tools(oai: openai.OpenAI) -> None:
    expected = tokens.expected_generation("qwen3", user("hello"))
    completion = oai.chat.completions.create(model="qwen3", messages=user("hello"))
    message = completion.choices[0].message
    assert message.content == expected.text
    assert getattr(message, "reasoning", None) == expected.thinking
    none = oai.chat.completions.create(
        model="qwen3", messages=user("hello"), reasoning_effort="none"
    )
    assert getattr(none.choices[0].message, "reasoning", None) is None
    tool = oai.chat.completions.create(
        model="llama3.2",
        messages=user("Weather?"),
        tools=[WEATHER_TOOL],
    )
    assert tool.choices[0].finish_reason == "tool_calls"
    (call,) = tool.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)
    streamed = list(
        oai.chat.completions.create(
            model="llama3.2",
            messages=user("Weather?"),
            tools=[WEATHER_TOOL],
            stream=True,
        )
    )
    assert streamed[0].choices[0].delta.tool_calls
    assert streamed[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.process
def test_openai_sse_layout_new(http: httpx.Client) -> None:
    expected = tokens.expected_generation("llama3.2", user(SKY))
    body = streamed_with_usage(model="llama3.2", messages=user(SKY))
    response = http.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"] == "text/event-stream"
    data = sse_data(response.text)
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    assert len(events) == expected.chunk_count + 2  # tokens, finish, usage
    assert events[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "content": expected.chunks[0].content,
    }
    assert events[1]["choices"][0]["delta"] == {"content": expected.chunks[1].content}
    finish, usage = events[-2], events[-1]
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": expected.prompt_eval_count,
        "completion_tokens": expected.eval_count,
        "total_tokens": expected.prompt_eval_count + expected.eval_count,
    }
    assert len({e["created"] for e in events}) == 1
    assert len({e["id"] for e in events}) == 1
    assert list(events[0]) == ["id", "object", "created", "model", "system_fingerprint", "choices"]
    no_usage = sse_data(
        http.post("/v1/chat/completions", json={**body, "stream_options": None}).text
    )
    assert len(no_usage) == expected.chunk_count + 2  # tokens, finish, [DONE]
    assert all("usage" not in json.loads(d) for d in no_usage[:-1])


@pytest.mark.process
def test_openai_sse_layout_old(emu: EmulatorServer, http: httpx.Client) -> None:
    emu.configure(openai_layout="old")
    expected = tokens.expected_generation("llama3.2", user(SKY))
    body = streamed_with_usage(model="llama3.2", messages=user(SKY))
    data = sse_data(http.post("/v1/chat/completions", json=body).text)
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    assert all(d["role"] == "assistant" and "content" in d for d in deltas)
    assert [d["content"] for d in deltas[:-1]] == [c.content for c in expected.chunks]
    last = events[-2]["choices"][0]
    assert last == {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "finish_reason": "stop",
    }
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-2])
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == expected.eval_count


def fault(name: str) -> dict[str, str]:
    return {"X-Emulator-Fault": name}


@pytest.mark.process
def test_openai_chat_finish_reason_mapping(http: httpx.Client) -> None:
    # openai/openai.go FinishChunk (streamed) and ToChatCompletion (not streamed).
    body = {"model": "llama3.2", "messages": user(SKY), "stream": True}
    tools: dict[str, Any] = {"tools": [WEATHER_TOOL]}

    def streamed(headers: dict[str, str] | None = None, **extra: Any) -> Any:
        data = sse_data(
            http.post("/v1/chat/completions", json={**body, **extra}, headers=headers).text
        )
        assert data[-1] == "[DONE]"
        (choice,) = json.loads(data[-2])["choices"]
        assert choice["delta"] == {}
        return choice["finish_reason"]

    assert streamed() == "stop"
    assert streamed(fault("done-reason-none")) == "stop"  # empty → "stop"
    assert streamed(**tools) == "tool_calls"
    assert streamed(fault("done-reason-length"), **tools) == "length"  # only stop is remapped
    assert streamed(fault("done-reason-none"), **tools) == "tool_calls"

    def whole(headers: dict[str, str] | None = None, **extra: Any) -> Any:
        answer = http.post(
            "/v1/chat/completions", json={**body, "stream": False, **extra}, headers=headers
        )
        return answer.json()["choices"][0]

    assert whole()["finish_reason"] == "stop"
    assert whole(fault("done-reason-none"))["finish_reason"] is None  # empty → null
    assert whole(**tools)["finish_reason"] == "tool_calls"
    length = whole(fault("done-reason-length"), **tools)
    assert length["finish_reason"] == "length"
    assert length["message"]["tool_calls"]


@pytest.mark.process
def test_openai_chat_deltas_keep_empty_content(http: httpx.Client) -> None:
    # openai/openai.go toChunk: content is always set, so a reasoning-only delta has "".
    body = {"model": "qwen3", "messages": user("hello"), "stream": True}
    events = [
        json.loads(d) for d in sse_data(http.post("/v1/chat/completions", json=body).text)[:-1]
    ]
    first = events[0]["choices"][0]["delta"]
    assert list(first) == ["role", "content", "reasoning"]
    assert first["content"] == ""
    assert all("role" not in e["choices"][0]["delta"] for e in events[1:])


@pytest.mark.process
def test_openai_completions_finish_reason_and_created(
    emu: EmulatorServer, http: httpx.Client
) -> None:
    # openai/openai.go ToCompleteChunk: done_reason passed through (empty → null), and
    # `created` is time.Now() for each chunk.
    body = {"model": "llama3.2", "prompt": "Say hi", "stream": True}

    def last_reason(headers: dict[str, str] | None = None, **extra: Any) -> Any:
        data = sse_data(http.post("/v1/completions", json={**body, **extra}, headers=headers).text)
        return json.loads(data[-2])["choices"][0]["finish_reason"]

    assert last_reason() == "stop"
    assert last_reason(max_tokens=3) == "length"
    assert last_reason(fault("done-reason-none")) is None
    assert last_reason(fault("done-reason-unload")) == "unload"
    whole = http.post(
        "/v1/completions", json={**body, "stream": False}, headers=fault("done-reason-none")
    )
    assert whole.json()["choices"][0]["finish_reason"] is None
    emu.configure(token_delay=0.3)
    data = sse_data(http.post("/v1/completions", json={**body, "max_tokens": 6}).text)
    created = [json.loads(d)["created"] for d in data[:-1]]
    assert len(set(created)) >= 2, created
    assert created == sorted(created)


@pytest.mark.process
def test_openai_completions_embeddings_models(oai: openai.OpenAI, http: httpx.Client) -> None:
    expected = tokens.expected_generation("llama3.2", "Say hi", num_predict=4)
    completion = oai.completions.create(model="llama3.2", prompt="Say hi", max_tokens=4)
    assert completion.choices[0].text == expected.text
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4
    body = streamed_with_usage(model="llama3.2", prompt="Say hi")
    data = sse_data(http.post("/v1/completions", json=body).text)
    events = [json.loads(d) for d in data[:-1]]
    assert all(
        e["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for e in events[:-1]
    )
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == tokens.DEFAULT_EVAL_COUNT
    assert list(events[0]) == [
        "id",
        "object",
        "created",
        "choices",
        "model",
        "system_fingerprint",
        "usage",
    ]
    vectors = oai.embeddings.create(
        model="nomic-embed-text", input=["one", "two"]
    )  # base64 by default
    assert [d.index for d in vectors.data] == [0, 1]
    assert len(vectors.data[0].embedding) == 768
    reference = tokens.embedding_vector("nomic-embed-text", "two")
    assert max(abs(a - b) for a, b in zip(vectors.data[1].embedding, reference, strict=True)) < 1e-6
    assert vectors.usage.prompt_tokens == tokens.embed_prompt_tokens(["one", "two"])
    as_float = oai.embeddings.create(model="nomic-embed-text", input="one", encoding_format="float")
    assert len(as_float.data[0].embedding) == 768
    raw = http.post(
        "/v1/embeddings",
        json={"model": "nomic-embed-text", "input": "one", "encoding_format": "base64"},
    )
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    # The float format is the shortest float32 text, so it parses back to the same float32.
    assert packed == struct.pack("<768f", *as_float.data[0].embedding)
    ids = [m.id for m in oai.models.list()]
    assert "llama3.2:latest" in ids
    assert len(ids) == 4
    model = oai.models.retrieve("llama3.2")
    assert (model.id, model.owned_by, model.object) == ("llama3.2", "library", "model")
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nope")


# --- Anthropic layer ---------------------------------------------------------------------


@pytest.mark.process
def test_anthropic_messages_stream_and_json(http: httpx.Client) -> None:
    expected = tokens.expected_generation("qwen3", user("hello"), num_predict=10)
    body = {"model": "qwen3", "max_tokens": 10, "messages": user("hello"), "stream": True}
    response = http.post("/v1/messages", json=body)
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    events = anthropic_events(response.text)
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    starts = [
        data["content_block"]["type"] for name, data in events if name == "content_block_start"
    ]
    assert starts == ["thinking", "text"]
    assert names.count("content_block_stop") == 2
    thinking = "".join(
        d["delta"]["thinking"] for n, d in events if n == "content_block_delta" and d["index"] == 0
    )
    text = "".join(
        d["delta"]["text"] for n, d in events if n == "content_block_delta" and d["index"] == 1
    )
    assert (thinking, text) == (expected.thinking, expected.text)
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert delta["usage"] == {"input_tokens": expected.prompt_eval_count, "output_tokens": 10}
    assert re.fullmatch(r"msg_[0-9a-f]{24}", events[0][1]["message"]["id"])
    plain = http.post("/v1/messages", json={**body, "stream": False, "model": "llama3.2"}).json()
    assert plain["type"] == "message"
    assert plain["content"][0]["type"] == "text"
    assert plain["usage"]["output_tokens"] == 10
    tools = [{"name": "get_weather", "input_schema": WEATHER_TOOL["function"]["parameters"]}]
    used = http.post(
        "/v1/messages",
        json={**body, "stream": False, "model": "llama3.2", "max_tokens": 100, "tools": tools},
    ).json()
    assert used["stop_reason"] == "tool_use"
    assert used["content"][0]["type"] == "tool_use"


@pytest.mark.process
def test_anthropic_stop_reason_mapping_and_omitted_fields(http: httpx.Client) -> None:
    # anthropic/anthropic.go mapStopReason, StreamConverter.Process, MessagesResponse.
    body = {"model": "llama3.2", "max_tokens": 5, "messages": user("hello"), "stream": True}

    def streamed(headers: dict[str, str] | None = None, **extra: Any) -> list[Any]:
        text = http.post("/v1/messages", json={**body, **extra}, headers=headers).text
        return anthropic_events(text)

    events = streamed()
    start = events[0][1]["message"]
    assert list(start) == ["id", "type", "role", "model", "content", "usage"]  # no stop_*
    assert start["usage"]["output_tokens"] == 0
    delta = events[-2][1]
    assert list(delta) == ["type", "delta", "usage"]
    assert delta["delta"] == {"stop_reason": "max_tokens"}  # no stop_sequence
    assert streamed(fault("done-reason-stop"))[-2][1]["delta"] == {"stop_reason": "end_turn"}
    unusual = streamed(fault("done-reason-unload"))[-2][1]["delta"]
    assert unusual == {"stop_reason": "stop_sequence"}
    assert streamed(fault("done-reason-none"))[-2][1]["delta"] == {}  # omitted, not null

    whole = http.post("/v1/messages", json={**body, "stream": False}).json()
    assert list(whole) == ["id", "type", "role", "model", "content", "stop_reason", "usage"]
    assert whole["stop_reason"] == "max_tokens"
    plain = http.post(
        "/v1/messages", json={**body, "stream": False}, headers=fault("done-reason-none")
    ).json()
    assert "stop_reason" not in plain

    tools = [{"name": "get_weather", "input_schema": WEATHER_TOOL["function"]["parameters"]}]
    used = streamed(max_tokens=100, tools=tools)
    names = [name for name, _ in used]
    at = names.index("content_block_start")
    assert names[at : at + 3] == [
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
    ]
    block = used[at][1]["content_block"]
    assert list(block) == ["type", "id", "name", "input"]
    assert (block["type"], block["name"], block["input"]) == ("tool_use", "get_weather", {})
    partial = used[at + 1][1]["delta"]
    assert partial["type"] == "input_json_delta"
    assert set(json.loads(partial["partial_json"])) == {"city", "days"}
    assert used[-2][1]["delta"] == {"stop_reason": "tool_use"}


@pytest.mark.process
def test_anthropic_message_start_input_estimate(http: httpx.Client) -> None:
    # anthropic/anthropic.go EstimateCountTokens: byte lengths of system, roles, contents
    # and tools (input_schema raw, as sent), / 4.
    schema = WEATHER_TOOL["function"]["parameters"]
    body = {
        "model": "llama3.2",
        "max_tokens": 3,
        "system": "Be brief, café.",
        "messages": [
            {"role": "user", "content": "Weather in Zürich?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Which day?"}]},
            {"role": "user", "content": "today"},
        ],
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": schema}],
        "stream": True,
    }
    raw = json.dumps(body)  # ", " and ": " separators: the schema's bytes count as sent
    characters = (
        len("Be brief, café.".encode())
        + len("user") + len("Weather in Zürich?".encode())
        + len("assistant") + len("Which day?")
        + len("user") + len("today")
        + len("get_weather") + len("Weather") + len(json.dumps(schema))
    )  # fmt: skip
    events = anthropic_events(
        http.post("/v1/messages", content=raw, headers={"Content-Type": "application/json"}).text
    )
    assert events[0][1]["message"]["usage"]["input_tokens"] == characters // 4
    tiny = {"model": "llama3.2", "max_tokens": 3, "stream": True}
    tiny["messages"] = [{"role": "a", "content": ""}]
    first = anthropic_events(http.post("/v1/messages", json=tiny).text)[0][1]
    assert first["message"]["usage"]["input_tokens"] == 1  # at least 1 with any message


# --- OpenAI Responses API -------------------------------------------------------------


@pytest.mark.process
def test_openai_responses_api(oai: openai.OpenAI, http: httpx.Client) -> None:
    expected = tokens.expected_generation("qwen3", user("hello"))
    response = oai.responses.create(model="qwen3", input="hello")
    assert response.output_text == expected.text
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.usage is not None
    assert response.usage.input_tokens == expected.prompt_eval_count
    assert response.usage.output_tokens == expected.eval_count
    assert re.fullmatch(r"resp_\d{1,6}", response.id)
    body = {"model": "llama3.2", "input": "hello", "stream": True, "max_output_tokens": 3}
    raw = http.post("/v1/responses", json=body)
    assert raw.headers["content-type"] == "text/event-stream"
    assert raw.headers["cache-control"] == "no-cache"
    events = anthropic_events(raw.text)  # same `event:` + `data:` framing
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert all(list(data) == sorted(data) for _, data in events)  # Go maps: sorted keys
    completed = events[-1][1]["response"]
    short = tokens.expected_generation("llama3.2", user("hello"), num_predict=3)
    assert completed["usage"]["output_tokens"] == 3
    assert completed["usage"]["total_tokens"] == short.prompt_eval_count + 3
    assert completed["output"][0]["content"][0]["text"] == short.text
    missing = http.post("/v1/responses", json={"model": "nope", "input": "x"})
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"


# --- lifecycle, CLI flags, helpers ------------------------------------------------------


@pytest.mark.process
def test_stop_and_start_on_the_same_port_with_cli_flags() -> None:
    config = EmulatorConfig(version="0.9.0", openai_layout="old", token_delay=0.0)
    with EmulatorServer(config) as other:
        port = other.port
        assert httpx.get(f"{other.url}/api/version").json() == {"version": "0.9.0"}
        # Routes newer than the version are absent, as on an old server.
        assert httpx.post(f"{other.url}/v1/messages", json={}).status_code == 404
        assert httpx.get(f"{other.url}/_emulator/config").json()["openai_layout"] == "old"
        other.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{other.url}/api/version")
        other.start()
        assert other.port == port
        assert httpx.get(f"{other.url}/").text == "Ollama is running"


def test_go_json_and_time_formatting() -> None:
    assert dumps({"a": "<&>", "b": [1, 2.5, None, True], "c": "é\u2028"}) == (
        '{"a":"\\u003c\\u0026\\u003e","b":[1,2.5,null,true],"c":"é\\u2028"}'
    )
    assert (
        dumps([1e-7, 1e21, 1e20, 123456789.0, 0.000001])
        == "[1e-7,1e+21,100000000000000000000,123456789,0.000001]"
    )
    assert dumps([F32(0.1), F32(1 / 3)]) == "[0.1,0.33333334]"
    assert rfc3339nano(1_700_000_000_120_000_000) == "2023-11-14T22:13:20.12Z"
    assert rfc3339nano(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"


def test_token_accounting_is_deterministic() -> None:
    a = tokens.expected_generation("llama3.2", "same prompt")
    assert a == tokens.expected_generation("llama3.2:latest", "same prompt")
    assert a.text != tokens.expected_generation("gemma:2b", "same prompt").text
    assert a.done_reason == "stop"
    assert a.eval_count == tokens.DEFAULT_EVAL_COUNT
    limited = tokens.expected_generation("qwen3", "same prompt", num_predict=3)
    assert limited.done_reason == "length"
    assert limited.eval_count == 3
    assert limited.text_tokens == []
    assert tokens.embed_prompt_tokens(["one two three", ""]) == 4 + 2

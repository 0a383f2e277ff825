"""OpenAI-compatible streams: tokens are counted although the client did not ask for usage,
and the client sees exactly the stream it would have seen without the proxy."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.concerns.test_transparency import normalise
from tests.emulator import EmulatorConfig, EmulatorServer
from tests.metrics_support import scrape, total
from tests.support import ProxyProcess

pytestmark = pytest.mark.process

CHAT = [{"role": "user", "content": "Name three colours"}]


@pytest.fixture(scope="module", params=["new", "old"])
def chain(request: pytest.FixtureRequest) -> Iterator[tuple[EmulatorServer, ProxyProcess]]:
    """An emulator speaking the post- (new) or pre-0.32.6 (old) chunk layout, and a proxy."""
    with (
        EmulatorServer(EmulatorConfig(openai_layout=request.param)) as emulator,
        ProxyProcess(emulator.url, env={"PS_POLL_INTERVAL": "0"}) as proxy,
    ):
        yield emulator, proxy


def _usage(emulator: EmulatorServer, path: str, body: dict[str, Any]) -> tuple[int, int]:
    answer = httpx.post(emulator.url + path, json={**body, "stream": False}).json()
    return answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "llama3.2", "messages": CHAT, "stream": True}),
        ("/v1/chat/completions", {"model": "qwen3", "messages": CHAT, "stream": True}),
        ("/v1/completions", {"model": "llama3.2", "prompt": "Once upon", "stream": True}),
    ],
)
@pytest.mark.parametrize("asked", [False, True])
def test_stream_is_unchanged_and_tokens_are_counted(
    chain: tuple[EmulatorServer, ProxyProcess], path: str, body: dict[str, Any], asked: bool
) -> None:
    emulator, proxy = chain
    if asked:
        body = {**body, "stream_options": {"include_usage": True}}
    before = scrape(proxy.url)
    direct = httpx.post(emulator.url + path, content=json.dumps(body)).content
    proxied = httpx.post(proxy.url + path, content=json.dumps(body)).content
    assert normalise(proxied) == normalise(direct)
    assert (b'"usage"' in proxied) is asked
    assert proxied.endswith(b"data: [DONE]\n\n")
    after = scrape(proxy.url)
    prompt, completion = _usage(emulator, path, body)
    counted = {
        kind: total(after, "ollama_tokens_total", type=kind)
        - total(before, "ollama_tokens_total", type=kind)
        for kind in ("prompt", "completion")
    }
    assert counted == {"prompt": prompt, "completion": completion}


def test_the_openai_client_sees_no_usage_chunk(chain: tuple[EmulatorServer, ProxyProcess]) -> None:
    emulator, proxy = chain
    with (
        openai.OpenAI(base_url=proxy.url + "/v1", api_key="x") as proxied,
        openai.OpenAI(base_url=emulator.url + "/v1", api_key="x") as direct,
    ):
        through = list(
            proxied.chat.completions.create(model="llama3.2", messages=CHAT, stream=True)
        )
        plain = list(direct.chat.completions.create(model="llama3.2", messages=CHAT, stream=True))
    assert len(through) == len(plain)
    assert all(chunk.usage is None for chunk in through)
    assert [c.choices[0].delta.content for c in through] == [
        c.choices[0].delta.content for c in plain
    ]


def test_injection_can_be_turned_off(emulator: EmulatorServer) -> None:
    body = {"model": "llama3.2", "messages": CHAT, "stream": True}
    with ProxyProcess(
        emulator.url, env={"USAGE_INJECTION": "false", "PS_POLL_INTERVAL": "0"}
    ) as proxy:
        httpx.post(proxy.url + "/v1/chat/completions", content=json.dumps(body))
        samples = scrape(proxy.url)
    seen = [e for e in emulator.requests() if e["path"] == "/v1/chat/completions"]
    assert total(samples, "ollama_tokens_total") == 0
    assert total(samples, "ollama_requests_total", endpoint="/v1/chat/completions") == 1
    # The request reached Ollama exactly as the client wrote it: no stream_options added.
    assert seen[-1]["body_sha256"] == hashlib.sha256(json.dumps(body).encode()).hexdigest()

"""The real `ollama` and `openai` client libraries work through the proxy as they do directly."""

from __future__ import annotations

from collections.abc import Iterator

import ollama
import openai
import pytest

from tests.emulator import EmulatorServer
from tests.support import ProxyProcess

pytestmark = pytest.mark.process

MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture
def both(
    emulator: EmulatorServer, proxy: ProxyProcess
) -> Iterator[tuple[ollama.Client, ollama.Client]]:
    with ollama.Client(host=emulator.url) as direct, ollama.Client(host=proxy.url) as proxied:
        yield direct, proxied


def test_ollama_chat_streamed_and_not(both: tuple[ollama.Client, ollama.Client]) -> None:
    direct, proxied = both
    whole = proxied.chat(model="llama3.2", messages=MESSAGES)
    parts = list(proxied.chat(model="llama3.2", messages=MESSAGES, stream=True))
    expected = direct.chat(model="llama3.2", messages=MESSAGES)
    assert whole.message.content == expected.message.content
    assert "".join(p.message.content or "" for p in parts) == expected.message.content
    assert parts[-1].done is True
    assert parts[-1].eval_count == expected.eval_count
    assert parts[-1].prompt_eval_count == expected.prompt_eval_count
    assert len(parts) > 2


def test_ollama_generate_streamed_and_not(both: tuple[ollama.Client, ollama.Client]) -> None:
    direct, proxied = both
    whole = proxied.generate(model="llama3.2", prompt="Tell me a story", options={"num_predict": 7})
    parts = list(
        proxied.generate(
            model="llama3.2", prompt="Tell me a story", stream=True, options={"num_predict": 7}
        )
    )
    expected = direct.generate(
        model="llama3.2", prompt="Tell me a story", options={"num_predict": 7}
    )
    assert whole.response == expected.response
    assert "".join(p.response for p in parts) == expected.response
    assert whole.eval_count == 7
    assert whole.done_reason == "length"
    assert whole.context == expected.context


def test_ollama_thinking_and_tools(both: tuple[ollama.Client, ollama.Client]) -> None:
    direct, proxied = both
    thought = proxied.chat(model="qwen3", messages=MESSAGES, think=True)
    assert thought.message.thinking
    assert (
        thought.message.thinking
        == direct.chat(model="qwen3", messages=MESSAGES, think=True).message.thinking
    )

    def get_weather(city: str) -> str:
        """Weather for a city.

        Args:
            city: the city
        """
        return "sunny"

    called = proxied.chat(model="llama3.2", messages=MESSAGES, tools=[get_weather])
    assert called.message.tool_calls
    assert called.message.tool_calls[0].function.name == "get_weather"
    assert isinstance(called.message.tool_calls[0].function.arguments, dict)


def test_ollama_embeddings_and_models(both: tuple[ollama.Client, ollama.Client]) -> None:
    direct, proxied = both
    embedded = proxied.embed(model="nomic-embed-text", input=["one", "two"])
    assert (
        embedded.embeddings
        == direct.embed(model="nomic-embed-text", input=["one", "two"]).embeddings
    )
    assert len(embedded.embeddings) == 2
    legacy = proxied.embeddings(model="nomic-embed-text", prompt="one")
    assert legacy.embedding == direct.embeddings(model="nomic-embed-text", prompt="one").embedding
    assert [m.model for m in proxied.list().models] == [m.model for m in direct.list().models]
    proxied.generate(model="llama3.2", prompt="warm")
    assert "llama3.2:latest" in [m.model for m in proxied.ps().models]
    shown = proxied.show("llama3.2")
    assert shown.modelinfo is not None
    assert shown.details == direct.show("llama3.2").details


def test_ollama_pull_with_progress(both: tuple[ollama.Client, ollama.Client]) -> None:
    _, proxied = both
    progress = list(proxied.pull("llama3.2", stream=True))
    assert progress[0].status == "pulling manifest"
    assert progress[-1].status == "success"
    assert any(p.total and p.completed for p in progress)
    with pytest.raises(ollama.ResponseError) as failure:
        list(proxied.pull("no-such-model-anywhere", stream=True))
    assert "file does not exist" in str(failure.value)


def test_ollama_errors_arrive_as_ollama_errors(both: tuple[ollama.Client, ollama.Client]) -> None:
    _, proxied = both
    with pytest.raises(ollama.ResponseError) as failure:
        proxied.chat(model="missing-model", messages=MESSAGES)
    assert failure.value.status_code == 404
    assert "not found" in failure.value.error


def test_openai_client(emulator: EmulatorServer, proxy: ProxyProcess) -> None:
    with (
        openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused") as proxied,
        openai.OpenAI(base_url=emulator.url + "/v1", api_key="unused") as direct,
    ):
        _check_openai(proxied, direct)


def _check_openai(proxied: openai.OpenAI, direct: openai.OpenAI) -> None:
    whole = proxied.chat.completions.create(model="llama3.2", messages=MESSAGES)
    expected = direct.chat.completions.create(model="llama3.2", messages=MESSAGES)
    assert whole.choices[0].message.content == expected.choices[0].message.content
    assert whole.usage == expected.usage
    chunks = list(
        proxied.chat.completions.create(
            model="llama3.2",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.choices[0].message.content
    assert chunks[-1].usage == expected.usage
    vectors = proxied.embeddings.create(model="nomic-embed-text", input=["a", "b"])
    assert [d.embedding for d in vectors.data] == [
        d.embedding
        for d in direct.embeddings.create(model="nomic-embed-text", input=["a", "b"]).data
    ]
    assert [m.id for m in proxied.models.list()] == [m.id for m in direct.models.list()]
    assert proxied.models.retrieve("llama3.2").id == "llama3.2"
    with pytest.raises(openai.NotFoundError):
        proxied.chat.completions.create(model="missing-model", messages=MESSAGES)

"""Model names as Ollama resolves them (app.ollama.models): the implied ``:latest`` tag."""

from __future__ import annotations

import pytest

from app.ollama.models import normalise_model, recorded_model


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("llama3.2:1b", "llama3.2:1b"),
        (" qwen3 ", "qwen3:latest"),
        ("hf.co/org/repo:Q4_K_M", "hf.co/org/repo:Q4_K_M"),
        ("registry.local:5000/lib/m", "registry.local:5000/lib/m:latest"),
        ("", ""),
    ],
)
def test_normalise_model(given: str, expected: str) -> None:
    assert normalise_model(given) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # A digest pins the model as a tag does.
        ("llama3.2@sha256:0123abcd", "llama3.2@sha256:0123abcd"),
        ("library/llama3.2", "library/llama3.2:latest"),
        ("library/llama3.2:3b", "library/llama3.2:3b"),
        # Only the last path part can hold the tag: a registry port is not one.
        ("localhost:11434/m", "localhost:11434/m:latest"),
        ("  \t\n", ""),
        ("\tmistral:7b\n", "mistral:7b"),
        ("m:latest", "m:latest"),
    ],
)
def test_tags_digests_and_whitespace(given: str, expected: str) -> None:
    assert normalise_model(given) == expected


@pytest.mark.parametrize(
    "name", ["llama3.2", " qwen3 ", "a/b/c", "host:1/x", "x@sha256:1", "m:latest", ""]
)
def test_a_normalised_name_stays_as_it_is(name: str) -> None:
    once = normalise_model(name)
    assert normalise_model(once) == once


@pytest.mark.parametrize(
    ("name", "status", "expected"),
    [
        ("llama3.2", 200, "llama3.2:latest"),
        ("llama3.2", 500, "llama3.2:latest"),
        # Ollama refused the name: kept as sent, no ":latest" it never had.
        ("no-such-model", 404, "no-such-model"),
        ("Bad Name!", 400, "Bad Name!"),
        ("", 404, ""),
    ],
)
def test_recorded_model(name: str, status: int, expected: str) -> None:
    assert recorded_model(name, status) == expected

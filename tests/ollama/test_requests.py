"""What the proxy learns from request bodies, and how it asks for usage."""

from __future__ import annotations

import json

import pytest

from app.ollama.endpoints import classify
from app.ollama.requests import NO_FACTS, read_request


@pytest.mark.parametrize(
    ("path", "body", "model", "stream", "prompt"),
    [
        ("/api/generate", {"model": "llama3.2", "prompt": "Hi"}, "llama3.2", True, "Hi"),
        (
            "/api/chat",
            {
                "model": "m",
                "stream": False,
                "messages": [
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "a"},
                    {"role": "user", "content": "last"},
                    {"role": "tool", "content": "t"},
                ],
            },
            "m",
            False,
            "last",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            {"type": "image_url", "image_url": {"url": "x"}},
                        ],
                    }
                ],
            },
            "m",
            False,
            "look",
        ),
        (
            "/v1/messages",
            {
                "model": "m",
                "stream": True,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hey"}]}],
            },
            "m",
            True,
            "hey",
        ),
        ("/v1/completions", {"model": "m", "prompt": ["a", "b"]}, "m", False, "b"),
        ("/api/embed", {"model": "e", "input": ["x", "y"]}, "e", False, "x\ny"),
        ("/api/show", {"name": "old-client"}, "old-client", False, ""),
        ("/api/chat", {"model": 5, "messages": "no"}, "", True, ""),
    ],
)
def test_read_request(
    path: str, body: dict[str, object], model: str, stream: bool, prompt: str
) -> None:
    raw = json.dumps(body).encode()
    facts, sent = read_request(classify(path), raw, inject_usage=False)
    assert (facts.model, facts.stream, facts.prompt) == (model, stream, prompt)
    assert sent is raw


@pytest.mark.parametrize("raw", [b"", b"{oops", b"[1]", b"\xff", b'"text"'])
def test_unreadable_bodies_pass_untouched(raw: bytes) -> None:
    facts, sent = read_request(classify("/api/chat"), raw, inject_usage=True)
    assert facts is NO_FACTS
    assert sent is raw


def test_usage_is_asked_for_only_on_streams_that_did_not() -> None:
    endpoint = classify("/v1/chat/completions")
    body = {"model": "m", "messages": [], "stream": True, "stream_options": {"x": 1}}
    facts, sent = read_request(endpoint, json.dumps(body).encode(), inject_usage=True)
    assert facts.usage_injected is True
    assert json.loads(sent)["stream_options"] == {"x": 1, "include_usage": True}
    asked = {**body, "stream_options": {"include_usage": True}}
    facts, sent = read_request(endpoint, json.dumps(asked).encode(), inject_usage=True)
    assert facts.usage_injected is False
    not_streamed = {**body, "stream": False}
    facts, _ = read_request(endpoint, json.dumps(not_streamed).encode(), inject_usage=True)
    assert facts.usage_injected is False
    facts, _ = read_request(endpoint, json.dumps(body).encode(), inject_usage=False)
    assert facts.usage_injected is False


@pytest.mark.parametrize(
    ("options", "num_ctx"),
    [
        ({"num_ctx": 8192}, 8192),
        ({"num_ctx": 8192.0}, 8192),  # Go's decoder turns an integral float into the int
        ({"num_ctx": 0}, None),
        ({"num_ctx": -1}, None),
        ({"num_ctx": 1 << 40}, None),
        ({"num_ctx": "8192"}, None),
        ({"num_ctx": True}, None),
        ({"num_ctx": 1e400}, None),
        ({"num_ctx": None}, None),
        ({}, None),
        ("not options", None),
    ],
)
def test_num_ctx_is_read_only_when_usable(options: object, num_ctx: int | None) -> None:
    body = json.dumps({"model": "m", "prompt": "x", "options": options}).encode()
    facts, _ = read_request(classify("/api/generate"), body, inject_usage=False)
    assert facts.num_ctx == num_ctx


@pytest.mark.parametrize(
    ("body", "read"),
    [
        ({}, ()),
        ({"options": {"num_ctx": 8192.0, "temperature": 0.2}}, (("num_ctx", "8192"),)),
        (
            {"options": {"num_gpu": -1, "num_batch": 512, "use_mmap": False}, "shift": False},
            (("num_batch", "512"), ("use_mmap", "false"), ("shift", "false")),
        ),
        ({"options": {"num_gpu": 0, "main_gpu": 1}}, (("num_gpu", "0"), ("main_gpu", "1"))),
        ({"options": {"num_thread": "x" * 100}}, (("num_thread", "x" * 32),)),
        ({"options": {"num_ctx": {"deep": [1]}}, "shift": "yes"}, ()),
        ({"options": "junk"}, ()),
    ],
)
def test_the_options_that_force_a_reload_are_read(
    body: dict[str, object], read: tuple[tuple[str, str], ...]
) -> None:
    raw = json.dumps({"model": "m", "prompt": "hi", **body}).encode()
    facts, _ = read_request(classify("/api/generate"), raw, inject_usage=False)
    assert facts.reload_options == read

"""ApiKeyAdmission in-process: who gets through, what the refused see, what Ollama would get."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from app.auth import SCOPE_KEY, ApiKeys
from app.middleware.api_keys import ApiKeyAdmission
from tests.asgi import Exchange, Recording, call, http_scope

KEY = "sk-test-1234"


def admission(
    open_paths: frozenset[str] = frozenset(),
) -> tuple[ApiKeyAdmission, Recording, CollectorRegistry]:
    inner = Recording()
    registry = CollectorRegistry()
    keys = ApiKeys(f"alice:{KEY}", None)
    wrapper = ApiKeyAdmission(
        inner, keys, open_path=lambda path: path in open_paths, registry=registry
    )
    return wrapper, inner, registry


def failures(registry: CollectorRegistry, reason: str) -> float | None:
    return registry.get_sample_value("ollama_proxy_auth_failures_total", {"reason": reason})


def send(wrapper: ApiKeyAdmission, path: str, headers: list[tuple[bytes, bytes]]) -> Exchange:
    return asyncio.run(call(wrapper, http_scope(path, method="POST", headers=headers)))


def test_a_valid_key_passes_under_its_name_and_never_reaches_ollama() -> None:
    wrapper, inner, registry = admission()
    headers = [(b"authorization", f"Bearer {KEY}".encode()), (b"user-agent", b"ollama-python")]
    answer = send(wrapper, "/api/chat", headers)
    assert answer.status == 200
    assert answer.body == b"forwarded"
    (scope,) = inner.scopes
    assert scope[SCOPE_KEY] == "alice"
    assert scope["headers"] == [(b"user-agent", b"ollama-python")]
    assert failures(registry, "missing") == 0
    assert failures(registry, "invalid") == 0


def test_the_anthropic_header_is_a_key_too() -> None:
    wrapper, inner, _ = admission()
    assert send(wrapper, "/v1/messages", [(b"x-api-key", KEY.encode())]).status == 200
    assert inner.scopes[0][SCOPE_KEY] == "alice"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([], "missing"),
        ([(b"authorization", b"Bearer wrong")], "invalid"),
        ([(b"authorization", b"Basic YWxpY2U6eA==")], "invalid"),
    ],
)
def test_without_a_valid_key_nothing_goes_upstream(
    headers: list[tuple[bytes, bytes]], reason: str
) -> None:
    wrapper, inner, registry = admission()
    answer = send(wrapper, "/api/generate", headers)
    assert answer.status == 401
    assert answer.headers[b"www-authenticate"] == b'Bearer realm="ollama"'
    assert "API key" in answer.json()["error"]
    assert inner.scopes == []
    assert failures(registry, reason) == 1


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/api/chat", {"error"}),
        ("/v1/chat/completions", {"error"}),
        ("/v1/messages", {"type", "error", "request_id"}),
    ],
)
def test_the_401_speaks_the_paths_api(path: str, shape: set[str]) -> None:
    wrapper, _, _ = admission()
    body = send(wrapper, path, []).json()
    assert set(body) == shape
    if path.startswith("/v1/chat"):
        assert body["error"]["type"] == "api_error"


def test_open_paths_need_no_key_and_keep_their_headers() -> None:
    wrapper, inner, registry = admission(open_paths=frozenset({"/metrics"}))
    headers = [(b"authorization", b"Bearer a-metrics-token")]
    assert send(wrapper, "/metrics", headers).status == 200
    assert inner.scopes[0]["headers"] == headers  # /metrics' own token is not ours to strip
    assert SCOPE_KEY not in inner.scopes[0]
    assert failures(registry, "invalid") == 0


def test_a_cors_preflight_passes_without_a_key() -> None:
    wrapper, inner, registry = admission()
    headers = [(b"origin", b"http://app"), (b"access-control-request-method", b"POST")]
    scope = http_scope("/api/chat", method="OPTIONS", headers=headers)
    assert asyncio.run(call(wrapper, scope)).status == 200
    assert len(inner.scopes) == 1
    assert failures(registry, "missing") == 0


def test_a_websocket_without_a_key_is_closed_with_1008() -> None:
    wrapper, inner, _ = admission()
    answer = asyncio.run(call(wrapper, http_scope("/api/chat", kind="websocket")))
    assert answer.messages == [{"type": "websocket.close", "code": 1008}]
    assert inner.scopes == []

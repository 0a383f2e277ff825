"""DotSegmentGuard in-process, and the dot-segment test itself on hostile targets."""

from __future__ import annotations

import asyncio

import pytest

from app.middleware.dot_segments import DotSegmentGuard, has_dot_segment
from tests.asgi import Recording, call, http_scope


@pytest.mark.parametrize(
    "target",
    [
        b"/../api/tags",
        b"/api/../../admin",
        b"/api/./tags",
        b"/%2e%2e/admin",
        b"/%2E%2e/admin",
        b"/api/..%2fadmin",
        b"/api/..%5cadmin",
        b"/api\\..\\admin",
        b"/..",
        b"/api/..?x=1",
    ],
)
def test_dot_segments_are_found(target: bytes) -> None:
    assert has_dot_segment(target)


@pytest.mark.parametrize(
    "target",
    [
        b"/api/tags",
        b"/api/show",
        b"/api/blobs/sha256:abc",
        b"/v1/models/llama3.2:1b",
        b"/api/tags?path=../x",  # the query is not the path
        b"/files/.hidden",
        b"/files/a..b",
        b"/api/...",
    ],
)
def test_other_targets_are_not(target: bytes) -> None:
    assert not has_dot_segment(target)


def test_the_guard_answers_400_in_the_paths_shape_and_forwards_nothing() -> None:
    inner = Recording()
    guard = DotSegmentGuard(inner)
    scope = http_scope("/v1/chat/completions", raw_path=b"/v1/%2e%2e/chat/completions")
    answer = asyncio.run(call(guard, scope))
    assert answer.status == 400
    assert answer.json()["error"]["message"] == "the path must not contain . or .. segments"
    assert inner.scopes == []


def test_the_guard_passes_clean_requests_and_websockets() -> None:
    inner = Recording()
    guard = DotSegmentGuard(inner)
    assert asyncio.run(call(guard, http_scope("/api/tags"))).body == b"forwarded"
    asyncio.run(call(guard, http_scope("/../x", kind="websocket")))
    assert [scope["path"] for scope in inner.scopes] == ["/api/tags", "/../x"]

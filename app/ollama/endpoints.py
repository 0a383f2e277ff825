"""Which Ollama route a request is, and what kind of answer it gets.

The ``label`` of an endpoint is the only path text that reaches a metric label: any path
Ollama does not serve becomes ``other``, so a client probing random URLs cannot grow the
series count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Api = Literal["ollama", "openai", "anthropic"]
# How the answer of an endpoint is read (see ``app.ollama.streams``).
Shape = Literal[
    "generate",
    "chat",
    "embed",
    "embeddings",
    "openai_chat",
    "openai_completions",
    "openai_embeddings",
    "anthropic_messages",
    "none",
]
# OpenTelemetry GenAI operation names.
Operation = Literal["chat", "text_completion", "embeddings"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    label: str
    api: Api
    shape: Shape = "none"
    operation: Operation | None = None
    # What ``stream`` means when the request does not say (native streams by default).
    streams_by_default: bool = False
    # The request body is JSON naming a model (and maybe a prompt) worth reading.
    reads_body: bool = False

    @property
    def is_inference(self) -> bool:
        return self.operation is not None


def _native(
    label: str,
    shape: Shape = "none",
    *,
    operation: Operation | None = None,
    streams_by_default: bool = False,
    reads_body: bool = False,
) -> Endpoint:
    return Endpoint(label, "ollama", shape, operation, streams_by_default, reads_body)


_ENDPOINTS: dict[str, Endpoint] = {
    e.label: e
    for e in (
        _native("/"),
        _native("/api/version"),
        _native("/api/status"),
        _native("/api/tags"),
        _native("/api/ps"),
        _native("/api/show", reads_body=True),
        _native(
            "/api/generate",
            "generate",
            operation="text_completion",
            streams_by_default=True,
            reads_body=True,
        ),
        _native("/api/chat", "chat", operation="chat", streams_by_default=True, reads_body=True),
        _native("/api/embed", "embed", operation="embeddings", reads_body=True),
        _native("/api/embeddings", "embeddings", operation="embeddings", reads_body=True),
        _native("/api/pull", streams_by_default=True, reads_body=True),
        _native("/api/push", streams_by_default=True, reads_body=True),
        _native("/api/create", streams_by_default=True, reads_body=True),
        _native("/api/copy", reads_body=True),
        _native("/api/delete", reads_body=True),
        _native("/api/me"),
        _native("/api/signout"),
        _native("/api/experimental/web_search"),
        _native("/api/experimental/web_fetch"),
        _native("/api/experimental/model-recommendations"),
        Endpoint(
            "/v1/chat/completions", "openai", "openai_chat", operation="chat", reads_body=True
        ),
        Endpoint(
            "/v1/completions",
            "openai",
            "openai_completions",
            operation="text_completion",
            reads_body=True,
        ),
        Endpoint(
            "/v1/embeddings",
            "openai",
            "openai_embeddings",
            operation="embeddings",
            reads_body=True,
        ),
        Endpoint("/v1/models", "openai"),
        Endpoint("/v1/responses", "openai", reads_body=True),
        Endpoint("/v1/audio/transcriptions", "openai"),
        Endpoint(
            "/v1/messages", "anthropic", "anthropic_messages", operation="chat", reads_body=True
        ),
    )
}

# Routes with a parameter in the path, matched by prefix.
_PREFIXED = (
    ("/api/blobs/", _native("/api/blobs/:digest")),
    ("/v1/models/", Endpoint("/v1/models/:model", "openai")),
    ("/api/user/keys/", _native("/api/user/keys/:key")),
)

OTHER = _native("other")
OTHER_V1 = Endpoint("other", "openai")


def classify(path: str) -> Endpoint:
    """The endpoint for a request path (query string excluded)."""
    endpoint = _ENDPOINTS.get(path)
    if endpoint is not None:
        return endpoint
    for prefix, candidate in _PREFIXED:
        if path.startswith(prefix) and len(path) > len(prefix):
            return candidate
    return OTHER_V1 if path.startswith("/v1/") else OTHER


def known_labels() -> tuple[str, ...]:
    """Every value the ``endpoint`` label can take."""
    labels = [*_ENDPOINTS, *(endpoint.label for _, endpoint in _PREFIXED), OTHER.label]
    return tuple(dict.fromkeys(labels))

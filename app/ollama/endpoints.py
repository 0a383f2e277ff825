"""Which Ollama route a request is, and what kind of answer it gets.

The ``label`` of an endpoint is the only path text that reaches a metric label: any path
Ollama does not serve becomes ``other``, so a client probing random URLs cannot grow the
series count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The API a path speaks (``api_of``): its error shape and its clients.
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
    "openai_responses",
    "none",
]
# OpenTelemetry GenAI operation names.
Operation = Literal["chat", "text_completion", "embeddings"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    label: str
    shape: Shape = "none"
    operation: Operation | None = None
    # What ``stream`` means when the request does not say (native streams by default).
    streams_by_default: bool = False
    # The request body is JSON naming a model (and maybe a prompt) worth reading.
    reads_body: bool = False
    # An error line in the stream is Ollama's answer to the request (a pull of a model that
    # does not exist), not Ollama failing while it answered (server/routes.go PullHandler).
    stream_errors_are_answers: bool = False

    @property
    def is_inference(self) -> bool:
        return self.operation is not None


_ENDPOINTS: dict[str, Endpoint] = {
    e.label: e
    for e in (
        Endpoint("/"),
        Endpoint("/api/version"),
        Endpoint("/api/status"),
        Endpoint("/api/tags"),
        Endpoint("/api/ps"),
        Endpoint("/api/show", reads_body=True),
        Endpoint(
            "/api/generate",
            "generate",
            operation="text_completion",
            streams_by_default=True,
            reads_body=True,
        ),
        Endpoint("/api/chat", "chat", operation="chat", streams_by_default=True, reads_body=True),
        Endpoint("/api/embed", "embed", operation="embeddings", reads_body=True),
        Endpoint("/api/embeddings", "embeddings", operation="embeddings", reads_body=True),
        Endpoint(
            "/api/pull",
            streams_by_default=True,
            reads_body=True,
            stream_errors_are_answers=True,
        ),
        Endpoint(
            "/api/push",
            streams_by_default=True,
            reads_body=True,
            stream_errors_are_answers=True,
        ),
        Endpoint(
            "/api/create",
            streams_by_default=True,
            reads_body=True,
            stream_errors_are_answers=True,
        ),
        Endpoint("/api/copy", reads_body=True),
        Endpoint("/api/delete", reads_body=True),
        Endpoint("/api/me"),
        Endpoint("/api/signout"),
        Endpoint("/api/experimental/web_search"),
        Endpoint("/api/experimental/web_fetch"),
        Endpoint("/api/experimental/model-recommendations"),
        Endpoint("/v1/chat/completions", "openai_chat", operation="chat", reads_body=True),
        Endpoint(
            "/v1/completions",
            "openai_completions",
            operation="text_completion",
            reads_body=True,
        ),
        Endpoint(
            "/v1/embeddings",
            "openai_embeddings",
            operation="embeddings",
            reads_body=True,
        ),
        Endpoint("/v1/models"),
        Endpoint(
            "/v1/responses",
            "openai_responses",
            operation="chat",
            reads_body=True,
        ),
        Endpoint("/v1/audio/transcriptions"),
        Endpoint("/v1/messages", "anthropic_messages", operation="chat", reads_body=True),
    )
}

# Routes with a parameter in the path, matched by prefix.
_PREFIXED = (
    ("/api/blobs/", Endpoint("/api/blobs/:digest")),
    ("/v1/models/", Endpoint("/v1/models/:model")),
    ("/api/user/keys/", Endpoint("/api/user/keys/:key")),
)

OTHER = Endpoint("other")


def classify(path: str) -> Endpoint:
    """The endpoint for a request path (query string excluded)."""
    endpoint = _ENDPOINTS.get(path)
    if endpoint is not None:
        return endpoint
    for prefix, candidate in _PREFIXED:
        if path.startswith(prefix) and len(path) > len(prefix):
            return candidate
    return OTHER


def api_of(path: str) -> Api:
    """Which API a path speaks, and so which error shape its clients parse: ``anthropic``
    (``/v1/messages``), ``openai`` (any other ``/v1/``) or ``ollama``."""
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1/"):
        return "openai"
    return "ollama"


def known_labels() -> tuple[str, ...]:
    """Every value the ``endpoint`` label can take."""
    labels = [*_ENDPOINTS, *(endpoint.label for _, endpoint in _PREFIXED), OTHER.label]
    return tuple(dict.fromkeys(labels))

"""Which Ollama route a path is (app.ollama.endpoints): its label, shape, operation, API."""

from __future__ import annotations

import pytest

from app.ollama.endpoints import OTHER, api_of, classify, known_labels

# The routes whose answers carry token counts, with how each is read and named.
INFERENCE = {
    "/api/generate": ("generate", "text_completion"),
    "/api/chat": ("chat", "chat"),
    "/api/embed": ("embed", "embeddings"),
    "/api/embeddings": ("embeddings", "embeddings"),
    "/v1/chat/completions": ("openai_chat", "chat"),
    "/v1/completions": ("openai_completions", "text_completion"),
    "/v1/embeddings": ("openai_embeddings", "embeddings"),
    "/v1/messages": ("anthropic_messages", "chat"),
    "/v1/responses": ("openai_responses", "chat"),
}
PREFIXED = {"/api/blobs/:digest", "/v1/models/:model", "/api/user/keys/:key"}


@pytest.mark.parametrize(
    ("path", "label", "operation"),
    [
        ("/api/chat", "/api/chat", "chat"),
        ("/api/generate", "/api/generate", "text_completion"),
        ("/v1/chat/completions", "/v1/chat/completions", "chat"),
        ("/v1/messages", "/v1/messages", "chat"),
        ("/v1/embeddings", "/v1/embeddings", "embeddings"),
        ("/api/blobs/sha256:abc", "/api/blobs/:digest", None),
        ("/v1/models/llama3.2", "/v1/models/:model", None),
        ("/api/blobs/", "other", None),
        ("/wp-admin/setup.php", "other", None),
        ("/v1/unknown", "other", None),
    ],
)
def test_classify(path: str, label: str, operation: str | None) -> None:
    endpoint = classify(path)
    assert endpoint.label == label
    assert endpoint.operation == operation
    assert endpoint.label in known_labels()


@pytest.mark.parametrize(("path", "expected"), sorted(INFERENCE.items()))
def test_inference_routes_have_their_shape_and_operation(
    path: str, expected: tuple[str, str]
) -> None:
    endpoint = classify(path)
    assert (endpoint.shape, endpoint.operation) == expected
    assert endpoint.is_inference
    assert endpoint.reads_body


def test_every_other_route_is_read_as_no_inference() -> None:
    others = [label for label in known_labels() if label not in INFERENCE]
    assert "/api/tags" in others
    assert "other" in others
    for label in others:
        endpoint = classify(label)  # a prefixed label is a path under its own prefix
        assert endpoint.shape == "none", label
        assert endpoint.operation is None, label
        assert not endpoint.is_inference, label


@pytest.mark.parametrize(
    ("path", "streams"),
    [
        # Ollama's native routes stream unless told not to; OpenAI's and Anthropic's do not.
        ("/api/generate", True),
        ("/api/chat", True),
        ("/api/pull", True),
        ("/api/push", True),
        ("/api/create", True),
        ("/api/embed", False),
        ("/api/show", False),
        ("/v1/chat/completions", False),
        ("/v1/completions", False),
        ("/v1/messages", False),
        ("/v1/responses", False),
    ],
)
def test_what_stream_means_when_the_request_does_not_say(path: str, streams: bool) -> None:
    assert classify(path).streams_by_default is streams


@pytest.mark.parametrize(
    ("path", "reads"),
    [
        ("/api/show", True),
        ("/api/pull", True),
        ("/api/delete", True),
        ("/v1/responses", True),
        ("/api/tags", False),
        ("/api/version", False),
        ("/v1/models", False),
        ("/api/blobs/sha256:abc", False),  # an upload: bytes, not JSON naming a model
        ("/nowhere", False),
    ],
)
def test_which_request_bodies_are_worth_reading(path: str, reads: bool) -> None:
    assert classify(path).reads_body is reads


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/api/user/keys/abc", "/api/user/keys/:key"),
        ("/v1/models/hf.co/org/repo:Q4", "/v1/models/:model"),
        ("/v1/models", "/v1/models"),  # the list itself, not a prefixed route
        ("/v1/models/", "other"),  # a prefix with nothing after it names nothing
        ("/api/blobsX", "other"),
        ("/api/chat/", "other"),  # matching is exact: no trailing slash
        ("/API/CHAT", "other"),  # nor case folding
        ("/api/chat?stream=false", "other"),  # callers pass the path without its query
        ("", "other"),
        ("/", "/"),
    ],
)
def test_only_exact_routes_and_filled_prefixes_match(path: str, label: str) -> None:
    assert classify(path).label == label


def test_unknown_paths_share_one_endpoint() -> None:
    probes = [f"/{word}/{n}" for n in range(50) for word in ("admin", "api", "v1", ".env")]
    assert {classify(path) for path in probes} == {OTHER}
    assert OTHER.label == "other"
    assert not OTHER.is_inference
    assert not OTHER.reads_body


def test_known_labels_are_every_label_once() -> None:
    labels = known_labels()
    assert len(labels) == len(set(labels))
    assert labels[-1] == "other"
    assert set(INFERENCE) | PREFIXED <= set(labels)
    # Every label classifies as itself (a prefixed one is a path under its prefix too): no
    # label is unreachable.
    assert [classify(label).label for label in labels] == list(labels)


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/v1/messages", "anthropic"),
        ("/v1/messages/count_tokens", "anthropic"),
        ("/v1/chat/completions", "openai"),
        ("/v1/models/llama3.2", "openai"),
        ("/v1/unknown", "openai"),  # not a known route, still an OpenAI client's error shape
        ("/api/chat", "ollama"),
        ("/", "ollama"),
        ("/v1", "ollama"),
        ("/wp-admin", "ollama"),
    ],
)
def test_api_of(path: str, api: str) -> None:
    assert api_of(path) == api


@pytest.mark.parametrize("path", ["/api/pull", "/api/push", "/api/create"])
def test_an_error_line_in_a_transfer_stream_is_the_answer(path: str) -> None:
    # A pull of a model that does not exist ends with Ollama's own error line.
    assert classify(path).stream_errors_are_answers


@pytest.mark.parametrize("path", sorted(INFERENCE))
def test_an_error_line_in_an_inference_stream_is_ollama_failing(path: str) -> None:
    assert not classify(path).stream_errors_are_answers

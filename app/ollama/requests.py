"""What a request body says: the model, whether it streams, the prompt; and usage injection.

OpenAI-compatible streams carry token counts only when the client asked for them with
``stream_options.include_usage``. When it did not, the proxy asks on its behalf (the request
is rewritten here) and ``app.ollama.streams`` removes the extra usage from what the client
receives, so the client sees the stream it would have seen without the proxy.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from app.ollama.endpoints import Endpoint


@dataclass(frozen=True, slots=True)
class RequestFacts:
    # As the client sent it: ``app.ollama.models`` says how Ollama resolves it.
    model: str = ""
    stream: bool = False
    prompt: str = ""
    # The proxy added include_usage; the usage it brings must not reach the client.
    usage_injected: bool = False
    # options.num_ctx when the request set a usable one (a positive 32-bit integer).
    num_ctx: int | None = None
    # What the request asks of the runner that would make Ollama reload its model when the
    # loaded one was launched otherwise (``RELOAD_OPTIONS``), as (name, value) pairs.
    reload_options: tuple[tuple[str, str], ...] = ()


NO_FACTS = RequestFacts()

# The body fields that name the model, in the order Ollama's handlers read them
# (server/routes.go): model management accepts the older ``name``; a copy names its source.
_MODEL_FIELDS: dict[str, tuple[str, ...]] = {
    "/api/show": ("model", "name"),
    "/api/pull": ("model", "name"),
    "/api/push": ("model", "name"),
    "/api/delete": ("model", "name"),
    "/api/create": ("model", "name"),
    "/api/copy": ("source",),
}
_MODEL_FIELD = ("model",)


def path_facts(endpoint: Endpoint, path: str) -> RequestFacts:
    """The facts of a request that has no body to read: a model named in the (decoded) path."""
    if endpoint.label == "/v1/models/:model":
        return RequestFacts(model=path.removeprefix("/v1/models/"))
    return NO_FACTS


def read_request(
    endpoint: Endpoint, body: bytes, *, inject_usage: bool
) -> tuple[RequestFacts, bytes]:
    """The facts of a request body, and the body to send upstream (rewritten or the same).

    The body is read as Ollama's Go decoder reads it. One that is not a JSON object is
    Ollama's to refuse: it is passed on untouched, and so is any body that the rewrite could
    not reproduce exactly (see ``_decode``).
    """
    data, exact = _decode(body)
    if not isinstance(data, dict):
        return NO_FACTS, body
    model = next(
        (
            value
            for key in _MODEL_FIELDS.get(endpoint.label, _MODEL_FIELD)
            if isinstance(value := data.get(key), str) and value
        ),
        "",
    )
    stream = data.get("stream")
    if not isinstance(stream, bool):
        stream = endpoint.streams_by_default
    facts = RequestFacts(
        model=model,
        stream=stream,
        prompt=_prompt(endpoint, data),
        num_ctx=_num_ctx(data.get("options")),
        reload_options=_reload_options(data),
    )
    openai_stream = stream and endpoint.shape in ("openai_chat", "openai_completions")
    if inject_usage and exact and openai_stream:
        options = data.get("stream_options")
        if not isinstance(options, dict):
            options = {}
        if options.get("include_usage") is not True:
            data["stream_options"] = {**options, "include_usage": True}
            rewritten = _encode(data)
            if rewritten is not None:
                return dataclasses.replace(facts, usage_injected=True), rewritten
    return facts, body


def _num_ctx(options: object) -> int | None:
    """``options.num_ctx`` as Ollama would use it, or None (absent, not a number, < 1; a
    float Go's decoder would turn into an int counts as that int)."""
    if not isinstance(options, dict):
        return None
    value = options.get("num_ctx")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 31:
        return None
    return value


# The launch options server/sched.go ``runnerRef.needsReload`` compares with the request's
# (``num_gpu`` only when the request's is ≥ 0, its default -1 being "any"); ``shift`` (context
# shift) is a launch flag and a field of the request itself.
RELOAD_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "use_mmap")


def _reload_options(data: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    options = data.get("options")
    found: list[tuple[str, str]] = []
    if isinstance(options, dict):
        for name in RELOAD_OPTIONS:
            value = options.get(name)
            if value is None or isinstance(value, dict | list):
                continue
            if name == "num_gpu" and isinstance(value, int | float) and value < 0:
                continue
            found.append((name, _option_text(value)))
    shift = data.get("shift")
    if isinstance(shift, bool):
        found.append(("shift", _option_text(shift)))
    return tuple(found)


def _option_text(value: object) -> str:
    """An option's value as Ollama compares it (``8192.0`` is ``8192``), at most 32 chars."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = json.dumps(value) if isinstance(value, bool) else str(value)
    return text[:32]


_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # what JSON allows around a value


def _decode(body: bytes) -> tuple[Any, bool]:
    """The JSON value at the start of ``body`` as Go's ``json.Decoder`` reads it (which is
    how Ollama reads requests), or None; and whether re-encoding it gives the same request.

    Go replaces invalid UTF-8 in strings by U+FFFD, and its decoder reads the first value
    and leaves whatever follows: both are read here too, but such a body is not exact (a
    rewrite would change it beyond the injected field). A byte order mark or UTF-16 is an
    error to Go, unlike to ``json.loads``. Nesting deeper than Python's stack is left to
    Ollama unread.
    """
    exact = True
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = body.decode("utf-8", "replace")
        exact = False
    try:
        data, end = _DECODER.raw_decode(text, _skip_whitespace(text, 0))
    except (ValueError, RecursionError):
        return None, False
    return data, exact and _skip_whitespace(text, end) == len(text)


def _skip_whitespace(text: str, start: int) -> int:
    match = _WHITESPACE.match(text, start)
    return start if match is None else match.end()


def _encode(data: dict[str, Any]) -> bytes | None:
    """``data`` as compact JSON, or None if it holds what JSON cannot say (NaN, 1e400)."""
    try:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (the client wrote "\\ud800"): escaped again as it came.
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    except (ValueError, RecursionError):
        return None


def _prompt(endpoint: Endpoint, data: dict[str, Any]) -> str:
    """The text that says what the user wants: the prompt, or the last user message."""
    shape = endpoint.shape
    if shape in ("generate", "openai_completions"):
        prompt = data.get("prompt")
        if isinstance(prompt, list):
            prompt = next((p for p in reversed(prompt) if isinstance(p, str)), "")
        return prompt if isinstance(prompt, str) else ""
    if shape in ("chat", "openai_chat", "anthropic_messages"):
        messages = data.get("messages")
        if not isinstance(messages, list):
            return ""
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text_of(message.get("content"))
        return ""
    if shape in ("embed", "openai_embeddings"):
        text = data.get("input")
        if isinstance(text, list):
            return "\n".join(item for item in text if isinstance(item, str))
        return text if isinstance(text, str) else ""
    if shape == "embeddings":
        text = data.get("prompt")
        return text if isinstance(text, str) else ""
    if shape == "openai_responses":
        return _responses_input(data.get("input"))
    return ""


def _responses_input(value: object) -> str:
    """The user's words in a Responses ``input``: the string, or the last user message item
    (its ``content`` a string or ``input_text`` parts; openai/responses.go
    FromResponsesRequest)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return ""
    for item in reversed(value):
        if (
            isinstance(item, dict)
            and item.get("role") == "user"
            and item.get("type", "message") == "message"
        ):
            return _text_of(item.get("content"))
    return ""


def _text_of(content: object) -> str:
    """Message content as text: a string, or the text parts of an OpenAI/Anthropic part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return "\n".join(parts)
    return ""

"""Shared pieces of the OpenAI-compatible layer: error shapes, option mapping, ids.

Ollama's middleware rewrites every native error (status >= 400) into
`{"error":{"message","type","param","code"}}` with `json.Encoder` (trailing newline,
`application/json`), while its own validation uses gin's `AbortWithStatusJSON`.
"""

from __future__ import annotations

import calendar
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tests.emulator import gojson, parsing
from tests.emulator.native import Prepared
from tests.emulator.wire import (
    JSON,
    SSE,
    CollectedResponse,
    Failure,
    GoResponse,
    encoder_json,
    go_json,
)

__all__ = [
    "DONE_EVENT",
    "EFFORT",
    "BadRequest",
    "ChunkFramer",
    "collected",
    "completion_id",
    "decode_request",
    "include_usage",
    "native_options",
    "openai_abort",
    "openai_error",
    "openai_tool_calls",
    "unix_seconds",
    "usage_of",
]

DONE_EVENT = b"data: [DONE]\n\n"  # the end of an OpenAI event stream

_PARSE_TIME = "%Y-%m-%dT%H:%M:%S"


def _error_type(status: int) -> str:
    return {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")


def _error_body(status: int, message: str) -> dict[str, Any]:
    error = {"message": message, "type": _error_type(status), "param": None, "code": None}
    return {"error": error}


def openai_error(status: int, message: str) -> GoResponse:
    """A native error rewritten by the middleware's writeError (json.Encoder, no charset)."""
    return encoder_json(_error_body(status, message), status)


def openai_abort(message: str) -> GoResponse:
    """Validation inside the middleware itself: gin's AbortWithStatusJSON."""
    return go_json(_error_body(400, message), 400, content_type=JSON)


def unix_seconds(created_at: str) -> int:
    seconds = created_at.split(".", 1)[0].rstrip("Z")
    return calendar.timegm(time.strptime(seconds, _PARSE_TIME))


def usage_of(item: Mapping[str, Any]) -> dict[str, int]:
    prompt, completion = item.get("prompt_eval_count", 0), item.get("eval_count", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def decode_request(raw: bytes, schema: parsing.Schema) -> dict[str, Any]:
    try:
        return parsing.decode(raw, schema)
    except gojson.MissingBody:
        raise BadRequest("EOF") from None
    except gojson.DecodeError as err:
        raise BadRequest(str(err)) from None


class BadRequest(Exception):
    pass


EFFORT = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high"}
EFFORT |= {"max": "max", "xhigh": "max", "ultra": "max"}


def native_options(req: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    stop = req.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        options["stop"] = [s for s in stop if isinstance(s, str)]
    if req.get("max_tokens") is not None:
        options["num_predict"] = req["max_tokens"]
    for key in ("seed", "frequency_penalty", "presence_penalty"):
        if req.get(key) is not None:
            options[key] = req[key]
    options["temperature"] = 1.0 if req.get("temperature") is None else req["temperature"]
    options["top_p"] = 1.0 if req.get("top_p") is None else req["top_p"]
    return options


def include_usage(req: Mapping[str, Any]) -> bool:
    options = req.get("stream_options")
    return (
        bool(req.get("stream")) and isinstance(options, dict) and bool(options.get("include_usage"))
    )


def openai_tool_calls(calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Native calls → OpenAI shape, where `arguments` is a JSON string."""
    return [
        {
            "id": call.get("id", ""),
            "index": call["function"].get("index", 0),
            "type": "function",
            "function": {
                "name": call["function"]["name"],
                "arguments": gojson.dumps(call["function"]["arguments"]),
            },
        }
        for call in calls
    ]


def completion_id(prefix: str) -> str:
    # Ollama draws rand.Intn(999): ids repeat and must not be used as keys.
    return f"{prefix}-{random.randrange(999)}"


def collected(prepared: Prepared, finish: Any) -> CollectedResponse:
    assert prepared.items is not None
    return CollectedResponse(prepared.items, finish, lambda f: openai_error(f.status, f.message))


class ChunkFramer:
    """Base of the /v1/chat/completions and /v1/completions stream framers.

    Chat, layout "new": `created` is the first response's, pinned; otherwise (old chat
    layout, and every /v1/completions chunk) it is the time of each chunk.
    """

    media_type = SSE
    headers: Sequence[tuple[str, str]] = ()

    def __init__(self, chunk_id: str, model: str, layout: str, include_usage: bool) -> None:
        self.id = chunk_id
        self.model = model
        self.old = layout == "old"
        self.include_usage = include_usage
        self.pinned: int | None = None

    def _created(self) -> int:
        return int(time.time()) if self.pinned is None else self.pinned

    def failure_response(self, failure: Failure) -> GoResponse:
        return openai_error(failure.status, failure.message)

"""Anthropic Messages API (/v1/messages) on top of the native chat handler.

Streams use `event: <name>\\ndata: <json>\\n\\n` framing in the order message_start,
content_block_start/delta/stop per block (thinking, text, tool_use), message_delta
(stop_reason + usage), message_stop. `message_start` carries an input-token estimate
(`estimate_input_tokens`: ceil(characters / 4)); `message_delta` carries the real counts.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request

from tests.emulator import gojson, parsing
from tests.emulator.faults import Fault
from tests.emulator.native import collect_chat, prepare_chat
from tests.emulator.state import EmulatorState
from tests.emulator.wire import (
    SSE,
    SSE_HEADERS,
    ApiError,
    CollectedResponse,
    Failure,
    GoResponse,
    StreamResponse,
    encoder_json,
    sse_event,
)

__all__ = ["anthropic_error", "estimate_input_tokens", "messages"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_SCHEMA = parsing.Schema(
    "anthropic.MessagesRequest",
    {
        "model": parsing.STR,
        "max_tokens": parsing.INT,
        "messages": ("[]anthropic.MessageParam", frozenset({"array"})),
        "stream": parsing.BOOL,
        "tools": ("[]anthropic.Tool", frozenset({"array"})),
    },
)


def anthropic_error(status: int, message: str) -> GoResponse:
    body = {
        "type": "error",
        "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message},
        "request_id": f"req_{secrets.token_hex(12)}",
    }
    return encoder_json(body, status)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(str(block.get("text", "")) for block in content or [] if isinstance(block, dict))


def estimate_input_tokens(req: Mapping[str, Any]) -> int:
    characters = len(_text_of(req.get("system")))
    for message in req.get("messages") or []:
        characters += len(_text_of(message.get("content")))
    return math.ceil(characters / 4)


def _native_messages(req: Mapping[str, Any]) -> list[dict[str, Any]]:
    natives: list[dict[str, Any]] = []
    if req.get("system"):
        natives.append({"role": "system", "content": _text_of(req["system"])})
    for message in req.get("messages") or []:
        role, content = message.get("role", "user"), message.get("content")
        if isinstance(content, str):
            natives.append({"role": role, "content": content})
            continue
        entry: dict[str, Any] = {"role": role, "content": ""}
        for block in content or []:
            kind = block.get("type")
            if kind == "text":
                entry["content"] += str(block.get("text", ""))
            elif kind == "thinking":
                entry["thinking"] = str(block.get("thinking", ""))
            elif kind == "image":
                entry.setdefault("images", []).append((block.get("source") or {}).get("data", ""))
            elif kind == "tool_use":
                call = {
                    "id": block.get("id", ""),
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": block.get("input") or {},
                    },
                }
                entry.setdefault("tool_calls", []).append(call)
            elif kind == "tool_result":
                natives.append(
                    {
                        "role": "tool",
                        "content": _text_of(block.get("content")),
                        "tool_call_id": block.get("tool_use_id", ""),
                    }
                )
        if entry["content"] or len(entry) > 2:
            natives.append(entry)
    return natives


def _native_tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": tool.get("name", ""),
                "description": tool.get("description", ""),
                "parameters": tool.get("input_schema") or {},
            },
        }
        for tool in tools
    ]


def _think(req: Mapping[str, Any], can_think: bool) -> bool | None:
    thinking = req.get("thinking")
    if not isinstance(thinking, dict):
        return None
    if thinking.get("type") == "enabled":
        return True if can_think else None  # silently dropped on models that can't think
    return False if thinking.get("type") == "disabled" else None


def _stop_reason(item: Mapping[str, Any], used_tool: bool) -> str:
    if used_tool:
        return "tool_use"
    return "max_tokens" if item.get("done_reason") == "length" else "end_turn"


class _MessagesFramer:
    media_type = SSE
    headers = SSE_HEADERS

    def __init__(self, message_id: str, model: str, input_estimate: int) -> None:
        self.id = message_id
        self.model = model
        self.input_estimate = input_estimate
        self.started = False
        self.block: str | None = None
        self.index = -1
        self.used_tool = False

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        frames = self._close()
        self.index += 1
        self.block = kind
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        return [*frames, sse_event("content_block_start", start)]

    def _close(self) -> list[bytes]:
        if self.block is None:
            return []
        self.block = None
        return [
            sse_event("content_block_stop", {"type": "content_block_stop", "index": self.index})
        ]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse_event(
            "content_block_delta",
            {"type": "content_block_delta", "index": self.index, "delta": delta},
        )

    def frames(self, item: dict[str, Any]) -> list[bytes]:
        frames: list[bytes] = []
        if not self.started:
            self.started = True
            message: dict[str, Any] = {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": self.input_estimate, "output_tokens": 0},
            }
            frames.append(sse_event("message_start", {"type": "message_start", "message": message}))
        native = item.get("message", {})
        if native.get("thinking"):
            if self.block != "thinking":
                frames += self._open("thinking", {"type": "thinking", "thinking": ""})
            frames.append(self._delta({"type": "thinking_delta", "thinking": native["thinking"]}))
        if native.get("content"):
            if self.block != "text":
                frames += self._open("text", {"type": "text", "text": ""})
            frames.append(self._delta({"type": "text_delta", "text": native["content"]}))
        for call in native.get("tool_calls", []):
            self.used_tool = True
            function = call["function"]
            block = {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": function["name"],
                "input": {},
            }
            frames += self._open("tool_use", block)
            frames.append(
                self._delta(
                    {
                        "type": "input_json_delta",
                        "partial_json": gojson.dumps(function["arguments"]),
                    }
                )
            )
        if item.get("done"):
            frames += self._close()
            usage = {
                "input_tokens": item.get("prompt_eval_count", 0),
                "output_tokens": item.get("eval_count", 0),
            }
            delta = {"stop_reason": _stop_reason(item, self.used_tool), "stop_sequence": None}
            frames.append(
                sse_event(
                    "message_delta", {"type": "message_delta", "delta": delta, "usage": usage}
                )
            )
            frames.append(sse_event("message_stop", {"type": "message_stop"}))
        return frames

    def failure_frames(self, failure: Failure) -> list[bytes]:
        error = {"type": "error", "error": {"type": "api_error", "message": failure.message}}
        return [sse_event("error", error)]

    def failure_response(self, failure: Failure) -> GoResponse:
        return anthropic_error(failure.status, failure.message)


def _message(message_id: str, model: str, item: Mapping[str, Any]) -> dict[str, Any]:
    native = item.get("message", {})
    content: list[dict[str, Any]] = []
    if native.get("thinking"):
        content.append({"type": "thinking", "thinking": native["thinking"]})
    if native.get("content"):
        content.append({"type": "text", "text": native["content"]})
    for call in native.get("tool_calls", []):
        function = call["function"]
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": function["name"],
                "input": function["arguments"],
            }
        )
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(item, bool(native.get("tool_calls"))),
        "stop_sequence": None,
        "usage": {
            "input_tokens": item.get("prompt_eval_count", 0),
            "output_tokens": item.get("eval_count", 0),
        },
    }


def _validate(req: Mapping[str, Any]) -> None:
    if not req.get("model"):
        raise ApiError(400, "model is required")
    max_tokens = req.get("max_tokens")
    if not isinstance(max_tokens, int | float) or max_tokens <= 0:
        raise ApiError(400, "max_tokens is required and must be greater than 0")
    if not req.get("messages"):
        raise ApiError(400, "messages is required")


async def messages(request: Request, state: EmulatorState, fault: Fault) -> Any:
    try:
        req = parsing.decode(await request.body(), _SCHEMA)
        _validate(req)
    except gojson.MissingBody:
        return anthropic_error(400, "EOF")
    except gojson.DecodeError as err:
        return anthropic_error(400, str(err))
    except ApiError as err:
        return anthropic_error(err.status, err.message)
    model = str(req["model"])
    spec = state.catalog.lookup(model)
    options: dict[str, Any] = {"num_predict": int(req["max_tokens"])}
    for source, target in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("stop_sequences", "stop"),
    ):
        if req.get(source) is not None:
            options[target] = req[source]
    native = {
        "model": model,
        "messages": _native_messages(req),
        "tools": _native_tools(req.get("tools") or []),
        "options": options,
        "stream": bool(req.get("stream")),
        "think": _think(req, spec is not None and "thinking" in spec.capabilities),
    }
    try:
        prepared = prepare_chat(state, native, fault)
    except ApiError as err:
        return anthropic_error(err.status, err.message)
    message_id = f"msg_{secrets.token_hex(12)}"
    if prepared.items is None:
        return encoder_json(_message(message_id, model, prepared.special or {}))
    if prepared.stream:
        framer = _MessagesFramer(message_id, model, estimate_input_tokens(req))
        return StreamResponse(prepared.items, framer)
    return CollectedResponse(
        prepared.items,
        lambda items: encoder_json(_message(message_id, model, collect_chat(items))),
        lambda failure: anthropic_error(failure.status, failure.message),
    )

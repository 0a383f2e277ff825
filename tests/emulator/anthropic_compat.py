"""Anthropic Messages API (/v1/messages) on top of the native chat handler.

Streams use `event: <name>\ndata: <json>\n\n` framing in the order message_start,
content_block_start/delta/stop per block (thinking, text, tool_use), message_delta
(stop_reason + usage), message_stop, as anthropic/anthropic.go StreamConverter.Process
builds them. `message_start` carries `EstimateInputTokens` (about len/4 of the request);
`message_delta` the real counts. A runner failure mid-stream sends no event at all.
"""

from __future__ import annotations

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
    arrival_of,
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


def _go_len(text: Any) -> int:
    """Go's len(string): UTF-8 bytes."""
    return len(text.encode()) if isinstance(text, str) else 0


def _sorted_maps(value: Any) -> Any:
    """A decoded `any` marshals maps with sorted keys (Go map[string]any)."""
    if isinstance(value, dict):
        return {key: _sorted_maps(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_maps(item) for item in value]
    return value


_BLOCK_STRINGS = ("id", "name")
_IMAGE_FIELDS = ("type", "media_type", "data", "url")
_CITATION_FIELDS = ("type", "url", "title", "encrypted_index", "cited_text")


def _block_json(block: Mapping[str, Any]) -> str:
    """json.Marshal of an anthropic.ContentBlock decoded from `block` (struct field order,
    omitempty / omitzero as declared)."""
    out: dict[str, Any] = {"type": str(block.get("type") or "")}
    if isinstance(block.get("text"), str):
        out["text"] = block["text"]
    citations = block.get("citations")
    if isinstance(citations, list) and citations:
        out["citations"] = [
            {k: c.get(k, "") for k in _CITATION_FIELDS if k in ("type", "url", "title") or c.get(k)}
            for c in citations
            if isinstance(c, dict)
        ]
    source = block.get("source")
    if isinstance(source, dict):
        out["source"] = {
            k: source.get(k, "") for k in _IMAGE_FIELDS if k == "type" or source.get(k)
        }
    for key in _BLOCK_STRINGS:
        if block.get(key):
            out[key] = block[key]
    if isinstance(block.get("input"), dict):  # ordered map: top level keeps its order
        out["input"] = {k: _sorted_maps(v) for k, v in block["input"].items()}
    if block.get("tool_use_id"):
        out["tool_use_id"] = block["tool_use_id"]
    if block.get("content") is not None:
        out["content"] = _sorted_maps(block["content"])
    if block.get("is_error") is True:
        out["is_error"] = True
    if isinstance(block.get("thinking"), str):
        out["thinking"] = block["thinking"]
    if block.get("signature"):
        out["signature"] = block["signature"]
    return gojson.dumps(out)


def _count_block(block: Mapping[str, Any]) -> int:
    """anthropic/anthropic.go countContentBlock."""
    total = _go_len(block.get("text")) + _go_len(block.get("thinking"))
    if block.get("type") in ("tool_use", "tool_result"):
        total += len(_block_json(block).encode())
    return total


def _count_any(content: Any) -> int:
    """anthropic/anthropic.go countAnyContent (system: string, []any or anything else)."""
    if content is None:
        return 0
    if isinstance(content, str):
        return _go_len(content)
    if isinstance(content, list):
        return sum(_count_block(item) for item in content if isinstance(item, dict))
    return len(gojson.dumps(_sorted_maps(content)).encode())


def estimate_input_tokens(req: Mapping[str, Any], raw_body: str = "") -> int:
    """anthropic/anthropic.go EstimateCountTokens: (len(system) + Σ (len(role) + content)
    + Σ (len(name) + len(description) + len(raw input_schema))) / 4, at least 1 when
    there are messages or a system prompt. Lengths are UTF-8 bytes; the input schema is
    a json.RawMessage, so its bytes are counted exactly as the client sent them."""
    total = _count_any(req.get("system"))
    messages = req.get("messages") or []
    for message in messages:
        total += _go_len(message.get("role"))
        content = message.get("content")
        if content is None or isinstance(content, str):  # a string is one text block
            total += _go_len(content or "")
        else:
            total += _count_any(content)
    raw_tools = gojson.raw_elements(gojson.raw_members(raw_body).get("tools", ""))
    for index, tool in enumerate(req.get("tools") or []):
        raw = gojson.raw_members(raw_tools[index]) if index < len(raw_tools) else {}
        schema = raw.get("input_schema", "")
        if schema == "null":
            schema = ""
        if not raw and tool.get("input_schema") is not None:
            schema = gojson.dumps(tool["input_schema"])
        total += _go_len(tool.get("name")) + _go_len(tool.get("description")) + _go_len(schema)
    tokens = total // 4
    if tokens == 0 and (messages or req.get("system") is not None):
        tokens = 1
    return tokens


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


def map_stop_reason(reason: str, has_tool_calls: bool) -> str:
    """anthropic/anthropic.go mapStopReason; "" means the field is omitted."""
    if has_tool_calls:
        return "tool_use"
    if reason == "stop":
        return "end_turn"
    if reason == "length":
        return "max_tokens"
    return "stop_sequence" if reason else ""


class _MessagesFramer:
    """anthropic/anthropic.go StreamConverter.Process: native chat objects → events."""

    media_type = SSE
    headers = SSE_HEADERS

    def __init__(self, message_id: str, model: str, input_estimate: int) -> None:
        self.id = message_id
        self.model = model
        self.input_estimate = input_estimate
        self.first = True
        self.index = 0
        self.thinking_started = False
        self.thinking_done = False
        self.text_started = False
        self.tools_sent: set[str] = set()

    def _start(self, block: dict[str, Any]) -> bytes:
        event = {"type": "content_block_start", "index": self.index, "content_block": block}
        return sse_event("content_block_start", event)

    def _stop(self) -> bytes:
        event = {"type": "content_block_stop", "index": self.index}
        return sse_event("content_block_stop", event)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        event = {"type": "content_block_delta", "index": self.index, "delta": delta}
        return sse_event("content_block_delta", event)

    def _close_thinking(self) -> list[bytes]:
        if not self.thinking_started or self.thinking_done:
            return []
        self.thinking_done = True
        frame = self._stop()
        self.index += 1
        return [frame]

    def frames(self, item: dict[str, Any]) -> list[bytes]:
        frames: list[bytes] = []
        if self.first:
            self.first = False
            # The first response's prompt_eval_count when it has one (a first chunk that is
            # also the last), else the estimate. MessagesResponse: stop_* are omitempty.
            input_tokens = item.get("prompt_eval_count", 0) or self.input_estimate
            message = {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "usage": {"input_tokens": input_tokens, "output_tokens": 0},
            }
            frames.append(sse_event("message_start", {"type": "message_start", "message": message}))
        native = item.get("message", {})
        thinking, content = native.get("thinking", ""), native.get("content", "")
        if thinking and not self.thinking_done:
            if self.text_started:
                frames.append(self._stop())
                self.index += 1
                self.text_started = False
            if not self.thinking_started:
                self.thinking_started = True
                frames.append(self._start({"type": "thinking", "thinking": ""}))
            frames.append(self._delta({"type": "thinking_delta", "thinking": thinking}))
        if content:
            frames += self._close_thinking()
            if not self.text_started:
                self.text_started = True
                frames.append(self._start({"type": "text", "text": ""}))
            frames.append(self._delta({"type": "text_delta", "text": content}))
        for call in native.get("tool_calls", []):
            call_id = str(call.get("id", ""))
            if call_id in self.tools_sent:
                continue
            frames += self._close_thinking()
            if self.text_started:
                frames.append(self._stop())
                self.index += 1
                self.text_started = False
            function = call["function"]
            block: dict[str, Any] = {"type": "tool_use"}
            block.update((k, v) for k, v in (("id", call_id), ("name", function["name"])) if v)
            block["input"] = {}  # the arguments follow as one input_json_delta
            partial = gojson.dumps(function["arguments"])
            frames.append(self._start(block))
            frames.append(self._delta({"type": "input_json_delta", "partial_json": partial}))
            frames.append(self._stop())
            self.tools_sent.add(call_id)
            self.index += 1
        if item.get("done"):
            if self.text_started or (self.thinking_started and not self.thinking_done):
                frames.append(self._stop())
            reason = map_stop_reason(item.get("done_reason", ""), bool(self.tools_sent))
            usage = {
                "input_tokens": item.get("prompt_eval_count", 0),
                "output_tokens": item.get("eval_count", 0),
            }
            delta = {"stop_reason": reason} if reason else {}
            event = {"type": "message_delta", "delta": delta, "usage": usage}
            frames.append(sse_event("message_delta", event))
            frames.append(sse_event("message_stop", {"type": "message_stop"}))
        return frames

    def failure_frames(self, failure: Failure) -> list[bytes]:
        # middleware/anthropic.go: the native {"error"} line decodes as an empty
        # ChatResponse, for which Process emits nothing: no error event, no message_stop.
        return []

    def failure_response(self, failure: Failure) -> GoResponse:
        return anthropic_error(failure.status, failure.message)


def _message(message_id: str, model: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """anthropic/anthropic.go ToMessagesResponse (content is null when empty)."""
    native = item.get("message", {})
    content: list[dict[str, Any]] = []
    if native.get("thinking"):
        content.append({"type": "thinking", "thinking": native["thinking"]})
    if native.get("content"):
        content.append({"type": "text", "text": native["content"]})
    for call in native.get("tool_calls", []):
        function = call["function"]
        block: dict[str, Any] = {"type": "tool_use"}
        block.update((k, v) for k, v in (("id", call.get("id")), ("name", function["name"])) if v)
        block["input"] = function["arguments"]
        content.append(block)
    body: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content or None,
    }
    reason = map_stop_reason(item.get("done_reason", ""), bool(native.get("tool_calls")))
    if reason:
        body["stop_reason"] = reason
    body["usage"] = {
        "input_tokens": item.get("prompt_eval_count", 0),
        "output_tokens": item.get("eval_count", 0),
    }
    return body


def _validate(req: Mapping[str, Any]) -> None:
    if not req.get("model"):
        raise ApiError(400, "model is required")
    max_tokens = req.get("max_tokens")
    if not isinstance(max_tokens, int | float) or max_tokens <= 0:
        raise ApiError(400, "max_tokens is required and must be positive")
    if not req.get("messages"):
        raise ApiError(400, "messages is required")


async def messages(request: Request, state: EmulatorState, fault: Fault) -> Any:
    raw = await request.body()
    try:
        req = parsing.decode(raw, _SCHEMA)
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
        prepared = await prepare_chat(state, native, fault, arrival_of(request.scope))
    except ApiError as err:
        return anthropic_error(err.status, err.message)
    message_id = f"msg_{secrets.token_hex(12)}"
    if prepared.items is None:
        return encoder_json(_message(message_id, model, prepared.special or {}))
    if prepared.stream:
        estimate = estimate_input_tokens(req, raw.decode("utf-8", "replace"))
        framer = _MessagesFramer(message_id, model, estimate)
        return StreamResponse(prepared.items, framer)
    return CollectedResponse(
        prepared.items,
        lambda items: encoder_json(_message(message_id, model, collect_chat(items))),
        lambda failure: anthropic_error(failure.status, failure.message),
    )

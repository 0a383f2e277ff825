"""/v1/chat/completions on top of the native chat handler.

Two chunk layouts exist (config `openai_layout`):
* "new" (v0.32.6+): role only in the first delta, `finish_reason` in its own chunk with
  an empty delta, `created` fixed for the stream;
* "old": every delta is `{"role":"assistant","content":…}`, `finish_reason` rides on the
  last chunk, `created` is the time of each chunk.
Both end with the optional usage chunk (`choices: []`) and `data: [DONE]`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request

from tests.emulator import parsing
from tests.emulator.faults import Fault
from tests.emulator.native import collect_chat, prepare_chat
from tests.emulator.openai_common import (
    DONE_EVENT,
    EFFORT,
    BadRequest,
    ChunkFramer,
    collected,
    completion_id,
    decode_request,
    include_usage,
    native_options,
    openai_abort,
    openai_error,
    openai_tool_calls,
    unix_seconds,
    usage_of,
)
from tests.emulator.state import EmulatorState
from tests.emulator.wire import ApiError, Failure, StreamResponse, encoder_json, sse_data

__all__ = ["chat_completions"]

_CHAT = parsing.Schema(
    "openai.ChatCompletionRequest",
    {
        "model": parsing.STR,
        "messages": ("[]openai.Message", frozenset({"array"})),
        "stream": parsing.BOOL,
        "stream_options": ("openai.StreamOptions", frozenset({"object"})),
        "max_tokens": parsing.INT,
        "tools": ("[]api.Tool", frozenset({"array"})),
        "reasoning_effort": parsing.STR,
    },
)
_IMAGE_PREFIXES = (
    "data:;base64,",
    *(f"data:image/{kind};base64," for kind in ("jpeg", "jpg", "png", "webp")),
)


def _go_type_name(value: Any) -> str:
    if value is None:
        return "<nil>"
    return {bool: "bool", int: "float64", float: "float64", dict: "map[string]interface {}"}.get(
        type(value), type(value).__name__
    )


def _tool_calls(calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    converted = []
    for call in calls:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except json.JSONDecodeError:
            raise BadRequest("invalid tool call arguments") from None
        converted.append({"function": {"name": function.get("name", ""), "arguments": arguments}})
    return converted


def _messages(raw: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """openai.FromChatRequest: each content part becomes its own native message."""
    messages: list[dict[str, Any]] = []
    for message in raw:
        role = message.get("role", "")
        content = message.get("content")
        calls = _tool_calls(message.get("tool_calls") or [])
        if isinstance(content, str):
            entry = {"role": role, "content": content, "thinking": message.get("reasoning", "")}
            messages.append({**entry, "tool_calls": calls} if calls else entry)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
                    raise BadRequest("invalid message format")
                if part["type"] == "text":
                    messages.append({"role": role, "content": str(part.get("text", ""))})
                    continue
                url = part.get("image_url")
                url = url.get("url", "") if isinstance(url, dict) else str(url or "")
                prefix = next((p for p in _IMAGE_PREFIXES if url.startswith(p)), None)
                if prefix is None:
                    raise BadRequest("invalid image input")
                messages.append({"role": role, "content": "", "images": [url[len(prefix) :]]})
        elif calls:
            messages.append({"role": role, "content": "", "tool_calls": calls})
        else:
            raise BadRequest(f"invalid message content type: {_go_type_name(content)}")
    return messages


def _think(req: Mapping[str, Any]) -> Any:
    effort = req.get("reasoning_effort")
    if effort is None and isinstance(req.get("reasoning"), dict):
        effort = req["reasoning"].get("effort")
    if effort is None:
        return None
    if effort not in EFFORT:
        raise BadRequest(
            f"invalid reasoning value: '{effort}' "
            '(must be "none", "low", "medium", "high", or "max")'
        )
    return EFFORT[effort]


class _ChatFramer(ChunkFramer):
    def __init__(self, chunk_id: str, model: str, layout: str, include_usage: bool) -> None:
        super().__init__(chunk_id, model, layout, include_usage)
        self.first = True
        self.tool_call_sent = False

    def _chunk(self, choices: list[Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self._created(),
            "model": self.model,
            "system_fingerprint": "fp_ollama",
            "choices": choices,
        }

    def _delta(self, content: str, reasoning: str = "", calls: Any = None) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if self.old or self.first:
            delta["role"] = "assistant"
        if self.old or content or not (reasoning or calls):
            delta["content"] = content
        if reasoning:
            delta["reasoning"] = reasoning
        if calls:
            delta["tool_calls"] = calls
        self.first = False
        return delta

    def frames(self, item: dict[str, Any]) -> list[bytes]:
        if item.get("done"):
            reason = item.get("done_reason") or None
            if reason and self.tool_call_sent:
                reason = "tool_calls"
            delta = {"role": "assistant", "content": ""} if self.old else {}
            last = self._chunk([{"index": 0, "delta": delta, "finish_reason": reason}])
            chunks = [last]
            if self.include_usage:
                chunks.append({**last, "choices": [], "usage": usage_of(item)})
            return [*map(sse_data, chunks), DONE_EVENT]
        message = item.get("message", {})
        thinking, content = message.get("thinking", ""), message.get("content", "")
        calls = openai_tool_calls(message.get("tool_calls", []))
        self.tool_call_sent = self.tool_call_sent or bool(calls)
        deltas = []
        if thinking and (content or calls):  # one native chunk becomes two SSE chunks
            deltas.append(self._delta("", thinking))
            thinking = ""
        deltas.append(self._delta(content, thinking, calls))
        return [
            sse_data(self._chunk([{"index": 0, "delta": d, "finish_reason": None}])) for d in deltas
        ]

    def failure_frames(self, failure: Failure) -> list[bytes]:
        # The error line decodes as an empty ChatResponse: one empty delta, then silence.
        delta = {"role": "assistant", "content": ""} if self.old else {"content": ""}
        return [sse_data(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]))]


async def chat_completions(request: Request, state: EmulatorState, fault: Fault) -> Any:
    try:
        req = decode_request(await request.body(), _CHAT)
        if not req.get("messages"):
            raise BadRequest("[] is too short - 'messages'")
        native = {
            "model": req.get("model") or "",
            "messages": _messages(req["messages"]),
            "options": native_options(req),
            "stream": bool(req.get("stream")),
            "tools": req.get("tools") or [],
            "think": _think(req),
        }
    except BadRequest as err:
        return openai_abort(str(err))
    try:
        prepared = prepare_chat(state, native, fault)
    except ApiError as err:
        return openai_error(err.status, err.message)
    chunk_id = completion_id("chatcmpl")
    if prepared.items is None:
        return encoder_json(_chat_completion(chunk_id, prepared.special or {}))
    if prepared.stream:
        layout = state.config.openai_layout
        framer = _ChatFramer(chunk_id, prepared.model, layout, include_usage(req))
        return StreamResponse(prepared.items, framer)
    return collected(
        prepared, lambda items: encoder_json(_chat_completion(chunk_id, collect_chat(items)))
    )


def _chat_completion(chunk_id: str, item: Mapping[str, Any]) -> dict[str, Any]:
    native = item.get("message", {})
    message: dict[str, Any] = {
        "role": native.get("role", "assistant"),
        "content": native.get("content", ""),
    }
    if native.get("thinking"):
        message["reasoning"] = native["thinking"]
    if native.get("tool_calls"):
        message["tool_calls"] = openai_tool_calls(native["tool_calls"])
    reason = "tool_calls" if native.get("tool_calls") else item.get("done_reason") or None
    return {
        "id": chunk_id,
        "object": "chat.completion",
        "created": unix_seconds(item["created_at"]),
        "model": item["model"],
        "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "message": message, "finish_reason": reason}],
        "usage": usage_of(item),
    }

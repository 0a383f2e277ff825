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
import time
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
from tests.emulator.wire import (
    ApiError,
    Failure,
    StreamResponse,
    arrival_of,
    encoder_json,
    sse_data,
)

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
        "logprobs": parsing.BOOL,
        "top_logprobs": parsing.INT,
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


def _choice(delta: dict[str, Any], reason: str | None, logprobs: Any = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason}
    if logprobs:  # ChoiceLogprobs, omitempty
        choice["logprobs"] = {"content": logprobs}
    return choice


class _ChatFramer(ChunkFramer):
    """middleware/openai.go ChatWriter: one native chat object → SSE chunks."""

    def __init__(self, chunk_id: str, model: str, layout: str, include_usage: bool) -> None:
        super().__init__(chunk_id, model, layout, include_usage)
        self.first_sent = False
        self.tool_call_sent = False

    def _chunk(self, choices: list[Any], created: int | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self._created() if created is None else created,
            "model": self.model,
            "system_fingerprint": "fp_ollama",
            "choices": choices,
        }

    def _pin(self, item: Mapping[str, Any]) -> None:
        # ChatWriter pins the first response's created_at for the whole stream.
        if self.pinned is None:
            created_at = item.get("created_at")
            self.pinned = unix_seconds(created_at) if created_at else int(time.time())

    def frames(self, item: dict[str, Any]) -> list[bytes]:
        if self.old:
            return self._old_frames(item)
        self._pin(item)
        message = item.get("message", {})
        thinking, content = message.get("thinking", ""), message.get("content", "")
        calls = openai_tool_calls(message.get("tool_calls", []))
        logprobs = item.get("logprobs")
        done = bool(item.get("done"))
        chunks: list[dict[str, Any]] = []
        # A Done response with nothing in it is the metrics-only trailer: no content chunk.
        empty_trailer = done and self.first_sent and not (thinking or content or calls or logprobs)
        if not empty_trailer:
            chunks += self._stream_chunks(thinking, content, calls, logprobs)
            self.first_sent = True
        if done:
            # openai/openai.go FinishChunk: empty → "stop"; only "stop" becomes "tool_calls".
            reason = item.get("done_reason") or "stop"
            if reason == "stop" and self.tool_call_sent:
                reason = "tool_calls"
            finish = self._chunk([_choice({}, reason)])
            chunks.append(finish)
            if self.include_usage:
                chunks.append({**finish, "choices": [], "usage": usage_of(item)})
            return [*map(sse_data, chunks), DONE_EVENT]
        return [sse_data(chunk) for chunk in chunks]

    def _stream_chunks(
        self, thinking: str, content: str, calls: list[dict[str, Any]], logprobs: Any
    ) -> list[dict[str, Any]]:
        """openai/openai.go ToStreamChunks: a mixed thinking+content object splits in two."""
        role = {} if self.first_sent else {"role": "assistant"}
        if calls:
            self.tool_call_sent = True
        if thinking and (content or calls):
            reasoning = self._chunk([_choice({**role, "reasoning": thinking}, None, logprobs)])
            rest: dict[str, Any] = {"content": content}
            if calls:
                rest["tool_calls"] = calls
            return [reasoning, self._chunk([_choice(rest, None)])]
        delta: dict[str, Any] = {**role, "content": content}  # toChunk: content is never nil
        if thinking:
            delta["reasoning"] = thinking
        if calls:
            delta["tool_calls"] = calls
        return [self._chunk([_choice(delta, None, logprobs)])]

    def _old_frames(self, item: dict[str, Any]) -> list[bytes]:
        """Before v0.32.6 (openai/openai.go toChunk/ToChunks at 8edecb5c6^): the last chunk
        carries finish_reason, any non-empty one becomes "tool_calls" after a tool call,
        and `created` is each chunk's now."""
        message = item.get("message", {})
        thinking, content = message.get("thinking", ""), message.get("content", "")
        calls = openai_tool_calls(message.get("tool_calls", []))
        reason = item.get("done_reason") or None
        if reason and (self.tool_call_sent or calls):
            reason = "tool_calls"
        logprobs = item.get("logprobs")
        created = int(time.time())
        base = {"role": "assistant", "content": content}
        if thinking and (content or calls):
            first = {"role": "assistant", "content": "", "reasoning": thinking}
            second: dict[str, Any] = dict(base)
            if calls:
                second["tool_calls"] = calls
            chunks = [
                self._chunk([_choice(first, None, logprobs)], created),
                self._chunk([_choice(second, reason)], created),
            ]
        else:
            delta: dict[str, Any] = dict(base)
            if thinking:
                delta["reasoning"] = thinking
            if calls:
                delta["tool_calls"] = calls
            chunks = [self._chunk([_choice(delta, reason, logprobs)], created)]
        self.tool_call_sent = self.tool_call_sent or bool(calls)
        frames = [sse_data(chunk) for chunk in chunks]
        if item.get("done"):
            if self.include_usage:
                frames.append(sse_data({**chunks[-1], "choices": [], "usage": usage_of(item)}))
            frames.append(DONE_EVENT)
        return frames

    def failure_frames(self, failure: Failure) -> list[bytes]:
        # The error line decodes as an empty ChatResponse: one empty delta, then silence.
        return self.frames({"message": {"role": "assistant", "content": ""}})


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
            # openai/openai.go FromChatRequest
            "logprobs": req.get("logprobs") is True,
            "top_logprobs": req.get("top_logprobs") or 0,
        }
    except BadRequest as err:
        return openai_abort(str(err))
    try:
        prepared = await prepare_chat(state, native, fault, arrival_of(request.scope))
    except ApiError as err:
        return openai_error(err.status, err.message)
    chunk_id = completion_id("chatcmpl")
    layout = state.config.openai_layout
    old = layout == "old"
    if prepared.items is None:
        return encoder_json(_chat_completion(chunk_id, prepared.special or {}, old))
    if prepared.stream:
        framer = _ChatFramer(chunk_id, prepared.model, layout, include_usage(req))
        return StreamResponse(prepared.items, framer)
    return collected(
        prepared,
        lambda items: encoder_json(_chat_completion(chunk_id, collect_chat(items), old)),
    )


def _chat_completion(chunk_id: str, item: Mapping[str, Any], old: bool) -> dict[str, Any]:
    native = item.get("message", {})
    message: dict[str, Any] = {
        "role": native.get("role", "assistant"),
        "content": native.get("content", ""),
    }
    if native.get("thinking"):
        message["reasoning"] = native["thinking"]
    if native.get("tool_calls"):
        message["tool_calls"] = openai_tool_calls(native["tool_calls"])
    reason = item.get("done_reason") or None
    # openai/openai.go ToChatCompletion: only "stop" becomes "tool_calls"; empty → null.
    # (Before v0.32.6 any tool call made it "tool_calls".)
    if native.get("tool_calls") and (reason == "stop" or (old and reason)):
        reason = "tool_calls"
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": reason}
    if item.get("logprobs"):
        choice["logprobs"] = {"content": item["logprobs"]}
    return {
        "id": chunk_id,
        "object": "chat.completion",
        "created": unix_seconds(item["created_at"]),
        "model": item["model"],
        "system_fingerprint": "fp_ollama",
        "choices": [choice],
        "usage": usage_of(item),
    }

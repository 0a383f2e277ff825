"""OpenAI Responses API (/v1/responses, stateless), on top of the native chat handler.

Streamed events are Go maps in Ollama, so their keys come out sorted; the non-streamed
response is a Go struct with a fixed field order. Usage arrives in `response.completed`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request

from tests.emulator import parsing
from tests.emulator.faults import Fault
from tests.emulator.native import collect_chat, prepare_chat
from tests.emulator.openai_common import (
    EFFORT,
    BadRequest,
    collected,
    decode_request,
    openai_abort,
    openai_error,
    openai_tool_calls,
    unix_seconds,
)
from tests.emulator.state import EmulatorState
from tests.emulator.wire import (
    SSE,
    SSE_HEADERS,
    ApiError,
    Failure,
    GoResponse,
    StreamResponse,
    arrival_of,
    encoder_json,
    sse_event,
)

__all__ = ["responses"]

_SCHEMA = parsing.Schema(
    "openai.ResponsesRequest",
    {
        "model": parsing.STR,
        "instructions": parsing.STR,
        "max_output_tokens": parsing.INT,
        "stream": parsing.BOOL,
        "background": parsing.BOOL,
        "tools": ("[]openai.ResponsesTool", frozenset({"array"})),
    },
)


def _sorted(value: Any) -> Any:
    """A Go map[string]any marshals with sorted keys, recursively."""
    if isinstance(value, Mapping):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "input_image"):
            raise BadRequest(f"unknown content type: {kind}")
        texts.append(str(part.get("text", "")) if kind != "input_image" else "")
    return "".join(texts)


def _messages(req: Mapping[str, Any]) -> list[dict[str, Any]]:
    """openai.FromResponsesRequest."""
    messages: list[dict[str, Any]] = []
    if req.get("instructions"):
        messages.append({"role": "system", "content": req["instructions"]})
    raw = req.get("input")
    if isinstance(raw, str):
        if raw:
            messages.append({"role": "user", "content": raw})
        return messages
    if raw is not None and not isinstance(raw, list):
        raise BadRequest("input must be a string or array")
    for index, item in enumerate(raw or []):
        kind = item.get("type") or ("message" if item.get("role") else "")
        if kind == "message":
            messages.append(
                {"role": item.get("role", ""), "content": _content_text(item.get("content"))}
            )
        elif kind == "function_call":
            call = {
                "id": item.get("call_id", ""),
                "function": {"name": item.get("name", ""), "arguments": {}},
            }
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(
                {
                    "role": "tool",
                    "content": str(item.get("output", "")),
                    "tool_call_id": item.get("call_id", ""),
                }
            )
        elif kind != "reasoning":
            raise BadRequest(f"input[{index}]: unknown input item type: {item.get('type', '')}")
    return messages


def _tools(req: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "type": tool.get("type", "function"),
            "function": {
                "name": tool.get("name", ""),
                "description": tool.get("description") or "",
                "parameters": tool.get("parameters") or {},
            },
        }
        for tool in req.get("tools") or []
    ]


def _think(req: Mapping[str, Any]) -> Any:
    reasoning = req.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    return EFFORT.get(effort) if effort else None


def _usage(item: Mapping[str, Any]) -> dict[str, Any]:
    prompt, output = item.get("prompt_eval_count", 0), item.get("eval_count", 0)
    return {
        "input_tokens": prompt,
        "output_tokens": output,
        "total_tokens": prompt + output,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _request_echo(req: Mapping[str, Any]) -> dict[str, Any]:
    """Response fields copied from the request (ResponsesResponse field order)."""
    tools = [
        {
            "type": t.get("type", ""),
            "name": t.get("name", ""),
            "description": t.get("description"),
            "strict": t.get("strict"),
            "parameters": t.get("parameters"),
        }
        for t in req.get("tools") or []
    ]
    reasoning = req.get("reasoning")
    if not isinstance(reasoning, dict):
        reasoning = {}
    effort, summary = reasoning.get("effort"), reasoning.get("summary")
    return {
        "tools": tools,
        "text": {"format": (req.get("text") or {}).get("format") or {"type": "text"}},
        "top_p": 1.0 if req.get("top_p") is None else req["top_p"],
        "temperature": 1.0 if req.get("temperature") is None else req["temperature"],
        "reasoning": {"effort": effort, "summary": summary} if effort or summary else None,
        "max_output_tokens": req.get("max_output_tokens"),
        "background": bool(req.get("background")),
        "instructions": req.get("instructions") or None,
        "truncation": req.get("truncation") or "disabled",
    }


def _response_object(
    response_id: str,
    model: str,
    req: Mapping[str, Any],
    status: str,
    output: list[Any],
    usage: Any,
    created: int,
) -> dict[str, Any]:
    echo = _request_echo(req)
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "completed_at": None,
        "status": status,
        "incomplete_details": None,
        "model": model,
        "previous_response_id": None,
        "instructions": echo["instructions"],
        "output": output,
        "error": None,
        "tools": echo["tools"],
        "tool_choice": "auto",
        "truncation": echo["truncation"],
        "parallel_tool_calls": True,
        "text": echo["text"],
        "top_p": echo["top_p"],
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "top_logprobs": 0,
        "temperature": echo["temperature"],
        "reasoning": echo["reasoning"],
        "usage": usage,
        "max_output_tokens": echo["max_output_tokens"],
        "max_tool_calls": None,
        "store": False,
        "background": echo["background"],
        "service_tier": "default",
        "metadata": {},
        "safety_identifier": None,
        "prompt_cache_key": None,
    }


def _reasoning_item(item_id: str, thinking: str) -> dict[str, Any]:
    summary = [{"type": "summary_text", "text": thinking}]
    return {"id": item_id, "type": "reasoning", "summary": summary, "encrypted_content": thinking}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class _ResponsesFramer:
    media_type = SSE
    headers = SSE_HEADERS

    def __init__(self, response_id: str, item_id: str, model: str, req: Mapping[str, Any]) -> None:
        self.response_id, self.item_id, self.model, self.req = response_id, item_id, model, req
        self.sequence = 0
        self.first = True
        self.output_index = 0
        self.text = ""
        self.content_started = False
        self.tool_items: list[dict[str, Any]] = []
        self.thinking = ""
        self.reasoning_id = ""
        self.reasoning_done = False

    def _event(self, name: str, data: dict[str, Any]) -> bytes:
        data = {**data, "type": name, "sequence_number": self.sequence}
        self.sequence += 1
        return sse_event(name, _sorted(data))

    def _response(self, status: str, output: list[Any], usage: Any) -> dict[str, Any]:
        return _response_object(
            self.response_id, self.model, self.req, status, output, usage, int(time.time())
        )

    def _finish_reasoning(self) -> list[bytes]:
        if not self.reasoning_id or self.reasoning_done:
            return []
        self.reasoning_done = True
        index = self.output_index
        self.output_index += 1
        item = _reasoning_item(self.reasoning_id, self.thinking)
        common = {"item_id": self.reasoning_id, "output_index": index, "summary_index": 0}
        return [
            self._event("response.reasoning_summary_text.done", {**common, "text": self.thinking}),
            self._event("response.output_item.done", {"output_index": index, "item": item}),
        ]

    def frames(self, item: dict[str, Any]) -> list[bytes]:
        frames: list[bytes] = []
        message = item.get("message", {})
        if self.first:
            self.first = False
            for name in ("response.created", "response.in_progress"):
                frames.append(
                    self._event(name, {"response": self._response("in_progress", [], None)})
                )
        if message.get("thinking"):
            if not self.reasoning_id:
                self.reasoning_id = f"rs_{random.randrange(999999)}"
                added = {"id": self.reasoning_id, "type": "reasoning", "summary": []}
                frames.append(
                    self._event(
                        "response.output_item.added",
                        {"output_index": self.output_index, "item": added},
                    )
                )
            self.thinking += message["thinking"]
            delta = {
                "item_id": self.reasoning_id,
                "output_index": self.output_index,
                "summary_index": 0,
                "delta": message["thinking"],
            }
            frames.append(self._event("response.reasoning_summary_text.delta", delta))
        if message.get("tool_calls"):
            frames += self._finish_reasoning()
            frames += self._tool_calls(message["tool_calls"])
        elif message.get("content") and not self.tool_items:
            frames += self._finish_reasoning()
            frames += self._text(message["content"])
        if item.get("done"):
            frames += self._complete(item)
        return frames

    def _tool_calls(self, calls: list[dict[str, Any]]) -> list[bytes]:
        frames = []
        for i, call in enumerate(openai_tool_calls(calls)):
            item_id = f"fc_{random.randrange(999999)}_{i}"
            index = self.output_index + i
            base = {
                "id": item_id,
                "type": "function_call",
                "call_id": call["id"],
                "name": call["function"]["name"],
            }
            arguments = call["function"]["arguments"]
            done = {**base, "status": "completed", "arguments": arguments}
            self.tool_items.append(done)
            frames.append(
                self._event(
                    "response.output_item.added",
                    {
                        "output_index": index,
                        "item": {**base, "status": "in_progress", "arguments": ""},
                    },
                )
            )
            frames.append(
                self._event(
                    "response.function_call_arguments.delta",
                    {"item_id": item_id, "output_index": index, "delta": arguments},
                )
            )
            frames.append(
                self._event(
                    "response.function_call_arguments.done",
                    {"item_id": item_id, "output_index": index, "arguments": arguments},
                )
            )
            frames.append(
                self._event("response.output_item.done", {"output_index": index, "item": done})
            )
        return frames

    def _message_item(self, status: str) -> dict[str, Any]:
        content = [_text_part(self.text)] if status == "completed" else []
        return {
            "id": self.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def _text(self, content: str) -> list[bytes]:
        frames = []
        common = {"item_id": self.item_id, "output_index": self.output_index, "content_index": 0}
        if not self.content_started:
            self.content_started = True
            frames.append(
                self._event(
                    "response.output_item.added",
                    {"output_index": self.output_index, "item": self._message_item("in_progress")},
                )
            )
            frames.append(
                self._event("response.content_part.added", {**common, "part": _text_part("")})
            )
        self.text += content
        frames.append(
            self._event("response.output_text.delta", {**common, "delta": content, "logprobs": []})
        )
        return frames

    def _complete(self, item: Mapping[str, Any]) -> list[bytes]:
        frames = self._finish_reasoning()
        if not self.tool_items and self.content_started:
            common = {
                "item_id": self.item_id,
                "output_index": self.output_index,
                "content_index": 0,
            }
            frames.append(
                self._event(
                    "response.output_text.done", {**common, "text": self.text, "logprobs": []}
                )
            )
            frames.append(
                self._event("response.content_part.done", {**common, "part": _text_part(self.text)})
            )
            frames.append(
                self._event(
                    "response.output_item.done",
                    {"output_index": self.output_index, "item": self._message_item("completed")},
                )
            )
        output: list[Any] = []
        if self.reasoning_id:
            output.append(_reasoning_item(self.reasoning_id, self.thinking))
        if self.tool_items:
            output += self.tool_items
        elif self.content_started:
            output.append(self._message_item("completed"))
        response = self._response("completed", output, _usage(item))
        response["completed_at"] = int(time.time())
        frames.append(self._event("response.completed", {"response": response}))
        return frames

    def failure_frames(self, failure: Failure) -> list[bytes]:
        # middleware/openai.go ResponsesWriter: the error line decodes as an empty
        # ChatResponse, which the converter turns into no event at all (no response.failed).
        return []

    def failure_response(self, failure: Failure) -> GoResponse:
        return openai_error(failure.status, failure.message)


def _final(
    response_id: str, item_id: str, model: str, req: Mapping[str, Any], item: Mapping[str, Any]
) -> dict[str, Any]:
    """openai.ToResponse for stream:false (struct fields: omitempty on the output items)."""
    message = item.get("message", {})
    output: list[dict[str, Any]] = []
    if message.get("thinking"):
        output.append(_reasoning_item(f"rs_{response_id}", message["thinking"]))
    if message.get("tool_calls"):
        for i, call in enumerate(openai_tool_calls(message["tool_calls"])):
            output.append(
                {
                    "id": f"fc_{response_id}_{i}",
                    "type": "function_call",
                    "status": "completed",
                    "call_id": call["id"],
                    "name": call["function"]["name"],
                    "arguments": call["function"]["arguments"],
                }
            )
    else:
        text = message.get("content", "")
        output.append(
            {
                "id": item_id,
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [_text_part(text)],
            }
        )
    created = unix_seconds(item["created_at"])
    body = _response_object(response_id, model, req, "completed", output, _usage(item), created)
    body["completed_at"] = int(time.time())
    return body


async def responses(request: Request, state: EmulatorState, fault: Fault) -> Any:
    try:
        req = decode_request(await request.body(), _SCHEMA)
        native = {
            "model": req.get("model") or "",
            "messages": _messages(req),
            "tools": _tools(req),
            "options": {
                "temperature": 1.0 if req.get("temperature") is None else req["temperature"]
            },
            "stream": bool(req.get("stream")),
            "think": _think(req),
        }
    except BadRequest as err:
        return openai_abort(str(err))
    if req.get("top_p") is not None:
        native["options"]["top_p"] = req["top_p"]
    if req.get("max_output_tokens") is not None:
        native["options"]["num_predict"] = req["max_output_tokens"]
    try:
        prepared = await prepare_chat(state, native, fault, arrival_of(request.scope))
    except ApiError as err:
        return openai_error(err.status, err.message)
    model = str(native["model"])
    response_id, item_id = f"resp_{random.randrange(999999)}", f"msg_{random.randrange(999999)}"
    if prepared.items is None:
        return encoder_json(_final(response_id, item_id, model, req, prepared.special or {}))
    if prepared.stream:
        return StreamResponse(prepared.items, _ResponsesFramer(response_id, item_id, model, req))
    return collected(
        prepared,
        lambda items: encoder_json(_final(response_id, item_id, model, req, collect_chat(items))),
    )

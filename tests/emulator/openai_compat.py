"""/v1/completions, /v1/embeddings and /v1/models on top of the native handlers."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.requests import Request

from tests.emulator import parsing
from tests.emulator.catalog import namespace_of
from tests.emulator.faults import Fault
from tests.emulator.native import collect_generate, prepare_embed, prepare_generate
from tests.emulator.openai_common import (
    DONE_EVENT,
    BadRequest,
    ChunkFramer,
    collected,
    completion_id,
    decode_request,
    include_usage,
    native_options,
    openai_abort,
    openai_error,
    unix_seconds,
    usage_of,
)
from tests.emulator.state import EmulatorState
from tests.emulator.wire import (
    ApiError,
    Failure,
    GoResponse,
    Item,
    StreamResponse,
    arrival_of,
    encoder_json,
    sse_data,
)

__all__ = ["completions", "embeddings", "list_models", "retrieve_model"]

_COMPLETION = parsing.Schema(
    "openai.CompletionRequest",
    {
        "model": parsing.STR,
        "prompt": parsing.STR,
        "suffix": parsing.STR,
        "stream": parsing.BOOL,
        "stream_options": ("openai.StreamOptions", frozenset({"object"})),
        "max_tokens": parsing.INT,
    },
)
_EMBED = parsing.Schema(
    "openai.EmbedRequest",
    {
        "model": parsing.STR,
        "dimensions": parsing.INT,
        "encoding_format": parsing.STR,
    },
)


class _CompletionFramer(ChunkFramer):
    def _chunk(self, text: str, reason: str | None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": self._created(),
            "choices": [{"text": text, "index": 0, "finish_reason": reason}],
            "model": self.model,
            "system_fingerprint": "fp_ollama",
        }
        if self.include_usage:  # the middleware puts a zero usage on every chunk
            chunk["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return chunk

    def frames(self, item: dict[str, Any]) -> list[bytes]:
        # openai/openai.go ToCompleteChunk: finish_reason is done_reason passed through
        # (empty → null) and `created` is time.Now() for every chunk, in either layout.
        chunk = self._chunk(item.get("response", ""), item.get("done_reason") or None)
        chunks = [chunk]
        if item.get("done") and self.include_usage:
            chunks.append({**chunk, "choices": [], "usage": usage_of(item)})
        frames = [sse_data(c) for c in chunks]
        if item.get("done"):
            frames.append(DONE_EVENT)
        return frames

    def failure_frames(self, failure: Failure) -> list[bytes]:
        return [sse_data(self._chunk("", None))]


def _completion(chunk_id: str, item: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": chunk_id,
        "object": "text_completion",
        "created": unix_seconds(item["created_at"]),
        "model": item["model"],
        "system_fingerprint": "fp_ollama",
        "choices": [
            {
                "text": item.get("response", ""),
                "index": 0,
                "finish_reason": item.get("done_reason") or None,
            }
        ],
        "usage": usage_of(item),
    }


async def _single(item: dict[str, Any]) -> AsyncIterator[Item]:
    yield item


async def completions(request: Request, state: EmulatorState, fault: Fault) -> Any:
    try:
        req = decode_request(await request.body(), _COMPLETION)
    except BadRequest as err:
        return openai_abort(str(err))
    options = native_options(req)
    native = {
        "model": req.get("model") or "",
        "prompt": req.get("prompt") or "",
        "suffix": req.get("suffix") or "",
        "stream": bool(req.get("stream")),
        "options": options,
    }
    try:
        prepared = await prepare_generate(state, native, fault, arrival_of(request.scope))
    except ApiError as err:
        return openai_error(err.status, err.message)
    chunk_id = completion_id("cmpl")
    if prepared.items is None and not prepared.stream:
        return encoder_json(_completion(chunk_id, prepared.special or {}))
    if prepared.items is None:  # an empty prompt's load object still goes through the writer
        prepared.items = _single(prepared.special or {})
    if prepared.stream:
        framer = _CompletionFramer(
            chunk_id, prepared.model, state.config.openai_layout, include_usage(req)
        )
        return StreamResponse(prepared.items, framer)
    return collected(
        prepared, lambda items: encoder_json(_completion(chunk_id, collect_generate(items)))
    )


async def embeddings(request: Request, state: EmulatorState, fault: Fault) -> Any:
    try:
        req = decode_request(await request.body(), _EMBED)
    except BadRequest as err:
        return openai_abort(str(err))
    encoding = str(req.get("encoding_format") or "")
    if encoding and encoding.lower() not in ("float", "base64"):
        return openai_abort(
            f"Invalid value for 'encoding_format' = {encoding}. "
            "Supported values: ['float', 'base64']."
        )
    raw_input = req.get("input")
    if raw_input == "":
        raw_input = [""]
    if raw_input is None or raw_input == []:
        return openai_abort("invalid input")
    native = {
        "model": req.get("model") or "",
        "input": raw_input,
        "dimensions": req.get("dimensions"),
    }
    try:
        result = await prepare_embed(state, native, arrival_of(request.scope))
    except ApiError as err:
        return openai_error(err.status, err.message)
    data = []
    for index, vector in enumerate(result.vectors):
        embedding: Any = vector
        if encoding.lower() == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "embedding": embedding, "index": index})
    usage = {"prompt_tokens": result.prompt_eval_count, "total_tokens": result.prompt_eval_count}
    return encoder_json(
        {"object": "list", "data": data or None, "model": result.model, "usage": usage}
    )


async def list_models(request: Request, state: EmulatorState, fault: Fault) -> GoResponse:
    data = [
        {
            "id": spec.name,
            "object": "model",
            "created": modified // 1_000_000_000,
            "owned_by": namespace_of(spec.name),
        }
        for spec, modified in state.catalog.newest_first()
    ]
    return encoder_json({"object": "list", "data": data or None})


async def retrieve_model(request: Request, state: EmulatorState, fault: Fault) -> GoResponse:
    model = request.path_params["model"]
    spec = state.catalog.lookup(model)
    if spec is None:
        return openai_error(404, f"model '{model}' not found")
    created = state.catalog.modified_ns(spec.name) // 1_000_000_000
    return encoder_json(
        {"id": model, "object": "model", "created": created, "owned_by": namespace_of(model)}
    )

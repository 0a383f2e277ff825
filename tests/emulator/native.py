"""Native inference: /api/generate, /api/chat, /api/embed, /api/embeddings.

`prepare_generate` / `prepare_chat` validate a native request and return the stream
of native response objects; the OpenAI and Anthropic layers reuse them exactly as
Ollama's middlewares wrap the native handlers.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio
from starlette.requests import Request

from tests.emulator import gojson, parsing
from tests.emulator.catalog import ModelSpec, full_name, normalize
from tests.emulator.engine import Run, Step, run_steps
from tests.emulator.faults import Fault
from tests.emulator.scheduler import launch_options, sleep_until
from tests.emulator.state import EmulatorState
from tests.emulator.tokens import (
    WORDS,
    Expected,
    count_text_tokens,
    embed_prompt_duration,
    embed_prompt_tokens,
    embedding_vector,
    legacy_embedding,
    plan_generation,
)
from tests.emulator.wire import (
    JSON_PLAIN,
    NDJSON,
    ApiError,
    CollectedResponse,
    Failure,
    GoResponse,
    Item,
    StreamResponse,
    arrival_of,
    go_json,
)

__all__ = [
    "NdjsonFramer",
    "Prepared",
    "chat",
    "collect_chat",
    "collect_generate",
    "embed",
    "embeddings",
    "generate",
    "go_quote",
    "prepare_chat",
    "prepare_embed",
    "prepare_generate",
]

_METRIC_KEYS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


def go_quote(text: str) -> str:
    """Go's %q for the plain names that appear in Ollama's messages."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Prepared:
    model: str  # echoed exactly as the client sent it, like Ollama
    spec: ModelSpec
    stream: bool
    plan: Expected | None = None
    items: AsyncIterator[Item] | None = None
    special: dict[str, Any] | None = None  # the load/unload object


def _metrics(plan: Expected, step: Step) -> dict[str, int]:
    """api.Metrics of the final chunk: total and load from the run (server/routes.go
    stamps them: time.Since(checkpointStart), checkpointLoaded - checkpointStart), the
    counts from the plan, the eval durations from the run (llama-server's timings: the
    plan's, slowed by the runner's CPU share)."""
    values = {
        "total_duration": step.total_ns,
        "load_duration": step.load_ns,
        "prompt_eval_count": plan.prompt_eval_count,
        "prompt_eval_duration": step.prompt_eval_ns,
        "eval_count": plan.eval_count,
        "eval_duration": step.eval_ns,
    }
    return {key: value for key, value in values.items() if value}  # omitempty


def _logprobs(token: str, position: int, top: int) -> list[dict[str, Any]]:
    digest = hashlib.sha256(f"{position}\0{token}".encode()).digest()
    entry: dict[str, Any] = {
        "token": token,
        "logprob": -round(0.0001 + digest[0] / 1000, 4),
        "bytes": list(token.encode()),
    }
    if top:
        alternatives = [token] + [f" {WORDS[(digest[i + 1]) % len(WORDS)]}" for i in range(top - 1)]
        entry["top_logprobs"] = [
            {
                "token": alt,
                "logprob": -round(0.0001 + digest[0] / 1000 + rank * 1.5, 4),
                "bytes": list(alt.encode()),
            }
            for rank, alt in enumerate(alternatives)
        ]
    return [entry]


def _check_top_logprobs(req: Mapping[str, Any]) -> int | None:
    top = req.get("top_logprobs") or 0
    if not 0 <= top <= 20:
        raise ApiError(400, "top_logprobs must be between 0 and 20")
    return int(top) if req.get("logprobs") else None


def _capabilities(spec: ModelSpec, model: str, want: Sequence[str], verb: str) -> None:
    if "completion" not in spec.capabilities:
        raise ApiError(400, f"{go_quote(model)} does not support {verb}")
    missing = [cap for cap in want if cap not in spec.capabilities]
    if missing:
        raise ApiError(400, f"{full_name(spec.name)} does not support {' '.join(missing)}")


def _check_think(spec: ModelSpec, model: str, think: bool | None) -> None:
    if think and "thinking" not in spec.capabilities:
        raise ApiError(400, f"{go_quote(model)} does not support thinking")


def _lookup(state: EmulatorState, model: str) -> ModelSpec:
    if normalize(model) is None:
        raise ApiError(400, "invalid model name")
    spec = state.catalog.lookup(model)
    if spec is None:
        raise ApiError(404, f"model '{model}' not found")
    return spec


def _special(model: str, kind: str, reason: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "created_at": gojson.rfc3339nano()}
    if kind == "generate":
        body["response"] = ""
    else:
        body["message"] = {"role": "assistant", "content": ""}
    return {**body, "done": True, "done_reason": reason}


Logprobs = list[dict[str, Any]] | None


def _generate_chunk(
    model: str, plan: Expected, step: Step, raw: bool, logprobs: Logprobs
) -> dict[str, Any]:
    """api.GenerateResponse. The final one can carry text (llm/llama_server.go Completion:
    the stop event's content), but never logprobs (finalResp gets none)."""
    chunk: dict[str, Any] = {
        "model": model,
        "created_at": gojson.rfc3339nano(),
        "response": step.content,
    }
    if step.thinking:
        chunk["thinking"] = step.thinking
    chunk["done"] = step.final
    if step.final:
        if plan.done_reason:  # omitempty
            chunk["done_reason"] = plan.done_reason
        if not raw:
            chunk["context"] = plan.context
        chunk.update(_metrics(plan, step))
        if step.tool_calls:
            chunk["tool_calls"] = step.tool_calls
    elif logprobs:
        chunk["logprobs"] = logprobs
    return chunk


def _chat_chunk(model: str, plan: Expected, step: Step, logprobs: Logprobs) -> dict[str, Any]:
    """api.ChatResponse. llm/llama_server.go Chat: the final one carries the last delta
    (text, thinking, logprobs) and every tool call, accumulated until then."""
    message: dict[str, Any] = {"role": "assistant", "content": step.content}
    if step.thinking:
        message["thinking"] = step.thinking
    if step.tool_calls:
        message["tool_calls"] = step.tool_calls
    chunk: dict[str, Any] = {
        "model": model,
        "created_at": gojson.rfc3339nano(),
        "message": message,
        "done": step.final,
    }
    if step.final and plan.done_reason:  # omitempty
        chunk["done_reason"] = plan.done_reason
    if logprobs:
        chunk["logprobs"] = logprobs
    if step.final:
        chunk.update(_metrics(plan, step))
    return chunk


async def _items(
    steps: AsyncIterator[Step | Failure],
    top: int | None,
    chunk_of: Callable[[Step, Logprobs], dict[str, Any]],
) -> AsyncIterator[Item]:
    """One native object a step; a runner failure ends the stream; logprobs on request,
    one entry for each token a step shows."""
    position = 0
    async for step in steps:
        if isinstance(step, Failure):
            yield step
            return
        logprobs: Logprobs = None
        if top is not None and step.pieces:
            logprobs = [
                entry
                for offset, piece in enumerate(step.pieces)
                for entry in _logprobs(piece, position + offset, top)
            ]
            position += len(step.pieces)
        yield chunk_of(step, logprobs)


# (spec, num_predict, think, logprobs) -> the plan; (plan, step, logprobs) -> one object.
_Planner = Callable[[ModelSpec, int | None, bool | None, bool], Expected]
_Chunker = Callable[[Expected, Step, Logprobs], dict[str, Any]]


async def _prepare(
    state: EmulatorState,
    req: Mapping[str, Any],
    fault: Fault,
    arrival_ns: int,
    model: str,
    verb: str,
    has_input: bool,
    want: Sequence[str],
    top: int | None,
    planner: _Planner,
    chunk_of: _Chunker,
) -> Prepared:
    """What generate and chat share: options, load/unload without input, capabilities,
    then the scheduler's getRunner (`Scheduler.request`: a full pending queue is a 503
    before any output); the wait for the runner is the stream's first step."""
    spec = _lookup(state, model)
    options = req.get("options")
    parsing.validate_options(options)
    keep_alive = parsing.parse_keep_alive(req.get("keep_alive"))
    think = parsing.parse_think(req.get("think"))
    stream = req.get("stream") is not False
    if not has_input and keep_alive == 0:
        state.scheduler.expire(spec.name)  # server/sched.go expireRunner
        return Prepared(model, spec, stream, special=_special(model, verb, "unload"))
    _capabilities(spec, model, want, verb)
    _check_think(spec, model, think)
    launch = launch_options(spec, options, _shift(req))
    if not has_input:
        async with state.scheduler.runner(spec, launch, keep_alive, arrival_ns):
            pass
        return Prepared(model, spec, stream, special=_special(model, verb, "load"))
    plan = planner(spec, parsing.num_predict(options), think, top is not None)
    if fault.done_reason is not None:
        plan = replace(plan, done_reason=fault.done_reason)
    fault = fault.with_options(options)
    ticket = state.scheduler.request(spec, launch, keep_alive, arrival_ns)
    run = Run(spec, state.scheduler, state.config, ticket)
    steps = run_steps(plan, run, fault)
    items = _items(steps, top, lambda step, logprobs: chunk_of(plan, step, logprobs))
    return Prepared(model, spec, stream, plan, items)


def _shift(req: Mapping[str, Any]) -> bool | None:
    value = req.get("shift")
    return value if isinstance(value, bool) else None


def _num_keep(options: Mapping[str, Any] | None) -> int:
    value = (options or {}).get("num_keep")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return 4  # api/types.go DefaultOptions


async def prepare_generate(
    state: EmulatorState, req: Mapping[str, Any], fault: Fault, arrival_ns: int
) -> Prepared:
    top = _check_top_logprobs(req)
    model = str(req.get("model") or "")
    if not model:
        raise ApiError(404, "model '' not found")
    raw = bool(req.get("raw"))
    if raw and (req.get("template") or req.get("system") or req.get("context")):
        raise ApiError(400, "raw mode does not support template, system, or context")
    prompt = str(req.get("prompt") or "")
    # api/types.go GenerateRequest.Tools: the builtin parser's calls ride the final chunk
    # (server/routes.go GenerateHandler: `if cr.Done && len(toolCalls) > 0`).
    tools = list(req.get("tools") or [])

    def planner(
        spec: ModelSpec, num_predict: int | None, think: bool | None, logprobs: bool
    ) -> Expected:
        return plan_generation(
            spec,
            model,
            prompt,
            num_predict,
            think=think,
            system=str(req.get("system") or ""),
            raw=raw,
            context=list(req.get("context") or []),
            logprobs=logprobs,
            tools=tools,
            num_ctx=parsing.num_ctx(req.get("options"), spec.parameters, spec.context_length),
            num_keep=_num_keep(req.get("options")),
        )

    return await _prepare(
        state,
        req,
        fault,
        arrival_ns,
        model,
        "generate",
        bool(prompt),
        (["insert"] if req.get("suffix") else []) + (["tools"] if tools and not raw else []),
        top,
        planner,
        lambda plan, step, logprobs: _generate_chunk(model, plan, step, raw, logprobs),
    )


async def prepare_chat(
    state: EmulatorState, req: Mapping[str, Any], fault: Fault, arrival_ns: int
) -> Prepared:
    top = _check_top_logprobs(req)
    model = str(req.get("model") or "")
    if not model:
        raise ApiError(400, "model is required")
    messages = [{**m, "role": str(m.get("role") or "").lower()} for m in req.get("messages") or []]
    tools = list(req.get("tools") or [])

    def planner(
        spec: ModelSpec, num_predict: int | None, think: bool | None, logprobs: bool
    ) -> Expected:
        return plan_generation(
            spec, model, messages, num_predict, think=think, tools=tools, logprobs=logprobs
        )

    return await _prepare(
        state,
        req,
        fault,
        arrival_ns,
        model,
        "chat",
        bool(messages),
        ["tools"] if tools else [],
        top,
        planner,
        lambda plan, step, logprobs: _chat_chunk(model, plan, step, logprobs),
    )


def collect_generate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """stream:false: the last chunk with the full text (Ollama collects its own stream)."""
    last = items[-1]
    result: dict[str, Any] = {
        "model": last["model"],
        "created_at": last["created_at"],
        "response": "".join(i.get("response", "") for i in items),
    }
    thinking = "".join(i.get("thinking", "") for i in items)
    if thinking:
        result["thinking"] = thinking
    result.update((k, v) for k, v in last.items() if k not in result and k != "thinking")
    logprobs = [lp for i in items for lp in i.get("logprobs", [])]
    if logprobs:
        result["logprobs"] = logprobs
    return result


def collect_chat(items: list[dict[str, Any]]) -> dict[str, Any]:
    last = items[-1]
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(i["message"].get("content", "") for i in items),
    }
    thinking = "".join(i["message"].get("thinking", "") for i in items)
    if thinking:
        message["thinking"] = thinking
    calls = [call for i in items for call in i["message"].get("tool_calls", [])]
    if calls:
        message["tool_calls"] = calls
    result: dict[str, Any] = {
        "model": last["model"],
        "created_at": last["created_at"],
        "message": message,
        "done": True,
    }
    if last.get("done_reason"):
        result["done_reason"] = last["done_reason"]
    logprobs = [lp for i in items for lp in i.get("logprobs", [])]
    if logprobs:
        result["logprobs"] = logprobs
    result.update((k, last[k]) for k in _METRIC_KEYS if k in last)
    return result


class NdjsonFramer:
    media_type = NDJSON
    headers: Sequence[tuple[str, str]] = ()

    def frames(self, item: dict[str, Any]) -> list[bytes]:
        return [gojson.dumps_bytes(item, newline=True)]

    def failure_frames(self, failure: Failure) -> list[bytes]:
        return [gojson.dumps_bytes({"error": failure.message}, newline=True)]

    def failure_response(self, failure: Failure) -> GoResponse:
        # streamResponse sets Content-Type: application/json itself, so gin adds no charset.
        return go_json({"error": failure.message}, failure.status, content_type=JSON_PLAIN)


def respond_native(
    prepared: Prepared, collect: Callable[[list[dict[str, Any]]], dict[str, Any]]
) -> Any:
    if prepared.special is not None or prepared.items is None:
        return go_json(prepared.special)
    if prepared.stream:
        return StreamResponse(prepared.items, NdjsonFramer())
    return CollectedResponse(
        prepared.items,
        lambda items: go_json(collect(items)),
        lambda failure: go_json({"error": failure.message}, failure.status),
    )


async def generate(request: Request, state: EmulatorState, fault: Fault) -> Any:
    req = parsing.decode_native(await request.body(), parsing.GENERATE)
    prepared = await prepare_generate(state, req, fault, arrival_of(request.scope))
    return respond_native(prepared, collect_generate)


async def chat(request: Request, state: EmulatorState, fault: Fault) -> Any:
    req = parsing.decode_native(await request.body(), parsing.CHAT)
    prepared = await prepare_chat(state, req, fault, arrival_of(request.scope))
    return respond_native(prepared, collect_chat)


def _embed_lookup(state: EmulatorState, model: str) -> ModelSpec:
    spec = state.catalog.lookup(model) if model else None
    if spec is None:
        raise ApiError(404, f"model {go_quote(model)} not found, try pulling it first")
    return spec


@dataclass(frozen=True)
class EmbedResult:
    model: str
    vectors: list[list[gojson.F32]]
    prompt_eval_count: int
    total_duration: int
    load_duration: int


async def prepare_embed(
    state: EmulatorState, req: Mapping[str, Any], arrival_ns: int
) -> EmbedResult:
    """server/routes.go EmbedHandler: load_duration to the grant, total to the answer;
    both really slept (the slot is taken for the prompt evaluation)."""
    model = str(req.get("model") or "")
    spec = _embed_lookup(state, model)
    parsing.validate_options(req.get("options"))
    keep_alive = parsing.parse_keep_alive(req.get("keep_alive"))
    raw_input = req.get("input")
    if raw_input is None or isinstance(raw_input, str):
        inputs = [raw_input] if raw_input else []
    elif isinstance(raw_input, list) and all(isinstance(item, str) for item in raw_input):
        inputs = list(raw_input)
    else:
        raise ApiError(400, "invalid input type")
    if not inputs:
        return EmbedResult(model, [], 0, 0, 0)
    if req.get("truncate") is False and any(
        count_text_tokens(text) > spec.context_length for text in inputs
    ):
        raise ApiError(400, "the input length exceeds the context length")
    count = embed_prompt_tokens(inputs)
    launch = launch_options(spec, req.get("options"), None)
    async with state.scheduler.runner(spec, launch, keep_alive, arrival_ns) as ticket:
        assert ticket.runner is not None
        prompt_ns = ticket.runner.slowed(embed_prompt_duration(spec, count))
        async with state.scheduler.slot(spec.name):
            await sleep_until(time.monotonic_ns() + prompt_ns)
            if state.config.first_token_delay:
                await anyio.sleep(state.config.first_token_delay)
    load = ticket.load_ns
    dimensions = req.get("dimensions") or None
    vectors = [
        [gojson.F32(v) for v in embedding_vector(model, text, dimensions, spec=spec)]
        for text in inputs
    ]
    return EmbedResult(model, vectors, count, time.monotonic_ns() - arrival_ns, load)


async def embed(request: Request, state: EmulatorState, fault: Fault) -> Any:
    req = parsing.decode_native(await request.body(), parsing.EMBED)
    result = await prepare_embed(state, req, arrival_of(request.scope))
    body: dict[str, Any] = {"model": result.model, "embeddings": result.vectors}
    if result.vectors:
        body.update(
            total_duration=result.total_duration,
            load_duration=result.load_duration,
            prompt_eval_count=result.prompt_eval_count,
        )
    return go_json(body)


async def embeddings(request: Request, state: EmulatorState, fault: Fault) -> Any:
    req = parsing.decode_native(await request.body(), parsing.EMBEDDINGS)
    model = str(req.get("model") or "")
    spec = _embed_lookup(state, model)
    parsing.validate_options(req.get("options"))
    keep_alive = parsing.parse_keep_alive(req.get("keep_alive"))
    prompt = str(req.get("prompt") or "")
    if not prompt:
        return go_json({"embedding": []})
    launch = launch_options(spec, req.get("options"), None)
    async with state.scheduler.runner(spec, launch, keep_alive, arrival_of(request.scope)):
        pass
    return go_json({"embedding": legacy_embedding(model, prompt, spec=spec)})

"""Moving model data: /api/pull, /api/push, /api/create and /api/blobs/:digest.

Progress routes stream `{"status", "digest", "total", "completed"}` lines and report
failures in-stream at status 200, like Ollama; `stream:false` waits and answers once
with `application/json` (no charset: Ollama sets that header itself).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

from starlette.requests import Request

from tests.emulator import parsing
from tests.emulator.catalog import DEFAULT_SPEC, ModelSpec, normalize, registry_spec
from tests.emulator.engine import paced
from tests.emulator.faults import Fault
from tests.emulator.native import NdjsonFramer
from tests.emulator.state import EmulatorState
from tests.emulator.wire import (
    JSON_PLAIN,
    ApiError,
    CollectedResponse,
    Failure,
    GoResponse,
    Item,
    StreamResponse,
    go_json,
)

__all__ = ["create", "head_blob", "pull", "push", "upload_blob"]

_DIGEST = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")


def _layers(spec: ModelSpec) -> list[tuple[str, int]]:
    """(digest, size) of the manifest layers: weights, template, license, params."""

    def digest(kind: str) -> str:
        return "sha256:" + hashlib.sha256(f"{spec.name}:{kind}".encode()).hexdigest()

    small = [("template", 1429), ("license", 7711), ("params", 96)]
    weights = spec.size - sum(size for _, size in small)
    return [(digest("weights"), weights)] + [(digest(kind), size) for kind, size in small]


def _progress(verb: str, spec: ModelSpec) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for digest, total in _layers(spec):
        status = f"{verb} {digest[7:19]}"
        steps = (0, total // 3, 2 * total // 3, total) if total > 10_000_000 else (0, total)
        for done in steps:
            line: dict[str, Any] = {"status": status, "digest": digest, "total": total}
            if done:  # omitempty
                line["completed"] = done
            lines.append(line)
    return lines


def _respond(items: AsyncIterator[Item], stream: bool) -> Any:
    if stream:
        return StreamResponse(items, NdjsonFramer())

    # waitForStream keeps only the latest progress object.
    def finish(collected: list[dict[str, Any]]) -> GoResponse:
        return go_json(collected[-1] if collected else {}, content_type=JSON_PLAIN)

    def failed(failure: Failure) -> GoResponse:
        return go_json({"error": failure.message}, failure.status, content_type=JSON_PLAIN)

    return CollectedResponse(items, finish, failed)


async def _lines(
    state: EmulatorState, lines: list[Item], on_success: Any = None
) -> AsyncIterator[Item]:
    async for line in paced(lines, state.config):
        if isinstance(line, dict) and line.get("status") == "success" and on_success:
            on_success()
        yield line


def _name(req: Mapping[str, Any]) -> str:
    # server/routes.go PullHandler: cmp.Or(req.Model, req.Name), the deprecated `name`.
    model = str(req.get("model") or req.get("name") or "")
    name = normalize(model)
    if name is None:
        raise ApiError(400, "invalid model name")
    return name


async def pull(request: Request, state: EmulatorState, fault: Fault) -> Any:
    req = parsing.decode_native(await request.body(), parsing.PULL)
    name = _name(req)
    spec = state.catalog.lookup(name) or registry_spec(name)
    lines: list[Item] = [{"status": "pulling manifest"}]
    if spec is None:
        lines.append(Failure("pull model manifest: file does not exist"))
        return _respond(_lines(state, lines), req.get("stream") is not False)
    lines += _progress("pulling", spec)
    lines += [
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "removing unused layers"},
        {"status": "success"},
    ]
    found = spec

    def install() -> None:
        state.catalog.add(name, found)

    return _respond(_lines(state, lines, install), req.get("stream") is not False)


async def push(request: Request, state: EmulatorState, fault: Fault) -> Any:
    req = parsing.decode_native(await request.body(), parsing.PUSH)
    # server/routes.go PushHandler: `model`, else the older `name`, else an error.
    if not (req.get("model") or req.get("name")):
        raise ApiError(400, "model is required")
    name = _name(req)
    spec = state.catalog.lookup(name)
    lines: list[Item] = [{"status": "retrieving manifest"}]
    if spec is None:
        lines += [
            {"status": "couldn't retrieve manifest"},
            Failure(
                f"open /root/.ollama/models/manifests/registry.ollama.ai/library/"
                f"{name.replace(':', '/')}: no such file or directory"
            ),
        ]
    else:
        lines += _progress("pushing", spec)
        lines += [{"status": "pushing manifest"}, {"status": "success"}]
    return _respond(_lines(state, lines), req.get("stream") is not False)


def _layer_digest(content: Any) -> str:
    return "sha256:" + hashlib.sha256(repr(content).encode()).hexdigest()


async def create(request: Request, state: EmulatorState, fault: Fault) -> Any:
    req = parsing.decode_native(await request.body(), parsing.CREATE)
    name = _name(req)
    source, files = req.get("from"), req.get("files")
    if not source and files is None:
        raise ApiError(400, "neither 'from' or 'files' was specified")
    stream = req.get("stream") is not False
    lines: list[Item] = []
    base = DEFAULT_SPEC
    if source:
        found = state.catalog.lookup(str(source))
        if found is None:
            lines += [
                {"status": "pulling manifest"},
                Failure("pull model manifest: file does not exist"),
            ]
            return _respond(_lines(state, lines), stream)
        base = found
        lines += [{"status": f"using existing layer {digest}"} for digest, _ in _layers(base)]
    for digest in (files or {}).values():
        match = _DIGEST.match(str(digest))
        if match is None or f"sha256:{match.group(1).lower()}" not in state.catalog.blobs:
            raise ApiError(400, f"missing blob {digest}")
    if files:
        lines.append({"status": "parsing GGUF"})
        lines += [{"status": f"using existing layer {digest}"} for digest in files.values()]
    for key in ("template", "system", "parameters", "license", "messages", "adapters"):
        if req.get(key):
            lines.append({"status": f"creating new layer {_layer_digest(req[key])}"})
    lines += [{"status": "writing manifest"}, {"status": "success"}]
    created = replace(base, template=str(req.get("template") or base.template))

    def install() -> None:
        state.catalog.add(name, created)

    return _respond(_lines(state, lines, install), stream)


def _blob_digest(request: Request) -> str:
    raw = request.path_params["digest"]
    match = _DIGEST.match(raw)
    if match is None:
        raise ApiError(400, "invalid digest format")
    return f"sha256:{match.group(1).lower()}"


async def head_blob(request: Request, state: EmulatorState, fault: Fault) -> GoResponse:
    digest = _blob_digest(request)
    if digest not in state.catalog.blobs:
        raise ApiError(404, f'blob "{request.path_params["digest"]}" not found')
    return GoResponse()


async def upload_blob(request: Request, state: EmulatorState, fault: Fault) -> GoResponse:
    digest = _blob_digest(request)
    if digest in state.catalog.blobs:
        return GoResponse()
    hasher = hashlib.sha256()
    async for chunk in request.stream():  # hashed as it arrives: flat memory for huge blobs
        hasher.update(chunk)
    actual = f"sha256:{hasher.hexdigest()}"
    if actual != digest:
        expected = request.path_params["digest"]
        raise ApiError(400, f'digest mismatch, expected "{expected}", got "{actual}"')
    state.catalog.blobs.add(digest)
    return GoResponse(status=201)

"""/_emulator/* endpoints: tests talk to these directly, never through the proxy."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from tests.emulator.state import EmulatorState
from tests.emulator.wire import GoResponse, go_json

__all__ = ["handle_control"]


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


async def handle_control(request: Request, state: EmulatorState) -> GoResponse:
    """GET requests | POST reset {"catalog": bool} | GET/POST config {field: value}."""
    name = request.url.path.removeprefix("/_emulator/")
    try:
        if name == "requests" and request.method == "GET":
            return go_json(state.log.snapshot())
        if name == "reset" and request.method == "POST":
            body = await _json_body(request)
            state.log.clear()
            if body.get("catalog"):
                state.catalog.reset()
            return go_json({"status": "ok"})
        if name == "config" and request.method in ("GET", "POST"):
            if request.method == "POST":
                state.config.update(await _json_body(request))
            return go_json(state.config.as_dict())
    except ValueError as err:
        return go_json({"error": str(err)}, 400)
    return GoResponse(b"404 page not found", 404, "text/plain")

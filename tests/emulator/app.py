"""The emulator application: route table, request logging, faults, error shapes.

Flow of one request: log entry opened (body hashed as it streams) → gin-style routing
(404/405/redirect) → fault header (hang, status-NNN) → handler → response; errors
raised as `ApiError` are rendered once here, in the shape of the route's dialect.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.routing import Mount
from starlette.types import Receive, Scope, Send

from tests.emulator import (
    anthropic_compat,
    audio,
    cloud,
    models,
    native,
    openai_chat,
    openai_common,
    openai_compat,
    responses_api,
    transfer,
)
from tests.emulator.config import EmulatorConfig
from tests.emulator.control import handle_control
from tests.emulator.faults import FAULT_HEADER, parse_fault
from tests.emulator.routing import Route, Router
from tests.emulator.state import EmulatorState
from tests.emulator.wire import (
    ARRIVAL,
    ApiError,
    EmulatedReset,
    GoResponse,
    go_json,
    wait_for_disconnect,
)

__all__ = ["ROUTES", "create_app"]


ROUTES: list[Route] = [
    Route("GET", "/", models.root),
    Route("HEAD", "/", models.root),
    Route("GET", "/api/version", models.version),
    Route("HEAD", "/api/version", models.version),
    Route("GET", "/api/status", models.status, min_version=(0, 16, 2)),
    Route("GET", "/api/tags", models.list_tags),
    Route("HEAD", "/api/tags", models.list_tags),
    Route("GET", "/api/ps", models.list_running),
    Route("POST", "/api/show", models.show),
    Route("POST", "/api/generate", native.generate),
    Route("POST", "/api/chat", native.chat),
    Route("POST", "/api/embed", native.embed),
    Route("POST", "/api/embeddings", native.embeddings),
    Route("POST", "/api/pull", transfer.pull),
    Route("POST", "/api/push", transfer.push),
    Route("POST", "/api/create", transfer.create),
    Route("POST", "/api/copy", models.copy_model),
    Route("DELETE", "/api/delete", models.delete_model),
    Route("HEAD", "/api/blobs/:digest", transfer.head_blob),
    Route("POST", "/api/blobs/:digest", transfer.upload_blob),
    Route("POST", "/api/me", cloud.signin_required, min_version=(0, 12)),
    Route("POST", "/api/signout", cloud.signout, min_version=(0, 12)),
    Route("DELETE", "/api/user/keys/:encodedKey", cloud.signout, min_version=(0, 12)),
    Route("POST", "/api/experimental/web_search", cloud.web_experimental, min_version=(0, 18)),
    Route("POST", "/api/experimental/web_fetch", cloud.web_experimental, min_version=(0, 18)),
    Route(
        "GET",
        "/api/experimental/model-recommendations",
        cloud.model_recommendations,
        min_version=(0, 22, 1),
    ),
    Route("POST", "/v1/chat/completions", openai_chat.chat_completions, "openai"),
    Route("POST", "/v1/completions", openai_compat.completions, "openai"),
    Route("POST", "/v1/embeddings", openai_compat.embeddings, "openai"),
    Route("GET", "/v1/models", openai_compat.list_models, "openai"),
    Route("GET", "/v1/models/:model", openai_compat.retrieve_model, "openai"),
    Route("POST", "/v1/responses", responses_api.responses, "openai", (0, 13, 3)),
    Route("POST", "/v1/audio/transcriptions", audio.transcriptions, "openai", (0, 20)),
    Route("POST", "/v1/messages", anthropic_compat.messages, "anthropic", (0, 14)),
]


def _error(dialect: str, err: ApiError) -> GoResponse:
    if dialect == "openai":
        return openai_common.openai_error(err.status, err.message)
    if dialect == "anthropic":
        return anthropic_compat.anthropic_error(err.status, err.message)
    # gin.H is a Go map: its keys are marshalled in sorted order.
    return go_json(dict(sorted({"error": err.message, **err.extra}.items())), err.status)


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class Dispatcher:
    def __init__(self, state: EmulatorState, router: Router) -> None:
        self.state = state
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        # checkpointStart: every duration the request reports is measured from here.
        scope[ARRIVAL] = time.monotonic_ns()
        if scope["path"].startswith("/_emulator/"):
            response = await handle_control(Request(scope, receive), self.state)
            await response(scope, receive, send)
            return
        entry = self.state.log.open(scope)
        receive, send = entry.wrap(receive, send)
        try:
            response = await self._respond(scope, receive)
            if response is None:
                return
            if not entry.body_done:
                await _drain(receive)
            await response(scope, receive, send)
        except EmulatedReset:
            entry.aborted = True
            raise
        except ClientDisconnect:
            return  # the client left while sending its body; the log marks it cancelled

    async def _respond(self, scope: Scope, receive: Receive) -> Any:
        query = scope.get("query_string", b"").decode("latin-1")
        version = self.state.config.version_tuple()
        resolved = self.router.resolve(scope["method"], scope["path"], query, version)
        if isinstance(resolved, GoResponse):
            return resolved
        route, params = resolved
        scope["path_params"] = params
        request = Request(scope, receive)
        fault = parse_fault(request.headers.get(FAULT_HEADER))
        if fault.hang:
            await _drain(receive)
            await wait_for_disconnect(receive)
            return None
        if fault.status is not None:
            return _error(route.dialect, ApiError(fault.status, fault.status_message()))
        try:
            return await route.handler(request, self.state, fault)
        except ApiError as err:
            return _error(route.dialect, err)


def create_app(config: EmulatorConfig | None = None) -> Starlette:
    state = EmulatorState(config or EmulatorConfig())
    app = Starlette(routes=[Mount("", app=Dispatcher(state, Router(ROUTES)))])
    app.state.emulator = state
    return app

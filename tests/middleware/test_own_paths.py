"""Which paths the proxy answers itself: derived from the FastAPI app's routes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, FastAPI

from app.middleware.own_paths import Dispatch, OwnPaths
from tests.asgi import Recording, call, http_scope


def small_api() -> FastAPI:
    api = FastAPI(redoc_url=None)

    @api.get("/hello")
    def hello() -> dict[str, str]:
        return {"from": "proxy"}

    items = APIRouter(prefix="/things")

    @items.get("/{name}")
    def thing(name: str) -> dict[str, str]:
        return {"thing": name}

    api.include_router(items)
    return api


def test_own_paths_are_the_routes_and_the_namespaces_of_their_parameters() -> None:
    own = OwnPaths.of(small_api())
    assert own.exact == {"/hello", "/openapi.json", "/docs", "/docs/oauth2-redirect"}
    assert own.prefixes == ("/things/",)
    assert "/things/anything/at/all" in own
    assert "/hello/" not in own
    assert "/api/tags" not in own


def test_a_route_added_to_the_app_is_served_not_forwarded() -> None:
    api = small_api()

    @api.get("/api/proxy-own")  # even under Ollama's own prefix, once it is a route
    def added() -> dict[str, int]:
        return {"served": 1}

    forward = Recording()
    dispatch = Dispatch(api, forward)
    answer = asyncio.run(call(dispatch, http_scope("/api/proxy-own")))
    assert answer.status == 200
    assert answer.json() == {"served": 1}
    assert forward.scopes == []
    # Without the route the same path goes to Ollama.
    plain = Dispatch(small_api(), forward)
    assert asyncio.run(call(plain, http_scope("/api/proxy-own"))).body == b"forwarded"
    assert [scope["path"] for scope in forward.scopes] == ["/api/proxy-own"]


def test_a_parameter_namespace_answers_unknown_paths_itself() -> None:
    forward = Recording()
    dispatch = Dispatch(small_api(), forward)
    answer = asyncio.run(call(dispatch, http_scope("/things/a/b")))
    assert answer.status == 404  # FastAPI's, not Ollama's
    assert forward.scopes == []


def test_websockets_always_go_to_the_forwarder() -> None:
    forward = Recording()
    asyncio.run(call(Dispatch(small_api(), forward), http_scope("/hello", kind="websocket")))
    assert [scope["type"] for scope in forward.scopes] == ["websocket"]

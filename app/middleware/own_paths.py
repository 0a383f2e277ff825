"""Which requests the proxy answers itself: the paths of its own FastAPI app's routes.

Ollama serves none of them. A route with a path parameter (``/analytics/records/{id}``,
``/ui/{name}``) claims its whole first segment (``/analytics/``, ``/ui/``), so that a
malformed or unknown id gets the proxy's own 404/422 instead of going to Ollama. Deciding
is one set lookup and one ``startswith`` on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from app.types import ASGIApp, Receive, Scope, Send


@dataclass(frozen=True, slots=True)
class OwnPaths:
    exact: frozenset[str]
    prefixes: tuple[str, ...]

    @classmethod
    def of(cls, api: FastAPI) -> OwnPaths:
        exact: set[str] = set()
        prefixes: set[str] = set()
        for route in iter_route_contexts(api.routes):
            path = route.path
            if path is None:
                continue
            if "{" in path:
                prefixes.add("/" + path.split("/")[1] + "/")
            else:
                exact.add(path)
        return cls(frozenset(exact), tuple(sorted(prefixes)))

    def __contains__(self, path: str) -> bool:
        return path in self.exact or path.startswith(self.prefixes)


class Dispatch:
    """HTTP requests for an own path go to ``api``; every other request, and every
    WebSocket, goes to ``forward`` untouched."""

    def __init__(self, api: FastAPI, forward: ASGIApp) -> None:
        self.api = api
        self.forward = forward
        self.own = OwnPaths.of(api)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.own:
            await self.api(scope, receive, send)
        else:
            await self.forward(scope, receive, send)

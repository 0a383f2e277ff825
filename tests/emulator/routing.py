"""gin's routing rules: exact match, trailing-slash redirect, then 405, then 404.

gin (with HandleMethodNotAllowed) redirects `/api/tags/` only when the same method has
`/api/tags`, answers 405 only when another method has the exact path, and otherwise
says `404 page not found`; HEAD is a separate method (HEAD /api/ps is a 405).
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tests.emulator.wire import GoResponse

__all__ = ["Route", "Router", "method_not_allowed", "not_found"]

Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str
    handler: Handler
    dialect: str = "native"  # error shape: native, openai or anthropic
    min_version: tuple[int, ...] = ()

    def match(self, path: str) -> dict[str, str] | None:
        want, have = self.pattern.split("/"), path.split("/")
        if len(want) != len(have):
            return None
        params: dict[str, str] = {}
        for expected, actual in zip(want, have, strict=True):
            if expected.startswith(":"):
                if not actual:
                    return None
                params[expected[1:]] = actual
            elif expected != actual:
                return None
        return params


def not_found() -> GoResponse:
    return GoResponse(b"404 page not found", 404, "text/plain")


def method_not_allowed() -> GoResponse:
    return GoResponse(b"405 method not allowed", 405, "text/plain")


def _redirect(method: str, location: str) -> GoResponse:
    if method == "GET":
        body = f'<a href="{html.escape(location)}">Moved Permanently</a>.\n\n'.encode()
        return GoResponse(body, 301, "text/html; charset=utf-8", [("Location", location)])
    content_type = "text/html; charset=utf-8" if method == "HEAD" else None
    return GoResponse(b"", 307, content_type, [("Location", location)])


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    def _find(
        self, method: str, path: str, version: tuple[int, ...]
    ) -> tuple[Route, dict[str, str]] | None:
        for route in self.routes:
            if route.method == method and route.min_version <= version:
                params = route.match(path)
                if params is not None:
                    return route, params
        return None

    def resolve(
        self, method: str, path: str, query: str, version: tuple[int, ...]
    ) -> tuple[Route, dict[str, str]] | GoResponse:
        found = self._find(method, path, version)
        if found is not None:
            return found
        if path != "/" and path.endswith("/") and self._find(method, path[:-1], version):
            location = path[:-1] + (f"?{query}" if query else "")
            return _redirect(method, location)
        others = {route.method for route in self.routes if route.min_version <= version}
        if any(self._find(other, path, version) for other in others - {method}):
            return method_not_allowed()
        return not_found()

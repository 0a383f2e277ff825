"""API-key admission: who may use Ollama through the proxy (the keys are ``app.auth``'s)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from app.auth import SCOPE_KEY, ApiKeys, presented_key, without_credentials
from app.proxy.errors import error_body, send_error_answer
from app.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

REASONS = ("missing", "invalid")
_UNAUTHORISED = "unauthorized: this proxy needs Authorization: Bearer <API key>"
_CHALLENGE = [(b"www-authenticate", b'Bearer realm="ollama"')]


class ApiKeyAdmission:
    """Lets through only requests that present a configured key, except ``open_path``\\ s.

    An admitted request carries the key's name in the scope (``SCOPE_KEY``, for the record)
    and no longer carries the key: it is ours, Ollama must not see or log it. A refused HTTP
    request gets 401 in the error shape its path's clients parse, with its body unread; a
    refused WebSocket is closed with 1008 (Ollama speaks none, there is nothing to say).
    """

    def __init__(
        self,
        app: ASGIApp,
        keys: ApiKeys,
        *,
        open_path: Callable[[str], bool],
        registry: CollectorRegistry,
    ) -> None:
        self.app = app
        self.keys = keys
        self.open_path = open_path
        self.failures = Counter(
            "ollama_proxy_auth_failures",
            "Proxied requests refused for want of a valid API key (PROXY_API_KEYS).",
            ["reason"],
            registry=registry,
        )
        for reason in REASONS:
            self.failures.labels(reason)  # exported as 0 from the start: alertable

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        http = scope["type"] == "http"
        if (http and self.open_path(scope["path"])) or self._admit(scope):
            await self.app(scope, receive, send)
        elif http:
            body = error_body(scope["path"], _UNAUTHORISED)
            await send_error_answer(send, 401, body, _CHALLENGE)
        else:
            await send({"type": "websocket.close", "code": 1008})

    def _admit(self, scope: Scope) -> bool:
        key, any_credential = presented_key(scope["headers"])
        name = self.keys.name_of(key) if key is not None else None
        if name is None:
            if _is_preflight(scope):
                # Browsers send CORS preflights without credentials; Ollama answers them
                # (allowed or not, by OLLAMA_ORIGINS) and runs nothing.
                return True
            reason = "invalid" if any_credential else "missing"
            self.failures.labels(reason).inc()
            client = scope.get("client")
            log.info(
                "refused %s %s from %s: %s API key",
                scope.get("method", "WEBSOCKET"),
                scope["path"],
                client[0] if client else "?",
                reason,
            )
            return False
        scope[SCOPE_KEY] = name
        scope["headers"] = without_credentials(scope["headers"])
        return True


def _is_preflight(scope: Scope) -> bool:
    return scope.get("method") == "OPTIONS" and any(
        name == b"access-control-request-method" for name, _ in scope["headers"]
    )

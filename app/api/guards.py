"""Bearer-token guards for the proxy's own endpoints (``/metrics``, ``/analytics/*``)."""

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Header, HTTPException


def bearer_guard(token: str | None, setting: str, what: str) -> Callable[..., None]:
    """A FastAPI dependency: with ``token`` set, the request must carry
    ``Authorization: Bearer <token>`` (compared in constant time); without, it lets all in."""
    expected = token.encode() if token else None

    def guard(authorization: Annotated[str | None, Header()] = None) -> None:
        if expected is None:
            return
        scheme, _, secret = (authorization or "").strip().partition(" ")
        # Starlette decodes header bytes as Latin-1: encoding back gives the bytes sent.
        given = secret.strip().encode("latin-1", "replace")
        # Both sides hashed to one length first would hide the token's length too; a
        # length leak of a random token is harmless, so compare_digest alone suffices.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, expected):
            raise HTTPException(
                401,
                detail=f"{what} needs Authorization: Bearer <{setting}>",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return guard

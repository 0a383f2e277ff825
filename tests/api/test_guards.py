"""The Bearer-token guard of ``/metrics`` and ``/analytics/*``: who it lets in, how it refuses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI
from pydantic import SecretStr

from app.api.guards import bearer_guard
from app.config import Settings
from app.main import create_app
from tests.asgi import Exchange, call, http_scope

TOKEN = "s3cret-token"
AUTH = [(b"authorization", f"Bearer {TOKEN}".encode())]
# Nothing listens here: a request the proxy forwards fails to connect (502).
NOWHERE = "http://127.0.0.1:9"


def guarded(token: str | None) -> FastAPI:
    """An app with one route behind ``bearer_guard(token, ...)``."""
    api = FastAPI()

    @api.get("/thing", dependencies=[Depends(bearer_guard(token, "THING_TOKEN", "/thing"))])
    def thing() -> dict[str, str]:
        return {"let": "in"}

    return api


def get(api: FastAPI, authorization: bytes | None = None) -> Exchange:
    headers = [] if authorization is None else [(b"authorization", authorization)]
    return asyncio.run(call(api, http_scope("/thing", headers=headers)))


@pytest.mark.parametrize("token", [None, ""])
@pytest.mark.parametrize("authorization", [None, b"", b"Bearer anything", b"Basic dTpw"])
def test_without_a_token_everyone_is_let_in(token: str | None, authorization: bytes | None) -> None:
    answer = get(guarded(token), authorization)
    assert answer.status == 200
    assert answer.json() == {"let": "in"}


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer s3cret",
        b"bearer s3cret",  # the scheme is case-insensitive (RFC 9110)
        b"BEARER s3cret",
        b"  Bearer s3cret  ",
        b"Bearer    s3cret",
    ],
)
def test_the_token_lets_in(authorization: bytes) -> None:
    answer = get(guarded("s3cret"), authorization)
    assert answer.status == 200
    assert answer.json() == {"let": "in"}


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        b"",
        b"Bearer",
        b"Bearer ",
        b"s3cret",  # the token without its scheme
        b"Basic s3cret",
        b"Token s3cret",
        b"Bearer S3CRET",  # the token itself is case-sensitive
        b"Bearer s3cre",
        b"Bearer s3cretx",
        b"Bearer s3cret extra",
        b"Bearer \xff\xfe\x00",  # not UTF-8: refused, not a server error
    ],
)
def test_anything_else_is_401_saying_what_is_needed(authorization: bytes | None) -> None:
    answer = get(guarded("s3cret"), authorization)
    assert answer.status == 401
    assert answer.headers[b"www-authenticate"] == b"Bearer"
    assert answer.json() == {"detail": "/thing needs Authorization: Bearer <THING_TOKEN>"}
    assert b"s3cret" not in answer.body


def test_a_non_ascii_token_sent_as_utf8_lets_in() -> None:
    assert get(guarded("pässwort"), "Bearer pässwort".encode()).status == 200


def test_token_guards_analytics_but_not_the_api(tmp_path: Path) -> None:
    app = create_app(
        Settings(analytics_dir=tmp_path, ollama_upstream=NOWHERE, analytics_token=SecretStr(TOKEN))
    )

    def status(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Exchange:
        return asyncio.run(call(app.asgi, http_scope(path, headers=headers)))

    assert status("/analytics/search").status == 401
    wrong = status("/analytics/stats", [(b"authorization", b"Bearer nope")])
    assert wrong.status == 401
    assert wrong.headers[b"www-authenticate"] == b"Bearer"
    assert "ANALYTICS_TOKEN" in wrong.json()["detail"]
    assert status("/analytics/records/01JTEST0000000000000000000", AUTH).status == 404
    assert status("/analytics/stats", AUTH).status == 200
    # Neither what is forwarded (502: nothing listens upstream) nor /metrics needs it.
    assert status("/api/tags").status == 502
    assert status("/metrics").status == 200

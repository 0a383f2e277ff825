from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from app.analytics.sql import SqlStore, create_store_engine, database_url
from tests.emulator import EmulatorConfig, EmulatorServer
from tests.support import SQL_STORES, ProxyProcess, analytics_rows, wrapper_env

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """Put the root logger back as it was: code that configures logging (the CLI, the
    service runner) replaces its handlers, which would leak into later tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:], root.level = handlers, level


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


@pytest.fixture(scope="session")
def proxy(emulator: EmulatorServer) -> Iterator[ProxyProcess]:
    ARTIFACTS.mkdir(exist_ok=True)
    with ProxyProcess(emulator.url, log_path=ARTIFACTS / "proxy-session.log") as process:
        yield process


@pytest.fixture(scope="module")
def slow_emulator(request: pytest.FixtureRequest) -> Iterator[EmulatorServer]:
    """An emulator of the module's own that streams one token per ``TOKEN_DELAY`` seconds,
    the module's constant (0.05 without one): N tokens take N × that long."""
    delay = float(getattr(request.module, "TOKEN_DELAY", 0.05))
    with EmulatorServer(EmulatorConfig(token_delay=delay)) as server:
        yield server


# The PostgreSQL server of this machine kind (trust auth); each run gets fresh databases.
POSTGRES_ADMIN = os.environ.get("TEST_POSTGRES_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


class PostgresDatabases:
    """Creates throw-away databases on the real PostgreSQL server and drops them after."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def create(self) -> str:
        name = f"om_test_{os.getpid()}_{secrets.token_hex(4)}"
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return POSTGRES_ADMIN.rsplit("/", 1)[0] + "/" + name

    def recreate(self, url: str) -> None:
        """Bring back a database that ``drop`` removed (a store coming back)."""
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{url.rsplit("/", 1)[1]}"')

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_all(self) -> None:
        for name in self.created:
            self.drop("/" + name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases()
    yield databases
    databases.drop_all()


@pytest.fixture(scope="module", params=SQL_STORES)
def loaded_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SqlStore]:
    """A SQLite, then a PostgreSQL store holding ``analytics_rows()``; one per module, which
    its tests share (a test may add rows of its own, never change or remove those)."""
    if request.param == "sqlite":
        url = database_url(None, tmp_path_factory.mktemp("sqlite"))
    else:
        databases: PostgresDatabases = request.getfixturevalue("postgres")
        url = database_url(databases.create(), Path("/nonexistent"))
    store = SqlStore(create_store_engine(url))
    rows = analytics_rows()
    for start in range(0, len(rows), 1000):
        store.write(rows[start : start + 1000])
    yield store
    store.close()


# The servers this file starts for any test that asks: such a test is marked `process` even
# when its module forgot to say so, so that `-m "not process"` never starts one.
SERVER_FIXTURES = frozenset({"emulator", "proxy", "slow_emulator"})


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses = SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if uses and item.get_closest_marker("process") is None:
            item.add_marker(pytest.mark.process)


@pytest.fixture
def proxied(
    tmp_path: Path, emulator: EmulatorServer
) -> Iterator[tuple[ProxyProcess, dict[str, str]]]:
    """A proxy in front of the emulator, and a user's environment (``wrapper_env``) that
    points the ``ollama-metrics`` wrapper commands at it."""
    with ProxyProcess(emulator.url, env={"PS_POLL_INTERVAL": "0"}) as proxy:
        yield proxy, wrapper_env(tmp_path, PROXY_PORT=str(proxy.port), OLLAMA_UPSTREAM=emulator.url)

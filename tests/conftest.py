from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.emulator import EmulatorServer
from tests.support import ProxyProcess

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


@pytest.fixture(scope="session")
def proxy(emulator: EmulatorServer) -> Iterator[ProxyProcess]:
    ARTIFACTS.mkdir(exist_ok=True)
    with ProxyProcess(emulator.url, log_path=ARTIFACTS / "proxy-session.log") as process:
        yield process


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

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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

"""The pieces of `serve` that need no Ollama: environment, binary lookup, port owners."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from app.service.binary import find_ollama
from app.service.ports import describe_port_owner
from app.service.supervisor import child_environment, upstream_address
from tests.emulator import EmulatorServer
from tests.support import ProxyProcess, free_port


def test_child_gets_the_upstream_address_and_no_http_proxy() -> None:
    base = {
        "OLLAMA_HOST": "0.0.0.0",
        "HTTP_PROXY": "http://corp:3128",
        "https_proxy": "x",
        "HOME": "/h",
    }
    env = child_environment("127.0.0.1:11435", base)
    assert env == {"OLLAMA_HOST": "127.0.0.1:11435", "HOME": "/h"}


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:11435", "127.0.0.1:11435"),
        ("http://localhost", "localhost:80"),
        ("https://gpu.internal", "gpu.internal:443"),
    ],
)
def test_upstream_address(url: str, address: str) -> None:
    assert upstream_address(url) == address


def test_find_ollama_prefers_ollama_bin_then_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = tmp_path / "my-ollama"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    assert find_ollama(str(binary)) == str(binary)
    assert find_ollama(str(tmp_path / "missing")) is None
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "ollama").write_text("#!/bin/sh\n")
    (on_path / "ollama").chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path) + os.pathsep + os.environ["PATH"])
    assert find_ollama(None) == str(on_path / "ollama")


@pytest.mark.process
def test_port_owner_sentences(emulator: EmulatorServer) -> None:
    assert describe_port_owner("127.0.0.1", free_port()) is None
    owner = describe_port_owner("127.0.0.1", emulator.port)
    assert owner is not None
    assert owner.startswith(f"an Ollama server (version {emulator.config.version})")
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        owner = describe_port_owner("127.0.0.1", other.getsockname()[1])
    assert owner is not None
    assert "another program" in owner
    with ProxyProcess(emulator.url) as proxy:
        owner = describe_port_owner("127.0.0.1", proxy.port)
    assert owner is not None
    assert owner.startswith("ollama-metrics (version")

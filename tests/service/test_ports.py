"""Who holds a port (app/service/ports.py): the probe, and the sentence for each kind of
owner (this proxy, an Ollama, anything else) with this platform's fix."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator

import pytest

from app.service import ports
from app.service.ports import describe_port_owner, listening
from tests.emulator import EmulatorServer
from tests.support import LocalHttpServer, ProxyProcess, free_port


@pytest.fixture
def listener() -> Iterator[int]:
    """A loopback TCP port that listens (and never answers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def json_body(value: object) -> bytes:
    return json.dumps(value).encode()


Answer = tuple[int, str | None, bytes]


def http_server(default: Answer, **paths: Answer) -> LocalHttpServer:
    """An HTTP server on a free loopback port: ``paths`` (``api_version`` is /api/version)
    answered as given, every other path with ``default``."""
    routes = {"/" + name.replace("_", "/"): answer for name, answer in paths.items()}

    def respond(method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        return routes.get(path, default)

    return LocalHttpServer(respond)


def test_a_free_port_is_not_listening_and_has_no_owner() -> None:
    port = free_port()
    assert listening("127.0.0.1", port) is False
    assert describe_port_owner("127.0.0.1", port) is None


@pytest.mark.process
def test_listening_probes_loopback_for_the_any_addresses(listener: int) -> None:
    assert listening("127.0.0.1", listener) is True
    for any_address in ("0.0.0.0", "", "::"):
        assert listening(any_address, listener) is True, any_address


@pytest.fixture
def ipv6_socket() -> Iterator[socket.socket]:
    """A socket bound to the IPv6 loopback, not yet listening (skips without IPv6)."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with socket.socket(socket.AF_INET6) as sock:
        try:
            sock.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback on this machine")
        yield sock


@pytest.mark.process
def test_listening_on_an_ipv6_address(ipv6_socket: socket.socket) -> None:
    ipv6_socket.listen()
    port = int(ipv6_socket.getsockname()[1])
    assert listening("::1", port) is True
    ipv6_socket.close()
    assert listening("::1", port) is False


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


@pytest.mark.process
def test_an_ipv6_listener_is_described_not_an_error(ipv6_socket: socket.socket) -> None:
    ipv6_socket.listen()
    port = int(ipv6_socket.getsockname()[1])
    owner = describe_port_owner("::1", port)
    assert owner == (
        f"port {port} is already in use by another program: stop it, or choose another port "
        "with --port"
    )


@pytest.mark.process
def test_the_owner_is_asked_directly_whatever_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    with http_server(
        (404, "text/plain", b""),
        api_version=(200, "application/json", json_body({"version": "0.6.2"})),
    ) as server:
        owner = describe_port_owner("127.0.0.1", server.port)
    assert owner is not None
    assert owner.startswith("an Ollama server (version 0.6.2)")


@pytest.mark.process
def test_our_own_proxy_is_recognised_by_its_test_endpoint() -> None:
    with http_server(
        (200, "application/json", json_body({"version": "0.33.0"})),
        test=(200, "application/json", json_body({"proxy_version": "9.8.7"})),
    ) as server:
        owner = describe_port_owner("0.0.0.0", server.port)
    assert owner == (
        f"ollama-metrics (version 9.8.7) is already running on {server.port}: "
        "use it, or stop it first"
    )


@pytest.mark.process
@pytest.mark.parametrize("test_answer", [b"not json", json_body(["proxy_version"]), b"{}"])
def test_an_ollama_is_named_with_its_version_and_the_fix(test_answer: bytes) -> None:
    with http_server(
        (404, "text/plain", test_answer),
        api_version=(200, "application/json", json_body({"version": "0.6.2"})),
    ) as server:
        owner = describe_port_owner("127.0.0.1", server.port)
    assert owner == (
        f"an Ollama server (version 0.6.2) is already listening on {server.port}: "
        f"{ports._autostart_fix()}"
    )


@pytest.mark.process
def test_another_http_server_is_named_by_its_server_header() -> None:
    with http_server((404, "text/html", b"<h1>Not Found</h1>")) as server:
        owner = describe_port_owner("127.0.0.1", server.port)
    assert owner is not None
    # http.server's Server header: "BaseHTTP/0.6 Python/3.x".
    assert owner.startswith(f"port {server.port} is already in use by another program (BaseHTTP/")
    assert owner.endswith(
        "Python/{}.{}.{}): stop it, or choose another port with --port".format(
            *sys.version_info[:3]
        )
    )


@pytest.mark.process
@pytest.mark.parametrize("version_answer", [b"<html>", json_body({"version": ""})])
def test_an_answer_without_an_ollama_version_is_another_program(version_answer: bytes) -> None:
    with http_server((200, "application/json", version_answer)) as server:
        owner = describe_port_owner("127.0.0.1", server.port)
    assert owner is not None
    assert owner.startswith(f"port {server.port} is already in use by another program")
    assert "Ollama" not in owner


@pytest.mark.parametrize(
    ("platform", "fix"),
    [
        ("linux", "stop it with: sudo systemctl disable --now ollama"),
        ("win32", "remove its shortcut from the Startup folder (shell:startup)"),
        ("darwin", "System Settings → General → Login Items"),
    ],
)
def test_the_autostart_fix_is_this_platforms(
    platform: str, fix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "platform", platform)
    assert fix in ports._autostart_fix()

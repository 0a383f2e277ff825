"""Running under uvicorn: the head-holding transport, Ollama's 1 MiB head limit, the uvicorn
settings, and starting and stopping (the ports checked first, clear errors)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from app.config import Settings
from app.main import ProxyApp
from app.server import (
    MAX_HEAD_BYTES,
    ProxyHttpProtocol,
    StartError,
    _HeadHoldingTransport,
    prepare_server,
    run_proxy,
    serve_until_stopped,
    uvicorn_config,
)
from app.types import Receive, Scope, Send
from tests.support import LocalHttpServer, free_port

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Wire:
    """The client connection's transport: keeps what is done to it, in order."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.closing = False

    @property
    def writes(self) -> list[bytes]:
        return [event for event in self.events if isinstance(event, bytes)]

    def write(self, data: bytes) -> None:
        self.events.append(bytes(data))

    def write_eof(self) -> None:
        self.events.append("eof")

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def abort(self) -> None:
        self.closing = True
        self.events.append("abort")

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 11434)}.get(
            name, default
        )


def holding(test: Any) -> None:
    """Run ``test(holder, wire)`` on a running loop."""

    async def go() -> None:
        wire = Wire()
        await test(_HeadHoldingTransport(wire, asyncio.get_running_loop()), wire)  # type: ignore[arg-type]

    asyncio.run(go())


# -- the head waits for its body -------------------------------------------------------------


def test_a_head_leaves_with_the_body_written_next_in_one_write() -> None:
    async def test(holder: _HeadHoldingTransport, wire: Wire) -> None:
        holder.write(HEAD)
        assert wire.events == []
        holder.write(b"ok")
        assert wire.events == [HEAD + b"ok"]
        await asyncio.sleep(0)
        assert wire.events == [HEAD + b"ok"]  # nothing left to flush

    holding(test)


def test_a_head_alone_leaves_at_the_end_of_the_loop_step() -> None:
    async def test(holder: _HeadHoldingTransport, wire: Wire) -> None:
        holder.write(HEAD)
        await asyncio.sleep(0)
        assert wire.events == [HEAD]  # a stream's head does not wait for its first chunk
        holder.write(b"chunk")
        assert wire.events == [HEAD, b"chunk"]

    holding(test)


@pytest.mark.parametrize(
    "data", [b"HTTP/1.1 100 Continue\r\n\r\n", b"5\r\nchunk\r\n", b"HTTP/1.0 200 OK\r\n\r\n"]
)
def test_what_is_not_a_final_response_head_is_written_at_once(data: bytes) -> None:
    async def test(holder: _HeadHoldingTransport, wire: Wire) -> None:
        holder.write(data)
        assert wire.events == [data]

    holding(test)


def test_close_and_eof_send_the_held_head_first() -> None:
    async def test(holder: _HeadHoldingTransport, wire: Wire) -> None:
        holder.write(HEAD)
        holder.write_eof()
        holder.write(HEAD)
        holder.close()
        assert wire.events == [HEAD, "eof", HEAD, "close"]
        await asyncio.sleep(0)
        assert wire.events == [HEAD, "eof", HEAD, "close"]

    holding(test)


def test_abort_drops_the_held_head() -> None:
    async def test(holder: _HeadHoldingTransport, wire: Wire) -> None:
        holder.write(HEAD)
        holder.abort()
        await asyncio.sleep(0)
        assert wire.events == ["abort"]

    holding(test)


def test_a_held_head_is_not_written_to_a_closing_connection() -> None:
    async def test(holder: _HeadHoldingTransport, wire: Wire) -> None:
        holder.write(HEAD)
        wire.closing = True  # the client went away meanwhile
        await asyncio.sleep(0)
        assert wire.writes == []

    holding(test)


def test_everything_else_is_the_transports() -> None:
    async def test(holder: _HeadHoldingTransport, wire: Wire) -> None:
        assert holder.get_extra_info("peername") == ("127.0.0.1", 50000)
        assert holder.is_closing() is False
        wire.closing = True
        assert holder.is_closing() is True

    holding(test)


# -- the protocol: one write per small answer, Ollama's limit on a request head ---------------


class Echo:
    """An ASGI app that answers 200 with the size of the body it read; keeps every request."""

    def __init__(self) -> None:
        self.bodies: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        self.bodies.append(size)
        body = json.dumps({"read": size}).encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def converse(*chunks: bytes) -> tuple[Wire, Echo]:
    """Feed ``chunks`` to a ``ProxyHttpProtocol`` over a ``Wire``, one loop step apart, and
    let the app answer."""
    app = Echo()

    async def go() -> Wire:
        config = uvicorn.Config(
            app, http=ProxyHttpProtocol, ws="none", lifespan="off", log_config=None
        )
        config.load()
        protocol = ProxyHttpProtocol(
            config=config,
            server_state=ServerState(),
            app_state={},
            _loop=asyncio.get_running_loop(),
        )
        wire = Wire()
        protocol.connection_made(wire)  # type: ignore[arg-type]
        for chunk in chunks:
            protocol.data_received(chunk)
            await asyncio.sleep(0)
        for _ in range(100):  # the app's task, then the flush of a held head
            await asyncio.sleep(0)
        wire.events.append(LOST)
        protocol.connection_lost(None)
        return wire

    return asyncio.run(go()), app


LOST = "the test ends the connection"


def head_of(size: int, method: str = "GET", body_size: int = 0) -> bytes:
    """A request head of exactly ``size`` bytes (a padding header makes it up)."""
    start = f"{method} /api/chat HTTP/1.1\r\nhost: proxy\r\n".encode()
    if body_size:
        start += f"content-length: {body_size}\r\n".encode()
    pad = size - len(start) - len(b"x-pad: \r\n\r\n")
    return start + b"x-pad: " + b"a" * pad + b"\r\n\r\n"


def test_a_small_answer_leaves_in_one_write() -> None:
    wire, app = converse(b"GET /api/version HTTP/1.1\r\nhost: proxy\r\n\r\n")
    assert app.bodies == [0]
    [written] = wire.writes
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert written.endswith(b'\r\n\r\n{"read": 0}')


@pytest.mark.parametrize("piece", [None, 4096])
def test_a_head_beyond_ollamas_limit_gets_431_and_never_reaches_the_app(piece: int | None) -> None:
    request = head_of(MAX_HEAD_BYTES + 10_000)
    chunks = (
        [request]
        if piece is None
        else [request[i : i + piece] for i in range(0, len(request), piece)]
    )
    wire, app = converse(*chunks, b"GET / HTTP/1.1\r\nhost: proxy\r\n\r\n")
    assert app.bodies == []
    [written] = wire.writes
    head, _, body = written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"connection: close" in head
    assert f"content-length: {len(body)}".encode() in head
    assert body == b"431 Request Header Fields Too Large"
    # Written, then the end of the stream: the client gets to read it, the close comes later.
    assert wire.events[: wire.events.index(LOST)] == [written, "eof"]


def test_a_head_just_within_the_limit_is_served() -> None:
    wire, app = converse(head_of(MAX_HEAD_BYTES))
    assert app.bodies == [0]
    assert wire.writes[0].startswith(b"HTTP/1.1 200 OK")


def test_a_body_in_the_same_read_as_a_long_head_is_not_counted_as_head() -> None:
    body = b"b" * 100_000
    wire, app = converse(head_of(MAX_HEAD_BYTES - 1000, "POST", len(body)) + body)
    assert app.bodies == [len(body)]
    assert wire.writes[0].startswith(b"HTTP/1.1 200 OK")


def test_a_body_beyond_the_head_limit_goes_through() -> None:
    body = b"b" * (3 * MAX_HEAD_BYTES)
    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    wire, app = converse(head_of(1000, "POST", len(body)), *pieces)
    assert app.bodies == [len(body)]
    assert wire.writes[0].startswith(b"HTTP/1.1 200 OK")


def test_the_limit_is_per_request_on_a_kept_alive_connection() -> None:
    wire, app = converse(head_of(MAX_HEAD_BYTES - 64), head_of(MAX_HEAD_BYTES - 64))
    assert app.bodies == [0, 0]
    assert [data[:15] for data in wire.writes] == [b"HTTP/1.1 200 OK"] * 2


UPGRADE = (
    b"GET /api/tags HTTP/1.1\r\nhost: proxy\r\nconnection: Upgrade\r\nupgrade: websocket\r\n"
    b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
)


def test_an_upgrade_request_is_answered_as_plain_http_as_ollama_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Go's net/http serves a request asking for a WebSocket like any other; uvicorn would
    accept the upgrade (then the forwarder refused it: 403) or warn on every one."""
    with caplog.at_level(logging.DEBUG):
        wire, app = converse(UPGRADE, b"GET /api/version HTTP/1.1\r\nhost: proxy\r\n\r\n")
    assert app.bodies == [0, 0]  # both reached the app as HTTP, the connection kept
    assert [data[:15] for data in wire.writes] == [b"HTTP/1.1 200 OK"] * 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_the_limit_still_holds_after_a_request_with_a_body() -> None:
    wire, app = converse(head_of(1000, "POST", 10), b"0123456789", head_of(MAX_HEAD_BYTES + 1))
    assert app.bodies == [10]
    assert [data[:12] for data in wire.writes] == [b"HTTP/1.1 200", b"HTTP/1.1 431"]


# -- the uvicorn settings, and starting ------------------------------------------------------


def settings_for(tmp_path: Path, **values: Any) -> Settings:
    values.setdefault("ollama_upstream", "http://127.0.0.1:9")
    return Settings(analytics_dir=tmp_path, **values)


def test_uvicorn_runs_the_proxy_as_a_transparent_proxy_needs(tmp_path: Path) -> None:
    config = uvicorn_config(
        settings_for(tmp_path, proxy_host="127.0.0.2", proxy_port=12345, shutdown_grace_seconds=0.5)
    )
    assert isinstance(config.app, ProxyApp)
    assert config.app.supervisor is None
    assert (config.host, config.port) == ("127.0.0.2", 12345)
    assert config.http is ProxyHttpProtocol
    assert config.lifespan == "on"
    assert config.server_header is False
    assert config.date_header is False
    assert config.access_log is False
    assert config.proxy_headers is False
    assert config.ws == "none"
    assert config.log_config is None
    assert config.timeout_graceful_shutdown == 0.5  # not rounded down to 0
    assert config.timeout_keep_alive == 75
    config.load()
    assert config.http_protocol_class is ProxyHttpProtocol
    assert config.ws_protocol_class is None


def test_uvicorn_runs_ollama_too_for_serve(tmp_path: Path) -> None:
    config = uvicorn_config(settings_for(tmp_path), ollama_binary="/bin/false")
    assert isinstance(config.app, ProxyApp)
    assert config.app.supervisor is not None


def test_a_free_port_gives_a_server_not_yet_running(tmp_path: Path) -> None:
    port = free_port()
    server = prepare_server(settings_for(tmp_path, proxy_port=port))
    assert isinstance(server, uvicorn.Server)
    assert server.config.port == port
    assert server.started is False


def bad_rules(tmp_path: Path) -> Path:
    rules = tmp_path / "rules.json"
    rules.write_text('{"categories": [{"name": "Bad Name", "patterns": ["x"]}]}')
    return rules


def test_an_unusable_configuration_is_a_start_error_of_status_2(tmp_path: Path) -> None:
    rules = bad_rules(tmp_path)
    settings = settings_for(tmp_path, proxy_port=free_port(), prompt_category_rules=rules)
    with pytest.raises(StartError) as raised:
        prepare_server(settings)
    assert raised.value.code == 2
    assert str(rules) in str(raised.value)


def test_run_proxy_logs_the_start_error_and_returns_its_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = bad_rules(tmp_path)
    settings = settings_for(tmp_path, proxy_port=free_port(), prompt_category_rules=rules)
    with caplog.at_level(logging.ERROR, logger="app.server"):
        assert run_proxy(settings) == 2
    assert [r.levelname for r in caplog.records if r.name == "app.server"] == ["ERROR"]
    assert str(rules) in caplog.text


def not_ollama(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
    return 404, "text/plain", b"404 page not found"


def an_ollama(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
    return 200, "application/json", b'{"version": "0.33.1"}'


@pytest.mark.process
def test_a_taken_proxy_port_is_a_start_error_of_status_1(tmp_path: Path) -> None:
    with LocalHttpServer(not_ollama) as other:
        with pytest.raises(StartError) as raised:
            prepare_server(settings_for(tmp_path, proxy_port=other.port))
        assert raised.value.code == 1
        assert f"port {other.port} is already in use by another program" in str(raised.value)


@pytest.mark.process
def test_serve_checks_the_ollama_port_too(tmp_path: Path) -> None:
    with LocalHttpServer(an_ollama) as ollama:
        settings = settings_for(tmp_path, proxy_port=free_port(), ollama_upstream=ollama.url)
        # The proxy alone expects Ollama to be there.
        assert isinstance(prepare_server(settings), uvicorn.Server)
        with pytest.raises(StartError) as raised:
            prepare_server(settings, ollama_binary="/bin/false")
        assert raised.value.code == 1
        assert f"an Ollama server (version 0.33.1) is already listening on {ollama.port}" in str(
            raised.value
        )


@pytest.mark.process
def test_run_proxy_on_a_taken_port_returns_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with LocalHttpServer(not_ollama) as other, caplog.at_level(logging.ERROR, "app.server"):
        assert run_proxy(settings_for(tmp_path, proxy_port=other.port)) == 1
    assert "already in use" in caplog.text


# -- running until stopped -------------------------------------------------------------------


def stopping_app(stop_when_started: list[uvicorn.Server], fail: bool = False) -> Any:
    """An ASGI app whose lifespan startup fails (``fail``) or asks its server to stop."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if fail:
                    await send({"type": "lifespan.startup.failed", "message": "no Ollama"})
                    return
                stop_when_started[0].should_exit = True
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    return app


def server_of(*, fail: bool = False, port: int = 0) -> uvicorn.Server:
    holder: list[uvicorn.Server] = []
    config = uvicorn.Config(
        stopping_app(holder, fail), host="127.0.0.1", port=port, lifespan="on", log_config=None
    )
    holder.append(uvicorn.Server(config))
    return holder[0]


@pytest.mark.process
def test_a_server_that_started_and_stopped_is_status_0(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = server_of()
    settings = settings_for(tmp_path, proxy_port=4321, ollama_upstream="http://u:pw@ollama:11435")
    with caplog.at_level(logging.INFO, logger="app.server"):
        assert serve_until_stopped(server, settings) == 0
    assert server.started
    [line] = [r.getMessage() for r in caplog.records if r.name == "app.server"]
    assert line == "ollama-metrics proxy listening on http://127.0.0.1:4321 -> ollama:11435"


def test_a_server_that_never_started_is_status_1(tmp_path: Path) -> None:
    assert serve_until_stopped(server_of(fail=True), settings_for(tmp_path)) == 1


@pytest.mark.process
def test_a_port_taken_after_the_check_is_status_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with LocalHttpServer(not_ollama) as other:
        server = server_of(port=other.port)
        with caplog.at_level(logging.ERROR, logger="app.server"):
            assert serve_until_stopped(server, settings_for(tmp_path, proxy_port=other.port)) == 1
    assert f"port {other.port} is already in use" in caplog.text

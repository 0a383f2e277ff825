"""Ollama misbehaving: down, killed, reset, silent, or answering garbage (issue 9, item 1).

Each fault runs against the real proxy process and a real upstream (``tests.faulty_upstream``,
a raw TCP server that writes every byte itself), and checks four things: what the client
got (the upstream's bytes exactly, then a clear error), that the next request works, what
``/metrics`` counted, and what the analytics record (SQLite, read back through
``/analytics``) says happened.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from app.proxy.errors import stream_error_event
from tests.faulty_upstream import (
    FAULT_HEADER,
    HUGE_LINE_BYTES,
    TOKENS,
    Exchange,
    FaultyUpstream,
    payload_of,
    text_of,
)
from tests.metrics_support import scrape, total
from tests.support import ROOT, ProxyProcess, free_port, wait_until_listening

ENV = {"PS_POLL_INTERVAL": "0", "UPSTREAM_CONNECT_TIMEOUT": "1", "ANALYTICS_BACKEND": "sqlite"}
ERRORS = "ollama_upstream_errors_total"


@pytest.fixture
def upstream() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as server:
        yield server


@pytest.fixture
def proxy(upstream: FaultyUpstream) -> Iterator[ProxyProcess]:
    with ProxyProcess(upstream.url, env=ENV) as process:
        yield process


def request(prompt: str) -> bytes:
    return json.dumps({"model": "llama3.2", "prompt": prompt}).encode()


def generate(proxy: ProxyProcess, fault: str, prompt: str) -> httpx.Response:
    with proxy.client() as client:
        return client.post(
            "/api/generate",
            content=request(prompt),
            headers={FAULT_HEADER: fault, "Content-Type": "application/json"},
        )


def marker() -> str:
    return "fault-" + uuid.uuid4().hex


def record_of(proxy: ProxyProcess, prompt: str) -> dict[str, Any]:
    """The stored record of the request that sent ``prompt`` (the writer is asynchronous)."""
    deadline = time.monotonic() + 30
    while True:
        found = httpx.get(proxy.url + "/analytics/search", params={"limit": 1000}).json()
        ids = [r["id"] for r in found["records"] if r["prompt"] == prompt]
        if ids:
            return dict(httpx.get(f"{proxy.url}/analytics/records/{ids[0]}").json())
        assert time.monotonic() < deadline, f"no record of {prompt} after 30 s"
        time.sleep(0.1)


def errors(proxy: ProxyProcess) -> dict[str, float]:
    samples = scrape(proxy.url)
    reasons = ("connect", "timeout", "reset", "protocol", "midstream")
    return {reason: total(samples, ERRORS, reason=reason) for reason in reasons}


def requests_with_status(proxy: ProxyProcess, status: int) -> float:
    return total(scrape(proxy.url), "ollama_requests_total", status=str(status))


def error_line(body: bytes) -> tuple[bytes, str]:
    """The body before the proxy's closing ``{"error": ...}`` line, and its message."""
    assert body.endswith(b"}\n"), body[-200:]
    start = body.rfind(b"\n", 0, len(body) - 1) + 1
    return body[:start], str(json.loads(body[start:])["error"])


def serves_next(proxy: ProxyProcess) -> None:
    """The proxy answers the next request, through the same upstream, completely."""
    prompt = marker()
    answer = generate(proxy, "ok", prompt)
    assert answer.status_code == 200, answer.text
    assert answer.content == payload_of("ok")
    assert record_of(proxy, prompt)["upstream_error"] is None


def poll(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def upstream_sockets(proxy: ProxyProcess, port: int) -> list[Any]:
    """The proxy's TCP connections to the upstream's port (any state but closed)."""
    connections = psutil.Process(proxy.pid).net_connections(kind="tcp")
    return [c for c in connections if c.raddr and c.raddr.port == port]


def only_exchange(upstream: FaultyUpstream, fault: str) -> Exchange:
    seen = [e for e in upstream.exchanges if e.fault == fault]
    assert len(seen) == 1
    return seen[0]


# -- Ollama not there ------------------------------------------------------------------------


@pytest.mark.process
def test_ollama_not_started_yet_then_started() -> None:
    port = free_port()
    # The /api/ps poller runs too: it must not stop the start, nor the recovery.
    env = {**ENV, "PS_POLL_INTERVAL": "0.2"}
    with ProxyProcess(f"http://127.0.0.1:{port}", env=env) as proxy:
        # The proxy started with nothing behind it, and says so per request.
        assert httpx.get(proxy.url + "/metrics").status_code == 200
        prompt = marker()
        answer = generate(proxy, "ok", prompt)
        assert answer.status_code == 502
        assert answer.headers["content-type"] == "application/json; charset=utf-8"
        message = answer.json()["error"]
        assert message == (
            f"cannot connect to Ollama at http://127.0.0.1:{port} "
            "(connection refused): is it running?"
        )
        assert errors(proxy)["connect"] == 1
        record = record_of(proxy, prompt)
        assert record["status"] == 502
        assert record["upstream_error"] == "connect"
        assert record["error"] == message
        assert record["cancelled"] is False
        assert record["response"] == ""
        assert total(scrape(proxy.url), "ollama_upstream_up") == 0
        with FaultyUpstream(port) as upstream:
            serves_next(proxy)
            poll(lambda: any(e.fault == "get /api/ps" for e in upstream.exchanges), "a poll")
            poll(lambda: total(scrape(proxy.url), "ollama_upstream_up") == 1, "Ollama is up")
        assert errors(proxy)["connect"] == 1


@pytest.mark.process
def test_ollama_accepting_no_connection_times_out() -> None:
    # A listener whose backlog is full (Ollama starting, or swamped): connecting hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = socket.create_connection(("127.0.0.1", port))
        with ProxyProcess(f"http://127.0.0.1:{port}", env=ENV) as proxy:
            prompt = marker()
            answer = generate(proxy, "ok", prompt)
            assert answer.status_code == 502
            message = answer.json()["error"]
            assert message == f"timed out connecting to Ollama at http://127.0.0.1:{port}"
            assert errors(proxy)["timeout"] == 1
            record = record_of(proxy, prompt)
            assert record["status"] == 502
            assert record["upstream_error"] == "timeout"
            assert record["error"] == message
            queued.close()
            listener.close()
            with FaultyUpstream(port):
                serves_next(proxy)


# -- broken off mid-stream -------------------------------------------------------------------


def start_process_upstream(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.faulty_upstream", "--port", str(port)], cwd=ROOT
    )
    wait_until_listening(port, process)
    return process


@pytest.mark.process
def test_ollama_killed_mid_stream() -> None:
    port = free_port()
    ollama = start_process_upstream(port)
    try:
        with ProxyProcess(f"http://127.0.0.1:{port}", env=ENV) as proxy:
            prompt = marker()
            received = b""
            with (
                proxy.client() as client,
                client.stream(
                    "POST",
                    "/api/generate",
                    content=request(prompt),
                    headers={FAULT_HEADER: "stall-after-3"},
                ) as answer,
            ):
                assert answer.status_code == 200
                pieces = answer.iter_raw()
                while received.count(b"\n") < 3:
                    received += next(pieces)
                ollama.kill()
                ollama.wait()
                received += b"".join(pieces)
            before, message = error_line(received)
            assert before == payload_of("stall-after-3")
            assert message == f"Ollama at http://127.0.0.1:{port} broke off the response unfinished"
            assert errors(proxy)["reset"] == 1
            record = record_of(proxy, prompt)
            assert record["status"] == 200
            assert record["upstream_error"] == "reset"
            assert record["error"] == message
            assert record["response"] == text_of(3)
            assert record["cancelled"] is False
            ollama = start_process_upstream(port)  # Ollama restarted on its port
            serves_next(proxy)
    finally:
        ollama.kill()
        ollama.wait()


@pytest.mark.process
@pytest.mark.parametrize(
    ("fault", "reason", "tokens", "says"),
    [
        ("reset-after-3", "reset", 3, "broke off the response unfinished"),
        # The chunk stops mid-line: the error goes on a line of its own after it.
        ("truncated-chunk", "reset", 2, "broke off the response unfinished"),
        ("bad-chunk-size", "protocol", 2, "invalid response from Ollama"),
    ],
)
def test_stream_broken_off_ends_with_an_error_line(
    upstream: FaultyUpstream, proxy: ProxyProcess, fault: str, reason: str, tokens: int, says: str
) -> None:
    prompt = marker()
    answer = generate(proxy, fault, prompt)
    assert answer.status_code == 200
    before, message = error_line(answer.content)
    sent = bytes(only_exchange(upstream, fault).sent)
    assert sent == payload_of(fault)
    assert before == sent if sent.endswith(b"\n") else before == sent + b"\n"
    assert says in message
    counted = errors(proxy)
    assert counted[reason] == 1
    assert sum(counted.values()) == 1
    record = record_of(proxy, prompt)
    assert record["status"] == 200
    assert record["upstream_error"] == reason
    assert record["error"] == message
    assert record["response"] == text_of(tokens)
    assert record["cancelled"] is False
    assert record["streamed"] is True
    serves_next(proxy)


# The client asked for usage itself (events pass as they come), or the proxy asked for it
# (events pass whole, so that the usage it asked for can be taken out again).
@pytest.mark.process
@pytest.mark.parametrize("client_asked_usage", [True, False])
def test_event_stream_broken_off_mid_event_ends_with_an_error_event(
    upstream: FaultyUpstream, proxy: ProxyProcess, client_asked_usage: bool
) -> None:
    prompt = marker()
    body: dict[str, object] = {
        "model": "llama3.2",
        "stream": True,
        "messages": [{"role": "user", "content": prompt}],
    }
    if client_asked_usage:
        body["stream_options"] = {"include_usage": True}
    with proxy.client() as client:
        answer = client.post("/v1/chat/completions", json=body, headers={FAULT_HEADER: "sse-cut"})
    assert answer.status_code == 200
    sent = bytes(only_exchange(upstream, "sse-cut").sent)
    assert sent == payload_of("sse-cut")
    # The fragment is ended, so that the error is an event of its own.
    assert answer.content.startswith(sent + b"\n\ndata: ")
    assert answer.content.endswith(b"\n\n")
    event = json.loads(answer.content[len(sent) + len(b"\n\ndata: ") :])
    message = event["error"]["message"]
    assert message == f"Ollama at {upstream.url} broke off the response unfinished"
    assert event["error"]["type"] == "api_error"
    assert errors(proxy)["reset"] == 1
    record = record_of(proxy, prompt)
    assert record["status"] == 200
    assert record["upstream_error"] == "reset"
    assert record["error"] == message
    assert record["response"] == text_of(2)
    serves_next(proxy)


@pytest.mark.process
def test_a_short_non_streamed_answer_is_a_502(
    upstream: FaultyUpstream, proxy: ProxyProcess
) -> None:
    # The answer is read whole before any of it goes on: the client gets a clean error,
    # not a 200 whose body is cut short.
    prompt = marker()
    answer = generate(proxy, "short-json", prompt)
    assert answer.status_code == 502
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    message = answer.json()["error"]
    assert message == f"Ollama at {upstream.url} broke off the response unfinished"
    assert only_exchange(upstream, "short-json").sent == payload_of("short-json")
    assert errors(proxy)["reset"] == 1
    record = record_of(proxy, prompt)
    assert record["status"] == 502
    assert record["upstream_error"] == "reset"
    assert record["error"] == message
    assert record["response"] == ""
    serves_next(proxy)


@pytest.mark.parametrize(
    ("path", "content_type", "after", "start"),
    [
        ("/api/chat", b"application/x-ndjson", b"", b'{"error"'),
        ("/api/chat", b"application/x-ndjson", b"}\n", b'{"error"'),
        ("/api/chat", b"application/x-ndjson", b'"t', b'\n{"error"'),
        ("/v1/chat/completions", b"text/event-stream", b"}\n\n", b"data: "),
        ("/v1/chat/completions", b"text/event-stream", b"}\n", b"\ndata: "),
        ("/v1/chat/completions", b"text/event-stream", b'"t', b"\n\ndata: "),
        ("/v1/messages", b"text/event-stream", b'"t', b"\n\nevent: error\n"),
    ],
)
def test_the_error_event_starts_on_a_line_of_its_own(
    path: str, content_type: bytes, after: bytes, start: bytes
) -> None:
    event = stream_error_event(path, content_type, "gone", after=after)
    assert event is not None
    assert event.startswith(start)
    assert event.endswith(b"\n")


@pytest.mark.process
def test_an_answer_that_is_not_http_is_a_502(upstream: FaultyUpstream, proxy: ProxyProcess) -> None:
    prompt = marker()
    answer = generate(proxy, "not-http", prompt)
    assert answer.status_code == 502
    message = answer.json()["error"]
    assert message.startswith(f"invalid response from Ollama at {upstream.url}: ")
    assert errors(proxy)["protocol"] == 1
    record = record_of(proxy, prompt)
    assert record["status"] == 502
    assert record["upstream_error"] == "protocol"
    assert record["error"] == message
    assert record["response"] == ""
    serves_next(proxy)


# -- garbage Ollama would never send, passed through ------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize(
    ("fault", "text"),
    [
        ("non-json", text_of(TOKENS)),
        # JSON escapes a lone surrogate; the record keeps a replacement character instead,
        # as no store can hold the surrogate.
        ("invalid-utf8", "t0 \ufffd lone surrogate" + text_of(TOKENS)[3:]),
    ],
)
def test_lines_that_are_not_ollamas_pass_through_untouched(
    upstream: FaultyUpstream, proxy: ProxyProcess, fault: str, text: str
) -> None:
    prompt = marker()
    answer = generate(proxy, fault, prompt)
    assert answer.status_code == 200
    assert answer.content == bytes(only_exchange(upstream, fault).sent) == payload_of(fault)
    assert sum(errors(proxy).values()) == 0
    assert requests_with_status(proxy, 200) == 1
    record = record_of(proxy, prompt)
    assert record["status"] == 200
    assert record["upstream_error"] is None
    assert record["error"] == ""
    assert record["response"] == text
    assert record["completion_tokens"] == TOKENS
    assert record["done_reason"] == "stop"
    serves_next(proxy)


def peak_rss_since_reset(pid: int) -> Callable[[], int]:
    """Resets the kernel's peak-RSS mark of ``pid``; the returned function reads it."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")

    def peak() -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    return peak


@pytest.mark.process
def test_a_50_mb_line_passes_through_with_bounded_memory(
    upstream: FaultyUpstream, proxy: ProxyProcess
) -> None:
    serves_next(proxy)  # warm: code paths and the pool exist before we measure
    baseline = psutil.Process(proxy.pid).memory_info().rss
    peak = peak_rss_since_reset(proxy.pid)
    prompt = marker()
    answer = generate(proxy, "huge-line", prompt)
    growth = peak() - baseline
    assert answer.status_code == 200
    assert len(answer.content) > HUGE_LINE_BYTES
    assert answer.content == bytes(only_exchange(upstream, "huge-line").sent)
    print(f"proxy peak RSS growth during a {HUGE_LINE_BYTES >> 20} MB line: {growth / 1e6:.1f} MB")
    assert growth < 40 * 1024 * 1024, f"proxy RSS grew by {growth / 1e6:.1f} MB"
    assert sum(errors(proxy).values()) == 0
    record = record_of(proxy, prompt)
    assert record["status"] == 200
    assert record["upstream_error"] is None
    assert record["completion_tokens"] == TOKENS
    assert record["response_bytes"] == len(answer.content)
    # The line is passed on but not read (reading it would hold it three times over): the
    # record keeps the text of the other lines and says that some is missing.
    assert record["response"] == text_of(TOKENS)
    assert record["truncated"] is True
    serves_next(proxy)


# -- silence ---------------------------------------------------------------------------------


@pytest.mark.process
def test_a_slow_generation_is_never_timed_out(
    upstream: FaultyUpstream, proxy: ProxyProcess
) -> None:
    # Five seconds of silence after the first line, against a 1 s connect timeout: no
    # timeout of the proxy may end a generation that is merely slow.
    prompt = marker()
    fault = "pause-after-1-5"
    answer = generate(proxy, fault, prompt)
    assert answer.status_code == 200
    assert answer.content == bytes(only_exchange(upstream, fault).sent) == payload_of("ok")
    assert sum(errors(proxy).values()) == 0
    record = record_of(proxy, prompt)
    assert record["upstream_error"] is None
    assert record["error"] == ""
    assert record["response"] == text_of(TOKENS)
    assert record["duration_s"] >= 5
    serves_next(proxy)


def raw_request(proxy: ProxyProcess, fault: str, prompt: str) -> socket.socket:
    body = request(prompt)
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + f"{FAULT_HEADER}: {fault}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


@pytest.mark.process
@pytest.mark.parametrize(
    ("fault", "status", "text"),
    [("stall-after-1", 200, text_of(1)), ("stall-head", 499, "")],
)
def test_a_client_leaving_a_silent_upstream_releases_it(
    upstream: FaultyUpstream, proxy: ProxyProcess, fault: str, status: int, text: str
) -> None:
    prompt = marker()
    with raw_request(proxy, fault, prompt) as sock:
        if status == 200:
            received = b""
            while payload_of(fault) not in received:  # the head and the first line
                received += sock.recv(65536)
        poll(lambda: bool(upstream.exchanges), "the request reached the upstream")
        assert upstream_sockets(proxy, upstream.port)
    exchange = only_exchange(upstream, fault)
    poll(lambda: exchange.peer_closed, "the upstream saw its connection closed")
    poll(lambda: upstream.open_connections == 0, "no connection left open upstream")
    poll(lambda: not upstream_sockets(proxy, upstream.port), "the proxy holds no connection")
    record = record_of(proxy, prompt)
    assert record["cancelled"] is True
    assert record["status"] == status
    assert record["upstream_error"] is None
    assert record["response"] == text
    assert sum(errors(proxy).values()) == 0
    assert requests_with_status(proxy, status) == 1
    serves_next(proxy)


# -- text that cannot be encoded ---------------------------------------------------------------


@pytest.mark.process
def test_a_lone_surrogate_in_model_or_prompt_breaks_neither_metrics_nor_records(
    upstream: FaultyUpstream, proxy: ProxyProcess
) -> None:
    # Found with the garbage above: JSON may escape a lone surrogate, which no UTF-8 encoder
    # takes. As a model label it made /metrics a 500; in a record it stalled the SQLite
    # writer on that record, and every record after it waited.
    prompt = marker()
    body = b'{"model":"llama\\ud800","prompt":"\\udfff %b"}' % prompt.encode()
    with proxy.client() as client:
        answer = client.post("/api/generate", content=body)
    assert answer.status_code == 200
    assert answer.content == payload_of("ok")
    assert only_exchange(upstream, "ok").body == body  # Ollama gets what the client sent
    assert httpx.get(proxy.url + "/metrics").status_code == 200
    assert requests_with_status(proxy, 200) == 1
    record = record_of(proxy, "\ufffd " + prompt)
    assert record["model"].startswith("llama\ufffd")
    assert record["response"] == text_of(TOKENS)
    serves_next(proxy)

"""Streams pass through unbuffered, uploads with flat memory, disconnects travel upstream."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.emulator import EmulatorServer
from tests.support import ProxyProcess

pytestmark = pytest.mark.process

TOKEN_DELAY = 0.2  # the pace of slow_emulator (tests/conftest.py)


@pytest.fixture(scope="module")
def slow_proxy(slow_emulator: EmulatorServer) -> Iterator[ProxyProcess]:
    with ProxyProcess(slow_emulator.url) as process:
        yield process


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/api/generate",
            {"model": "llama3.2", "prompt": "stream me", "options": {"num_predict": 4}},
        ),
        (
            "/api/chat",
            {
                "model": "llama3.2",
                "messages": [{"role": "user", "content": "stream me"}],
                "options": {"num_predict": 4},
            },
        ),
        (
            "/v1/chat/completions",
            {
                "model": "llama3.2",
                "messages": [{"role": "user", "content": "stream me"}],
                "stream": True,
                "max_tokens": 4,
            },
        ),
    ],
)
def test_first_chunk_arrives_before_ollama_sends_the_second(
    slow_emulator: EmulatorServer, slow_proxy: ProxyProcess, path: str, body: dict[str, object]
) -> None:
    slow_emulator.reset()
    with (
        httpx.Client(base_url=slow_proxy.url, timeout=30) as client,
        client.stream("POST", path, json=body) as response,
    ):
        chunks = response.iter_raw()
        first = next(chunks)
        # The emulator's own account: how many chunks had it written when ours arrived?
        seen = slow_emulator.requests()[-1]
        assert first.strip(), "the first chunk carried no data"
        assert seen["chunks_sent"] == 1
        assert seen["completed"] is False
        rest = b"".join(chunks)
    assert seen["path"] == path
    assert len((first + rest).strip().splitlines()) > 2


def test_client_disconnect_cancels_the_upstream_request(
    slow_emulator: EmulatorServer, slow_proxy: ProxyProcess
) -> None:
    slow_emulator.reset()
    body = json.dumps(
        {"model": "llama3.2", "prompt": "long", "options": {"num_predict": 200}}
    ).encode()
    with socket.create_connection(("127.0.0.1", slow_proxy.port)) as sock:
        sock.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        received = b""
        while received.count(b"\n{") < 1:
            received += sock.recv(65536)
    # The socket is closed: the emulator must see its request cancelled well before 200
    # tokens at 0.2 s would have finished.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        entry = slow_emulator.requests()[-1]
        if entry["cancelled"]:
            break
        time.sleep(0.05)
    assert entry["path"] == "/api/generate"
    assert entry["cancelled"] is True
    assert entry["completed"] is False
    assert int(entry["chunks_sent"]) < 200


def test_hanging_upstream_is_released_when_the_client_leaves(
    slow_emulator: EmulatorServer, slow_proxy: ProxyProcess
) -> None:
    slow_emulator.reset()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            slow_proxy.url + "/api/generate",
            json={"model": "llama3.2", "prompt": "x"},
            headers={"X-Emulator-Fault": "hang"},
            timeout=httpx.Timeout(30, read=1.0),
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not slow_emulator.requests()[-1]["cancelled"]:
        time.sleep(0.05)
    assert slow_emulator.requests()[-1]["cancelled"] is True


UPLOAD_BYTES = 1 << 30
BLOCK = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB of bytes that do not compress


def _blocks() -> Iterator[bytes]:
    for _ in range(UPLOAD_BYTES // len(BLOCK)):
        yield BLOCK


def _tree_rss(process: psutil.Process) -> int:
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def test_one_gigabyte_upload_passes_with_flat_proxy_memory(
    emulator: EmulatorServer, proxy: ProxyProcess
) -> None:
    digest = hashlib.sha256()
    for block in _blocks():
        digest.update(block)
    name = "sha256:" + digest.hexdigest()
    watched = psutil.Process(proxy.pid)
    with httpx.Client(base_url=proxy.url, timeout=120) as client:
        client.get("/api/version")  # warm: the pool and code paths exist before we measure
        baseline = _tree_rss(watched)
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _tree_rss(watched))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            answer = client.post(f"/api/blobs/{name}", content=_blocks())
        finally:
            done.set()
            sampler.join()
        assert answer.status_code == 201, answer.text
        assert client.head(f"/api/blobs/{name}").status_code == 200
    seen = [e for e in emulator.requests() if e["method"] == "POST" and e["path"].endswith(name)]
    assert seen[-1]["body_len"] == UPLOAD_BYTES
    assert seen[-1]["body_sha256"] == digest.hexdigest()
    growth = peak - baseline
    print(
        f"proxy RSS {baseline / 1e6:.1f} MB, growth during the 1 GiB upload {growth / 1e6:.1f} MB"
    )
    assert growth < 50 * 1024 * 1024, f"proxy RSS grew by {growth / 1e6:.1f} MB"


def test_upload_with_a_wrong_digest_gets_ollamas_answer(proxy: ProxyProcess) -> None:
    with proxy.client() as client:
        answer = client.post("/api/blobs/sha256:" + "1" * 64, content=b"not matching")
    assert answer.status_code == 400
    assert "error" in answer.json()


def test_client_leaving_mid_upload_aborts_the_upstream_upload(
    emulator: EmulatorServer, proxy: ProxyProcess
) -> None:
    announced = 100 * 1024 * 1024
    name = "sha256:" + "2" * 64
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(
            f"POST /api/blobs/{name} HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Length: {announced}\r\n\r\n".encode()
        )
        for _ in range(10):
            sock.sendall(BLOCK)
    deadline = time.monotonic() + 10
    entry: dict[str, object] = {}
    while time.monotonic() < deadline:
        entries = [e for e in emulator.requests() if str(e["path"]).endswith(name)]
        if entries and (entries[-1]["cancelled"] or entries[-1]["aborted"]):
            entry = entries[-1]
            break
        time.sleep(0.05)
    assert entry, "the emulator never saw the upload end"
    assert int(str(entry["body_len"])) < announced
    assert entry["completed"] is False
    with proxy.client() as client:
        assert client.get("/api/version").status_code == 200

"""Process faults end to end: SIGTERM under load drains in-flight streams (within the grace
period) and the analytics queue before a clean exit; ``kill -9`` in the middle of heavy
writes loses at most what was in memory, leaves SQLite intact, and the next start goes on."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.emulator import EmulatorServer, expected_generation
from tests.support import ARTIFACTS, ProxyProcess, logged_proxy

pytestmark = pytest.mark.process

# A clean stop on SIGTERM: uvicorn shuts down, then re-raises the signal so that the exit
# status says why (as `test_cli` pins down); a crash or a hang would look different.
CLEAN_EXIT = -signal.SIGTERM
TOKEN_DELAY = 0.05  # the pace of slow_emulator (tests/conftest.py)


def stored(database: Path, tag: str) -> dict[str, list[dict[str, object]]]:
    """The records whose prompt starts with ``tag``, by prompt."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT prompt, status, error, upstream_error, completion_tokens FROM requests "
            "WHERE prompt LIKE ?",
            (tag + " %",),
        )
        found: dict[str, list[dict[str, object]]] = {}
        for row in rows:
            found.setdefault(row["prompt"], []).append(dict(row))
        return found


def integrity(database: Path) -> list[tuple[str]]:
    with sqlite3.connect(database) as db:
        return list(db.execute("PRAGMA integrity_check").fetchall())


@dataclass
class Stream:
    """One streamed /api/generate read line by line in a thread."""

    url: str
    prompt: str
    tokens: int
    lines: list[dict[str, object]] = field(default_factory=list)
    error: str | None = None
    first_line: threading.Event = field(default_factory=threading.Event)
    ended_at: float | None = None

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        body = {"model": "llama3.2", "prompt": self.prompt, "options": {"num_predict": self.tokens}}
        try:
            with httpx.stream("POST", self.url + "/api/generate", json=body, timeout=60) as answer:
                assert answer.status_code == 200
                for line in answer.iter_lines():
                    self.lines.append(json.loads(line))
                    self.first_line.set()
        except httpx.HTTPError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ended_at = time.monotonic()
            self.first_line.set()

    @property
    def done(self) -> bool:
        return bool(self.lines) and self.lines[-1].get("done") is True


def refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def draining_proxy(upstream: str, grace: float, drain: float, log_name: str) -> ProxyProcess:
    """A started proxy on SQLite that gets ``grace`` seconds for its streams at SIGTERM,
    then ``drain`` seconds for its analytics queue."""
    env = {
        "ANALYTICS_BACKEND": "sqlite",
        "SHUTDOWN_GRACE_SECONDS": str(grace),
        "ANALYTICS_DRAIN_SECONDS": str(drain),
    }
    return logged_proxy(upstream, env, log_name)


def test_sigterm_drains_in_flight_streams_and_the_queue(slow_emulator: EmulatorServer) -> None:
    grace, drain = 15.0, 10.0
    proxy = draining_proxy(slow_emulator.url, grace, drain, "faults-sigterm.log")
    tag = "sigterm"
    database = proxy.workdir / "analytics.db"  # created and migrated before it listens
    # Another connection keeps the store locked, so every record is still queued at SIGTERM
    # and only the shutdown drain can write them.
    holder = sqlite3.connect(database, isolation_level=None, timeout=30)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        # Short requests, finished (their records queued) before the signal...
        with proxy.client() as client:
            quick = [f"{tag} quick {n}" for n in range(50)]
            for prompt in quick:
                body = {"model": "llama3.2", "prompt": prompt, "stream": False}
                body["options"] = {"num_predict": 1}
                assert client.post("/api/generate", json=body).status_code == 200
        # ...and slow streams in flight when it comes: 80 tokens, 4 s each.
        streams = [Stream(proxy.url, f"{tag} stream {n}", tokens=80) for n in range(6)]
        for stream in streams:
            assert stream.first_line.wait(20)
            assert stream.error is None
        deadline = time.monotonic() + 10
        while queue_depth(proxy) != 50:  # the last record may trail its answer a moment
            assert time.monotonic() < deadline, f"queue depth {queue_depth(proxy)}, not 50"
            time.sleep(0.05)
        assert proxy.process is not None
        signalled = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        # New connections are refused at once, while the streams still run.
        deadline = time.monotonic() + 5
        while not refused(proxy.port):
            assert time.monotonic() < deadline, "the proxy still accepts connections"
            time.sleep(0.02)
        assert any(s.ended_at is None for s in streams), "streams ended before the check"
        for stream in streams:
            stream.thread.join()
        # The streams are done; the process waits on the drain, for the store.
        time.sleep(1)
        assert proxy.process.poll() is None, "exited without writing the queue"
        holder.execute("ROLLBACK")
        code = proxy.process.wait(timeout=grace + drain + 10)
        exited = time.monotonic() - signalled
        assert code == CLEAN_EXIT
        assert exited < grace + drain
        for stream in streams:
            assert stream.error is None, stream.error
            assert stream.done, f"{stream.prompt} was cut: {stream.lines[-1:]}"
            # All 80 tokens arrived (a chunk may carry two, so lines are no token count).
            assert stream.lines[-1]["eval_count"] == 80
            text = "".join(str(line.get("response", "")) for line in stream.lines)
            assert text == expected_generation("llama3.2", stream.prompt, num_predict=80).text
        records = stored(database, tag)
        assert set(records) == set(quick) | {s.prompt for s in streams}
        assert all(len(rows) == 1 for rows in records.values())
        assert all(rows[0]["status"] == 200 and not rows[0]["error"] for rows in records.values())
        log = (ARTIFACTS / "faults-sigterm.log").read_text()
        assert "lost at shutdown" not in log
        print(f"SIGTERM: clean exit after {exited:.1f}s, {len(records)} queued records written")
    finally:
        holder.close()
        proxy.cleanup()


def queue_depth(proxy: ProxyProcess) -> float:
    text = httpx.get(proxy.url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith('ollama_analytics_queue_depth{backend="sqlite"}'):
            return float(line.split()[-1])
    raise AssertionError("no ollama_analytics_queue_depth for sqlite")


def test_sigterm_cuts_a_stream_longer_than_the_grace_period(
    slow_emulator: EmulatorServer,
) -> None:
    grace, drain = 1.5, 10.0
    proxy = draining_proxy(slow_emulator.url, grace, drain, "faults-sigterm-cut.log")
    tag = "sigterm-cut"
    try:
        stream = Stream(proxy.url, f"{tag} long", tokens=600)  # 30 s
        assert stream.first_line.wait(20)
        assert stream.error is None
        assert proxy.process is not None
        signalled = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        code = proxy.process.wait(timeout=grace + drain + 10)
        exited = time.monotonic() - signalled
        stream.thread.join(timeout=10)
        assert code == CLEAN_EXIT
        # A clear end: the body stops without its last chunk, so the client gets an error,
        # never a stream that looks complete.
        assert not stream.done
        assert stream.error is not None
        assert "RemoteProtocolError" in stream.error, stream.error
        assert stream.ended_at is not None
        assert stream.ended_at - signalled < grace + drain
        assert 0 < len(stream.lines) < 600
        records = stored(proxy.workdir / "analytics.db", tag)
        (row,) = records[f"{tag} long"]
        assert row["upstream_error"] == "midstream"
        print(f"SIGTERM cut: stream ended {stream.ended_at - signalled:.1f}s, exit {exited:.1f}s")
    finally:
        proxy.cleanup()


def test_kill_9_during_heavy_writes_loses_only_memory(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    env = {
        "ANALYTICS_BACKEND": "sqlite",
        "ANALYTICS_DIR": str(tmp_path),
        "ANALYTICS_BATCH_SIZE": "50",
    }
    database = tmp_path / "analytics.db"
    tag = "kill9"
    proxy = logged_proxy(emulator.url, env, "faults-kill9.log")
    sent: list[str] = []
    completed: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()
    counter = iter(range(10**9))

    def load() -> None:
        with httpx.Client(base_url=proxy.url, timeout=30) as client:
            while not stop.is_set():
                with lock:
                    prompt = f"{tag} {next(counter)} " + "y" * 8000
                    sent.append(prompt)
                body = {"model": "llama3.2", "prompt": prompt, "stream": False}
                body["options"] = {"num_predict": 2}
                try:
                    ok = client.post("/api/generate", json=body).status_code == 200
                except httpx.HTTPError:
                    return  # the proxy is gone
                if ok:
                    with lock:
                        completed.append(prompt)

    workers = [threading.Thread(target=load) for _ in range(6)]
    try:
        for worker in workers:
            worker.start()

        def written() -> int:
            text = httpx.get(proxy.url + "/metrics", timeout=10).text
            for line in text.splitlines():
                if line.startswith('ollama_analytics_records_written_total{backend="sqlite"}'):
                    return int(float(line.split()[-1]))
            return 0

        deadline = time.monotonic() + 60
        while written() < 300:
            assert time.monotonic() < deadline, "too few records written before the kill"
            time.sleep(0.05)
        assert proxy.process is not None
        proxy.process.kill()
        assert proxy.process.wait(timeout=10) == -signal.SIGKILL
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        proxy.cleanup()
    assert integrity(database) == [("ok",)]
    before = stored(database, tag)
    assert all(len(rows) == 1 for rows in before.values())
    assert set(before) <= set(sent)
    # Present <= accepted: answered requests, plus at most one in flight per worker whose
    # record was queued before its answer reached the client.
    assert len(before) <= len(completed) + len(workers)
    lost = len(set(completed) - set(before))

    again = logged_proxy(emulator.url, env, "faults-kill9-restart.log")
    try:
        with again.client() as client:
            fresh = [f"{tag}-after {n}" for n in range(20)]
            for prompt in fresh:
                body = {"model": "llama3.2", "prompt": prompt, "stream": False}
                assert client.post("/api/generate", json=body).status_code == 200
        deadline = time.monotonic() + 30
        while len(stored(database, f"{tag}-after")) < 20:
            assert time.monotonic() < deadline, "the restarted proxy writes nothing"
            time.sleep(0.1)
    finally:
        assert again.stop() == CLEAN_EXIT
        again.cleanup()
    after = stored(database, tag)
    assert set(after) == set(before)  # what survived the kill is untouched
    assert set(stored(database, f"{tag}-after")) == set(fresh)
    assert integrity(database) == [("ok",)]
    counts = Counter(len(rows) for rows in after.values())
    assert set(counts) == {1}
    print(
        f"kill -9: {len(sent)} sent, {len(completed)} answered, {len(before)} stored, "
        f"{lost} answered but lost (in memory)"
    )

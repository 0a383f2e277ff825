"""Store faults end to end: a real proxy process with emulator traffic while its analytics
store goes away — a PostgreSQL cluster stopped and restarted, a SQLite file locked by another
connection or on a full disk, a Loki answering 500/429 or hanging. The proxy keeps answering
at its usual pace; accepted records are written once the store is back (exactly once); what
overflows the queue is counted, exactly."""

from __future__ import annotations

import contextlib
import email.utils
import errno
import glob
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.analytics.loki import retry_after
from tests.emulator import EmulatorServer
from tests.support import (
    ARTIFACTS,
    ProxyProcess,
    QuietHandler,
    ThreadedHttpServer,
    free_port,
    logged_proxy,
)

# A clean stop on SIGTERM: uvicorn shuts down, then re-raises the signal so that the exit
# status says why (as `test_cli` pins down); a crash or a hang would look different.
CLEAN_EXIT = -signal.SIGTERM
# "Did not hang": a request through the proxy takes milliseconds; the outages last seconds.
ANSWER_BOUND = 3.0


# -- helpers ---------------------------------------------------------------------------------


def metric(proxy: ProxyProcess, name: str, **labels: str) -> float:
    """One sample of the proxy's /metrics (0 when absent)."""
    text = httpx.get(proxy.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def until(check: Callable[[], bool], within: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached within {within}s"
        time.sleep(0.1)


@dataclass
class Answer:
    prompt: str
    status: int | None  # None: no HTTP answer at all
    started: float
    elapsed: float


def ask(client: httpx.Client, prompt: str) -> Answer:
    body = {"model": "llama3.2", "prompt": prompt, "stream": False, "options": {"num_predict": 3}}
    started = time.monotonic()
    try:
        status: int | None = client.post("/api/generate", json=body).status_code
    except httpx.HTTPError:
        status = None
    return Answer(prompt, status, started, time.monotonic() - started)


@dataclass
class Traffic:
    """Requests with unique prompts from a few threads, until stopped."""

    url: str
    tag: str
    workers: int = 3
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._count = iter(range(10**9))
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(self.workers)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                with self._lock:
                    n = next(self._count)
                answer = ask(client, f"{self.tag} {n}")
                with self._lock:
                    self.answers.append(answer)
                self._stop.wait(0.02)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def assert_unaffected(answers: list[Answer]) -> None:
    assert answers, "no traffic was sent"
    bad = [a for a in answers if a.status != 200]
    assert bad == [], f"{len(bad)} requests failed, e.g. {bad[:3]}"
    slow = max(a.elapsed for a in answers)
    assert slow < ANSWER_BOUND, f"a request took {slow:.2f}s while the store was down"


def sqlite_prompts(path: Path, tag: str) -> Counter[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
        rows = db.execute("SELECT prompt FROM requests WHERE prompt LIKE ?", (tag + " %",))
        return Counter(prompt for (prompt,) in rows)


def warm_up(proxy: ProxyProcess, backend: str, tag: str) -> None:
    """One request, written: the store exists and is migrated before the fault starts."""
    with proxy.client() as client:
        assert ask(client, f"{tag} warm-up").status == 200
    until(
        lambda: metric(proxy, "ollama_analytics_records_written_total", backend=backend) >= 1,
        what=f"the first record written to {backend}",
    )


# -- PostgreSQL: a cluster of our own ------------------------------------------------------


class Cluster:
    """A PostgreSQL cluster in a temporary directory, run as the ``postgres`` OS user on a
    free loopback port, so that stopping it harms nobody else."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="om-faults-pg-"))
        shutil.chown(self.base, "postgres", "postgres")
        self.data = self.base / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str) -> None:
        command = ["runuser", "-u", "postgres", "--", str(self.bindir / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{tool} failed: {done.stdout}{done.stderr}"

    def init(self) -> None:
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"
        log = str(self.base / "server.log")
        self._pg("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def create_database(self) -> str:
        name = f"faults_{time.monotonic_ns()}"
        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name

    def remove(self) -> None:
        with contextlib.suppress(AssertionError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        pytest.skip("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (postgresql)")
    own = Cluster(Path(found[-1]).parent)
    try:
        own.init()
        own.start()
        yield own
    finally:
        own.remove()


def postgres_prompts(url: str, tag: str) -> Counter[str]:
    with psycopg.connect(url) as db:
        rows = db.execute("SELECT prompt FROM requests WHERE prompt LIKE %s", (tag + " %",))
        return Counter(prompt for (prompt,) in rows)


@pytest.mark.process
def test_postgresql_stopped_and_restarted_loses_nothing(
    emulator: EmulatorServer, cluster: Cluster
) -> None:
    url = cluster.create_database()
    env = {"ANALYTICS_BACKEND": "postgresql", "ANALYTICS_DATABASE_URL": url}
    proxy = logged_proxy(emulator.url, env, "faults-postgres-restart.log")
    tag = "pg-restart"
    try:
        warm_up(proxy, "postgresql", tag)
        with Traffic(proxy.url, tag) as traffic:
            time.sleep(0.5)  # traffic while the store is up
            cluster.stop()
            down_at = time.monotonic()
            until(
                lambda: (
                    metric(proxy, "ollama_analytics_write_errors_total", backend="postgresql") >= 3
                ),
                what="failed writes while PostgreSQL is down",
            )
            backlog = metric(proxy, "ollama_analytics_queue_depth", backend="postgresql")
            time.sleep(max(0.0, 8 - (time.monotonic() - down_at)))  # an 8 s outage
            cluster.start()
            up_at = time.monotonic()
            time.sleep(0.5)
        answers = traffic.answers
        assert_unaffected(answers)
        during = [a for a in answers if down_at <= a.started and a.started + a.elapsed <= up_at]
        assert len(during) >= 20, "too little traffic during the outage to prove anything"
        assert backlog > 0
        expected = {a.prompt for a in answers}
        until(
            lambda: (
                metric(proxy, "ollama_analytics_records_written_total", backend="postgresql")
                >= len(expected) + 1
            ),
            within=90,
            what="every record written after PostgreSQL came back",
        )
        stored = postgres_prompts(url, tag)
        assert set(stored) == expected | {f"{tag} warm-up"}
        assert max(stored.values()) == 1, "a record was written twice"
        assert metric(proxy, "ollama_analytics_write_errors_total", backend="postgresql") >= 3
        for reason in ("queue_full", "rejected", "shutdown"):
            dropped = metric(
                proxy, "ollama_analytics_dropped_total", backend="postgresql", reason=reason
            )
            assert dropped == 0, reason
        assert metric(proxy, "ollama_analytics_queue_depth", backend="postgresql") == 0
        print(
            f"postgres outage {up_at - down_at:.1f}s: {len(answers)} requests "
            f"({len(during)} during it), slowest {max(a.elapsed for a in answers):.3f}s, "
            f"backlog {backlog:.0f}"
        )
    finally:
        assert proxy.stop() == CLEAN_EXIT
        proxy.cleanup()


@pytest.mark.process
def test_a_queue_overflow_during_an_outage_is_counted_exactly(
    emulator: EmulatorServer, cluster: Cluster
) -> None:
    url = cluster.create_database()
    env = {
        "ANALYTICS_BACKEND": "postgresql",
        "ANALYTICS_DATABASE_URL": url,
        "ANALYTICS_QUEUE_SIZE": "20",
        "ANALYTICS_BATCH_SIZE": "5",
    }
    proxy = logged_proxy(emulator.url, env, "faults-postgres-overflow.log")
    tag = "pg-overflow"
    sent = 100
    try:
        warm_up(proxy, "postgresql", tag)
        cluster.stop()
        try:
            with proxy.client() as client:
                answers = [ask(client, f"{tag} {n}") for n in range(sent)]
            assert_unaffected(answers)

            def accounted() -> tuple[float, float]:
                depth = metric(proxy, "ollama_analytics_queue_depth", backend="postgresql")
                dropped = metric(
                    proxy,
                    "ollama_analytics_dropped_total",
                    backend="postgresql",
                    reason="queue_full",
                )
                return depth, dropped

            until(lambda: sum(accounted()) == sent, within=20, what="every record accounted for")
            depth, dropped = accounted()
            assert dropped > 0
            assert depth <= 20 + 5  # the queue plus the batch in hand
        finally:
            cluster.start()
        until(
            lambda: (
                metric(proxy, "ollama_analytics_records_written_total", backend="postgresql")
                == 1 + depth
            ),
            within=90,
            what="the queued records written after PostgreSQL came back",
        )
        stored = postgres_prompts(url, tag)
        stored.pop(f"{tag} warm-up")
        assert sum(stored.values()) == depth == sent - dropped
        assert max(stored.values()) == 1
        assert set(stored) <= {a.prompt for a in answers}
        print(f"queue overflow: {sent} sent, {depth:.0f} kept and written, {dropped:.0f} dropped")
    finally:
        assert proxy.stop() == CLEAN_EXIT
        proxy.cleanup()


# -- SQLite --------------------------------------------------------------------------------


@pytest.mark.process
def test_sqlite_locked_by_another_connection(emulator: EmulatorServer) -> None:
    proxy = logged_proxy(emulator.url, {"ANALYTICS_BACKEND": "sqlite"}, "faults-sqlite-lock.log")
    tag = "sqlite-locked"
    database = proxy.workdir / "analytics.db"
    try:
        warm_up(proxy, "sqlite", tag)
        written = metric(proxy, "ollama_analytics_records_written_total", backend="sqlite")
        holder = sqlite3.connect(database, isolation_level=None, timeout=30)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with proxy.client() as client:
                answers = [ask(client, f"{tag} {n}") for n in range(40)]
            assert_unaffected(answers)
            until(
                lambda: metric(proxy, "ollama_analytics_queue_depth", backend="sqlite") == 40,
                within=20,
                what="every record waiting for the lock",
            )
            time.sleep(3)  # hold the lock a while longer: the writer must keep waiting
            assert (
                metric(proxy, "ollama_analytics_records_written_total", backend="sqlite") == written
            )
            assert sqlite_prompts(database, tag) == Counter({f"{tag} warm-up": 1})
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        until(
            lambda: len(sqlite_prompts(database, tag)) == 41,
            what="the records written after the lock was released",
        )
        stored = sqlite_prompts(database, tag)
        assert set(stored) == {a.prompt for a in answers} | {f"{tag} warm-up"}
        assert max(stored.values()) == 1
        assert metric(proxy, "ollama_analytics_queue_depth", backend="sqlite") == 0
    finally:
        assert proxy.stop() == CLEAN_EXIT
        proxy.cleanup()


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 6 MiB tmpfs of our own: a disk that can be filled without harming anything."""
    where = Path(tempfile.mkdtemp(prefix="om-faults-disk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {mounted.stderr}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def fill(directory: Path) -> Path:
    """Write a file until the file system has no byte left; returns it."""
    filler = directory / "filler"
    chunk = b"\xa5" * (1 << 16)
    with filler.open("wb", buffering=0) as file:
        while chunk:
            try:
                file.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]
    assert os.statvfs(directory).f_bavail == 0
    return filler


@pytest.mark.process
def test_sqlite_on_a_full_disk(emulator: EmulatorServer, small_disk: Path) -> None:
    env = {"ANALYTICS_BACKEND": "sqlite", "ANALYTICS_DIR": str(small_disk)}
    log_path = ARTIFACTS / "faults-sqlite-disk-full.log"
    proxy = logged_proxy(emulator.url, env, log_path.name)
    tag = "disk-full"
    database = small_disk / "analytics.db"
    answers: list[Answer] = []
    try:
        warm_up(proxy, "sqlite", tag)
        filler = fill(small_disk)
        with proxy.client() as client:
            # Until the store fails: the WAL may have room for a few batches at first.
            n = 0
            while metric(proxy, "ollama_analytics_write_errors_total", backend="sqlite") < 2:
                assert n < 3000, "the store never reported the full disk"
                answers += [ask(client, f"{tag} {n + i} " + "x" * 4000) for i in range(10)]
                n += 10
            answers += [ask(client, f"{tag} {n + i} " + "x" * 4000) for i in range(20)]
        assert_unaffected(answers)
        assert metric(proxy, "ollama_analytics_queue_depth", backend="sqlite") > 0
        until(lambda: "disk is full" in log_path.read_text(), within=10, what="the error logged")
        filler.unlink()
        expected = {a.prompt for a in answers} | {f"{tag} warm-up"}
        until(
            lambda: metric(proxy, "ollama_analytics_queue_depth", backend="sqlite") == 0,
            within=90,
            what="the backlog written once space came back",
        )
        stored = sqlite_prompts(database, tag)
        dropped = metric(
            proxy, "ollama_analytics_dropped_total", backend="sqlite", reason="queue_full"
        )
        assert dropped == 0
        assert set(stored) == expected
        assert max(stored.values()) == 1
        print(f"disk full: {len(answers)} requests, all written after space came back")
    finally:
        code = proxy.stop()
        proxy.cleanup()
    assert code == CLEAN_EXIT
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# -- Loki ----------------------------------------------------------------------------------


class FlakyLoki(ThreadedHttpServer):
    """A loopback HTTP server taking Loki pushes, failing as told: ``mode`` is ok, 500, 429
    (with ``Retry-After``) or hang (until ``release``). Like Loki, it keeps an entry whose
    stream, timestamp and line equal one it has only once."""

    RETRY_AFTER = 2

    def __init__(self) -> None:
        self.mode = "ok"
        self.attempts: list[tuple[float, int]] = []  # (monotonic time, status answered)
        self.entries: set[tuple[str, str, str]] = set()
        self.received = 0  # entries in accepted pushes, duplicates included
        self.released = threading.Event()
        self.lock = threading.Lock()
        owner = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                arrived = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                mode = owner.mode
                if mode == "hang":
                    owner.released.wait(120)
                    mode = owner.mode
                status = {"ok": 204, "500": 500, "429": 429}.get(mode, 204)
                if status == 204:
                    owner.take(json.loads(body))
                with owner.lock:
                    owner.attempts.append((arrived, status))
                try:
                    self.send_response(status)
                    if status == 429:
                        self.send_header("Retry-After", str(owner.RETRY_AFTER))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except ConnectionError:
                    pass  # the client gave up waiting

        super().__init__(Handler)

    def take(self, document: dict[str, Any]) -> None:
        with self.lock:
            for stream in document["streams"]:
                labels = json.dumps(stream["stream"], sort_keys=True)
                for stamp, line in stream["values"]:
                    self.received += 1
                    self.entries.add((labels, stamp, line))

    def prompts(self, tag: str) -> Counter[str]:
        with self.lock:
            rows = [json.loads(line) for _, _, line in self.entries]
        return Counter(row["prompt"] for row in rows if row["prompt"].startswith(tag + " "))

    def __exit__(self, *exc: object) -> None:
        self.released.set()  # a handler told to hang lets go first
        super().__exit__(*exc)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), (" 0 ", 0.0), ("-3", 0.0), ("soon", None), (None, None), ("date+30", 30.0)],
)
def test_retry_after_is_read_as_seconds_or_a_date(
    header: str | None, seconds: float | None
) -> None:
    if header == "date+30":
        header = email.utils.formatdate(time.time() + 30, usegmt=True)
    headers = {"Retry-After": header} if header is not None else {}
    found = retry_after(httpx.Response(429, headers=headers))
    if seconds is None:
        assert found is None
    else:
        assert found == pytest.approx(seconds, abs=1.5)


@pytest.mark.process
@pytest.mark.parametrize("fault", ["500", "429", "hang"])
def test_loki_failing_then_recovering(emulator: EmulatorServer, fault: str) -> None:
    with FlakyLoki() as loki:
        env = {"ANALYTICS_BACKEND": "sqlite,loki", "LOKI_URL": loki.url}
        proxy = logged_proxy(emulator.url, env, f"faults-loki-{fault}.log")
        tag = f"loki-{fault}"
        database = proxy.workdir / "analytics.db"
        try:
            warm_up(proxy, "loki", tag)
            loki.mode = fault
            with proxy.client() as client:
                answers = [ask(client, f"{tag} {n}") for n in range(30)]
            assert_unaffected(answers)
            expected = {a.prompt for a in answers}
            # The lanes are independent: SQLite gets everything while Loki fails.
            until(lambda: len(sqlite_prompts(database, tag)) == 31, what="SQLite written")
            # hang: the push times out (10 s) and fails; 429: a few attempts, Retry-After apart.
            wanted = 3 if fault == "429" else 1
            until(
                lambda: (
                    metric(proxy, "ollama_analytics_write_errors_total", backend="loki") >= wanted
                ),
                within=60,
                what="failed Loki pushes",
            )
            assert metric(proxy, "ollama_analytics_queue_depth", backend="loki") == 30
            loki.mode = "ok"
            loki.released.set()
            until(lambda: len(loki.prompts(tag)) == 31, within=90, what="Loki has every record")
            stored = loki.prompts(tag)
            assert set(stored) == expected | {f"{tag} warm-up"}
            assert max(stored.values()) == 1
            until(
                lambda: metric(proxy, "ollama_analytics_queue_depth", backend="loki") == 0,
                within=10,
                what="Loki's queue empty",
            )
            dropped = metric(
                proxy, "ollama_analytics_dropped_total", backend="loki", reason="queue_full"
            )
            assert dropped == 0
            if fault == "429":
                # Retry-After is honoured: no attempt follows a 429 sooner than it asked.
                times = sorted(loki.attempts)
                gaps = [
                    later[0] - earlier[0]
                    for earlier, later in itertools.pairwise(times)
                    if earlier[1] == 429
                ]
                assert len(gaps) >= 3
                assert min(gaps) >= FlakyLoki.RETRY_AFTER - 0.05, gaps
            print(
                f"loki {fault}: {len(loki.attempts)} push attempts, "
                f"{loki.received} entries received, {len(loki.entries)} distinct"
            )
        finally:
            loki.released.set()
            assert proxy.stop() == CLEAN_EXIT
            proxy.cleanup()

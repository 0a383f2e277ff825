"""The one-file executable (``build/pyinstaller.spec``, built by ``scripts/build-binary.sh``)
run as a user runs it: whatever it loads by name at run time (uvicorn's loop and protocol,
SQLAlchemy's dialects, psycopg's compiled driver, Alembic's migration scripts, the prompt
category rules, the analytics page) must be inside it.

The binary is built once per checkout: ``dist/ollama-metrics`` is reused while it is newer
than every file it is made from (and than the last package installed into the venv).
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory

from app import __version__
from tests.concerns.test_transparency import normalise
from tests.conftest import PostgresDatabases
from tests.emulator import EmulatorServer
from tests.support import ROOT, free_port, wait_until_listening

pytestmark = [pytest.mark.process, pytest.mark.windows]

BINARY = ROOT / "dist" / "ollama-metrics"
SOURCES = [
    ROOT / "app",
    ROOT / "migrations",
    ROOT / "build" / "pyinstaller.spec",
    ROOT / "build" / "entry.py",
    ROOT / "scripts" / "build-binary.sh",
    ROOT / "pyproject.toml",
    # Its entries change whenever a package is installed, upgraded or removed.
    Path(sysconfig.get_paths()["purelib"]),
]
HEAD = ScriptDirectory(str(ROOT / "migrations")).get_current_head()
# A prompt the bundled rules file as "translate"; without them it would be "other".
TRANSLATE = "Translate 'good morning' into French"


def _newest_source() -> float:
    newest = 0.0
    for source in SOURCES:
        paths = [source] if source.is_file() else [source, *source.rglob("*")]
        newest = max([newest, *(p.stat().st_mtime for p in paths if "__pycache__" not in p.parts)])
    return newest


@pytest.fixture(scope="module")
def binary() -> Path:
    if BINARY.is_file() and BINARY.stat().st_mtime > _newest_source():
        return BINARY
    if importlib.util.find_spec("PyInstaller") is None:
        install = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "pyinstaller"],
            capture_output=True,
            text=True,
            check=False,
        )
        if install.returncode != 0:
            pytest.skip(f"PyInstaller cannot be installed: {install.stderr.strip()[-500:]}")
    build = subprocess.run(
        ["bash", "scripts/build-binary.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-5000:]
    assert build.stdout.strip() == str(BINARY)
    return BINARY


@dataclass
class Frozen:
    """The binary running ``proxy`` against the emulator, its data in ``data``."""

    process: subprocess.Popen[bytes]
    url: str
    data: Path

    @property
    def log(self) -> str:
        return (self.data / "proxy.log").read_text(errors="replace")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start(binary: Path, upstream: str, data: Path) -> Frozen:
    port = free_port()
    env = {**os.environ, "LOG_LEVEL": "info", "ANALYTICS_DIR": str(data)}
    with open(data / "proxy.log", "wb") as log:
        process = subprocess.Popen(
            [binary, "proxy", "--port", str(port), "--upstream", upstream],
            cwd=data,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    # A one-file binary unpacks itself before Python starts.
    wait_until_listening(port, process, timeout=60)
    return Frozen(process, f"http://127.0.0.1:{port}", data)


@pytest.fixture(scope="module")
def frozen(
    binary: Path, emulator: EmulatorServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Frozen]:
    running = start(binary, emulator.url, tmp_path_factory.mktemp("frozen"))
    yield running
    running.stop()


def run(binary: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def same_answer(proxy: str, upstream: str, path: str, body: object) -> bytes:
    """The proxy's answer, checked to be the emulator's own answer, byte for byte except
    what differs between any two requests (timestamps, the measured total_duration)."""
    through = httpx.post(proxy + path, json=body, timeout=30)
    direct = httpx.post(upstream + path, json=body, timeout=30)
    assert through.status_code == direct.status_code == 200
    assert normalise(through.content) == normalise(direct.content)
    return through.content


def search(proxy: str, words: str, expected: int) -> list[dict[str, object]]:
    """``/analytics/search`` until it holds ``expected`` records (the writer is asynchronous)."""
    deadline = time.monotonic() + 10
    while True:
        answer = httpx.get(proxy + "/analytics/search", params={"prompt_search": words})
        assert answer.status_code == 200, answer.text
        records: list[dict[str, object]] = answer.json()["records"]
        if len(records) >= expected or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def test_version(binary: Path) -> None:
    done = run(binary, "--version", OLLAMA_UPSTREAM="http://127.0.0.1:9")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ollama-metrics {__version__}"


def test_store_is_created_and_migrated_from_inside_the_bundle(frozen: Frozen) -> None:
    with sqlite3.connect(frozen.data / "analytics.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]


def test_forwards_byte_for_byte_streamed_or_not(frozen: Frozen, emulator: EmulatorServer) -> None:
    generated = same_answer(
        frozen.url,
        emulator.url,
        "/api/generate",
        {"model": "llama3.2", "prompt": "Why is the sky blue? frozengen", "stream": False},
    )
    assert b'"done":true' in generated
    streamed = same_answer(
        frozen.url,
        emulator.url,
        "/api/chat",
        {"model": "llama3.2", "messages": [{"role": "user", "content": "Hi there frozenchat"}]},
    )
    assert len(streamed.splitlines()) > 2


def test_bundled_category_rules_label_the_metrics(frozen: Frozen) -> None:
    body = {"model": "llama3.2", "prompt": TRANSLATE, "stream": False}
    assert httpx.post(frozen.url + "/api/generate", json=body, timeout=30).status_code == 200
    metrics = httpx.get(frozen.url + "/metrics").text
    assert re.search(
        r'^ollama_requests_total\{category="translate",endpoint="/api/generate",'
        r'model="llama3.2:latest",status="200"\} [1-9]',
        metrics,
        re.MULTILINE,
    ), metrics


def test_chain_check(frozen: Frozen, emulator: EmulatorServer) -> None:
    chain = httpx.get(frozen.url + "/test", timeout=30).json()
    assert chain["upstream_reachable"] is True
    assert chain["upstream"] == emulator.url


def test_analytics_search_finds_the_record(frozen: Frozen) -> None:
    body = {"model": "llama3.2", "prompt": "What is frozensearch?", "stream": False}
    assert httpx.post(frozen.url + "/api/generate", json=body, timeout=30).status_code == 200
    records = search(frozen.url, "frozensearch", 1)
    assert [(r["endpoint"], r["prompt"], r["status"]) for r in records] == [
        ("/api/generate", "What is frozensearch?", 200)
    ]


def test_analytics_page_is_inside_the_bundle(frozen: Frozen) -> None:
    for name in ("index.html", "app.js", "app.css"):
        answer = httpx.get(f"{frozen.url}/ui/{name}")
        assert answer.status_code == 200, name
        assert answer.content == (ROOT / "app" / "ui" / name).read_bytes()
    assert httpx.get(frozen.url + "/ui", follow_redirects=True).text.startswith("<!doctype html>")


def test_db_current(frozen: Frozen, binary: Path) -> None:
    done = run(binary, "db", "current", ANALYTICS_DIR=str(frozen.data))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"at {HEAD} (newest: {HEAD})")


@pytest.mark.postgres
def test_postgresql_through_the_bundled_psycopg(binary: Path, postgres: PostgresDatabases) -> None:
    done = run(
        binary,
        "db",
        "upgrade",
        ANALYTICS_BACKEND="postgresql",
        ANALYTICS_DATABASE_URL=postgres.create(),
        # Refuse psycopg's pure-Python fallback (which would use the system's libpq).
        PSYCOPG_IMPL="binary",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"at {HEAD} (newest: {HEAD})")


def test_sigterm_stops_cleanly_with_the_queue_drained(
    binary: Path, emulator: EmulatorServer, tmp_path: Path
) -> None:
    running = start(binary, emulator.url, tmp_path)
    body = {"model": "llama3.2", "prompt": "last words", "stream": False}
    assert httpx.post(running.url + "/api/generate", json=body, timeout=30).status_code == 200
    # As the installed command does (tests/test_cli.py): uvicorn shuts down cleanly, then
    # re-raises the signal so that the exit status says why.
    assert running.stop() == -signal.SIGTERM
    assert "app.lifecycle: stopped" in running.log
    with sqlite3.connect(tmp_path / "analytics.db") as db:
        assert db.execute("SELECT prompt FROM requests").fetchall() == [("last words",)]

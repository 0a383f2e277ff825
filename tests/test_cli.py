"""The `ollama-metrics` command as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from app import __version__
from app.analytics.sql import SqlStore, create_store_engine
from tests.conftest import PostgresDatabases
from tests.emulator import EmulatorServer
from tests.support import ROOT, ProxyProcess, analytics_rows, free_port, wait_until_listening

# Every test runs the installed command in a process of its own.
pytestmark = pytest.mark.process

# The newest migration, as the migrations folder says (the CLI reports it).
NEWEST = max(p.name.split("_", 1)[0] for p in (ROOT / "migrations" / "versions").glob("0*.py"))


def console_script() -> str:
    # The entry point pip installed next to this interpreter, as `ollama-metrics` on PATH.
    found = shutil.which("ollama-metrics", path=str(Path(sys.executable).parent))
    assert found, "the ollama-metrics console script is not installed"
    return found


def run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(), *args], capture_output=True, text=True, timeout=30, cwd=ROOT, **kwargs
    )


def proxy_session(upstream: str, request: Callable[[str], object], *flags: str) -> tuple[int, str]:
    """Run `ollama-metrics proxy` as a user would, make ``request(url)``, then SIGTERM it;
    returns the exit status and everything it printed."""
    port = free_port()
    process = subprocess.Popen(
        [console_script(), "proxy", "--port", str(port), "--upstream", upstream, *flags],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_listening(port, process)
        request(f"http://127.0.0.1:{port}")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    return process.returncode, output


def test_version() -> None:
    done = run("--version", env={**os.environ, "OLLAMA_UPSTREAM": "http://127.0.0.1:9"})
    assert done.returncode == 0
    assert done.stdout.strip() == f"ollama-metrics {__version__}"


def test_version_names_the_ollama_behind_it(emulator: EmulatorServer) -> None:
    done = run("--version", env={**os.environ, "OLLAMA_UPSTREAM": emulator.url})
    assert done.stdout.splitlines() == [
        f"ollama-metrics {__version__}",
        f"ollama {emulator.config.version} (at {emulator.url})",
    ]


def test_no_command_prints_help() -> None:
    done = run()
    assert done.returncode == 2
    assert "proxy" in done.stdout


def test_bad_upstream_is_a_clear_error_not_a_traceback() -> None:
    done = run("proxy", "--upstream", "ftp://nowhere")
    assert done.returncode == 2
    assert "invalid OLLAMA_UPSTREAM" in done.stderr
    assert "Traceback" not in done.stderr


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run("proxy", "--port", str(port), "--upstream", "http://127.0.0.1:9")
    assert done.returncode == 1
    assert f"port {port}" in done.stderr
    assert "already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_proxy_from_the_readme_forwards_and_stops_on_sigterm(emulator: EmulatorServer) -> None:
    answers: list[object] = []

    def request(url: str) -> None:
        answers.append(httpx.get(url + "/api/version").json())

    status, output = proxy_session(emulator.url, request)
    assert answers == [{"version": emulator.config.version}]
    # uvicorn shuts down cleanly, then re-raises the signal so the exit status says why.
    assert status == -signal.SIGTERM
    assert "app.lifecycle: stopped" in output
    assert "listening on http://127.0.0.1:" in output
    assert "app.access: GET /api/version 200" in output


def test_bad_category_rules_file_is_a_clear_error(tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text('{"categories": [{"name": "Bad Name", "patterns": ["x"]}]}')
    done = run(
        "proxy",
        "--port",
        str(free_port()),
        "--upstream",
        "http://127.0.0.1:9",
        env={**os.environ, "PROMPT_CATEGORY_RULES": str(rules)},
    )
    assert done.returncode == 2
    assert str(rules) in done.stderr
    assert "Traceback" not in done.stderr


def test_custom_category_rules_label_the_metrics(tmp_path: Path, emulator: EmulatorServer) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"categories": [{"name": "weather", "patterns": ["\\bsky\\b"]}]}))
    with ProxyProcess(emulator.url, env={"PROMPT_CATEGORY_RULES": str(rules)}) as proxy:
        httpx.post(proxy.url + "/api/generate", json={"model": "llama3.2", "prompt": "Blue sky?"})
        httpx.post(proxy.url + "/api/generate", json={"model": "llama3.2", "prompt": "Hello"})
        text = httpx.get(proxy.url + "/metrics").text
    assert 'category="weather"' in text
    assert 'category="other"' in text


def test_db_commands_migrate_the_sqlite_store(tmp_path: Path) -> None:
    env = {**os.environ, "ANALYTICS_DIR": str(tmp_path)}
    current = run("db", "current", env=env)
    assert current.returncode == 0
    assert f"at base (newest: {NEWEST})" in current.stdout
    upgraded = run("db", "upgrade", env=env)
    assert upgraded.returncode == 0
    assert f"at {NEWEST} (newest: {NEWEST})" in upgraded.stdout
    assert (tmp_path / "analytics.db").exists()
    downgraded = run("db", "downgrade", "base", env=env)
    assert "at base" in downgraded.stdout


@pytest.mark.postgres
def test_db_upgrade_with_percent_signs_in_the_url(
    tmp_path: Path, postgres: PostgresDatabases
) -> None:
    # Alembic's configparser reads "%" as interpolation: a folder with "%" (or a Windows
    # path, which SQLAlchemy writes as C%3A%5C...) and a password with "@" must still work.
    folder = tmp_path / "100% data"
    folder.mkdir()
    upgraded = run("db", "upgrade", env={**os.environ, "ANALYTICS_DIR": str(folder)})
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"at {NEWEST} (newest: {NEWEST})" in upgraded.stdout
    url = make_url(postgres.create()).set(password="p@ss%w0rd")  # trust auth ignores it
    env = {**os.environ, "ANALYTICS_DATABASE_URL": url.render_as_string(hide_password=False)}
    upgraded = run("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "p@ss" not in upgraded.stdout + upgraded.stderr


def test_db_command_on_an_unreachable_database_is_a_clear_error() -> None:
    env = {**os.environ, "ANALYTICS_DATABASE_URL": "postgresql://nobody:pw@127.0.0.1:9/none"}
    done = run("db", "current", env=env)
    assert done.returncode == 1
    assert "OperationalError" in done.stderr
    assert "pw" not in done.stderr.replace("OperationalError", "")
    assert "Traceback" not in done.stderr


@pytest.mark.postgres
def test_db_copy_moves_this_machines_records_into_postgresql(
    tmp_path: Path, postgres: PostgresDatabases
) -> None:
    store = SqlStore(create_store_engine(f"sqlite:///{tmp_path / 'analytics.db'}"))
    store.write(analytics_rows()[:1200])
    store.close()
    central = postgres.create()
    env = {**os.environ, "ANALYTICS_DIR": str(tmp_path)}  # --from: this machine's SQLite
    done = run("db", "copy", "--to", central, "--batch-size", "500", env=env)
    assert done.returncode == 0, done.stderr
    shown = make_url(central).set(drivername="postgresql+psycopg").render_as_string()
    summary = f"{tmp_path / 'analytics.db'} -> {shown}: copied 1,200 records, skipped 0"
    assert done.stdout.startswith(summary)
    assert "500 of 1,200 read: 500 copied, 0 skipped" in done.stderr
    assert "1,200 of 1,200 read: 1,200 copied, 0 skipped" in done.stderr
    # Again, with the target from ANALYTICS_DATABASE_URL: nothing copied twice.
    again = run("db", "copy", env={**env, "ANALYTICS_DATABASE_URL": central})
    assert again.returncode == 0, again.stderr
    assert "copied 0 records, skipped 1,200 already there" in again.stdout


def test_db_copy_says_what_is_wrong(tmp_path: Path) -> None:
    env = {**os.environ, "ANALYTICS_DIR": str(tmp_path)}
    env.pop("ANALYTICS_DATABASE_URL", None)
    nowhere = run("db", "copy", env=env)
    assert nowhere.returncode == 2
    assert "say where to copy to: --to URL (or set ANALYTICS_DATABASE_URL)" in nowhere.stderr
    missing = run("db", "copy", "--to", str(tmp_path / "to.db"), env=env)
    assert missing.returncode == 2
    assert f"ollama-metrics db copy: {tmp_path / 'analytics.db'}: no such file" in missing.stderr
    bad_node = run("db", "copy", "--to", str(tmp_path / "to.db"), "--node", "a b", env=env)
    assert bad_node.returncode == 2
    assert "--node must be 1 to 64 letters" in bad_node.stderr
    store = SqlStore(create_store_engine(f"sqlite:///{tmp_path / 'analytics.db'}"))
    store.write(analytics_rows()[:10])
    store.close()
    down = run("db", "copy", "--to", "postgresql://nobody:pw@127.0.0.1:9/none", env=env)
    assert down.returncode == 1
    assert "cannot use the target postgresql+psycopg://nobody:***@127.0.0.1:9/none" in down.stderr
    for output in (nowhere, missing, bad_node, down):
        assert "Traceback" not in output.stderr

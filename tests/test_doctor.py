"""`ollama-metrics doctor`: each check against real peers (or none), the table, and the command."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import pytest

from app import doctor
from app.analytics import migrate
from app.analytics.sql import create_store_engine, settings_url
from app.config import CONFIG_ENV, Settings
from app.doctor import FAIL, OK, WARN, Check, render, run_checks
from tests.support import (
    LocalHttpServer,
    ProxyProcess,
    QuietHandler,
    ThreadedHttpServer,
    free_port,
    wrapper,
    wrapper_env,
)

Respond = tuple[int, str | None, bytes]
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="Linux's services and fixes")


def nowhere() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: refused at once


def answering(answers: dict[str, Respond]) -> LocalHttpServer:
    """An HTTP peer answering each path as ``answers`` says, 404 elsewhere."""

    def respond(method: str, path: str, headers: dict[str, str], body: bytes) -> Respond:
        return answers.get(path, (404, "text/plain", b"404 page not found"))

    return LocalHttpServer(respond)


def as_json(text: str) -> Respond:
    return 200, "application/json", text.encode()


# -- the table -------------------------------------------------------------------------------


def test_the_table_aligns_the_checks_and_gives_a_fix_only_for_a_failure() -> None:
    table = render(
        [
            Check("configuration", OK, "defaults"),
            Check("port 11434", WARN, "nothing listens", "ollama-metrics serve"),
            Check("proxy", OK, "fine", "never shown"),
            Check("streaming", FAIL, "buffered", "gzip off"),
        ]
    )
    assert table.splitlines() == [
        "ok    configuration  defaults",
        "warn  port 11434     nothing listens",
        "                     fix: ollama-metrics serve",
        "ok    proxy          fine",
        "FAIL  streaming      buffered",
        "                     fix: gzip off",
    ]


def test_a_failure_without_a_fix_has_no_fix_line() -> None:
    assert render([Check("x", FAIL, "broken")]) == "FAIL  x  broken"


# -- each check ------------------------------------------------------------------------------


def test_the_configuration_file_in_use_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert doctor._config_file() == Check(
        "configuration", OK, "environment and defaults (no configuration file)"
    )
    config = tmp_path / "config.toml"
    config.write_text("")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    assert doctor._config_file() == Check("configuration", OK, str(config))


def test_a_free_proxy_port_means_the_proxy_is_not_running() -> None:
    port = free_port()
    check = doctor._proxy_port(Settings(proxy_port=port), f"http://127.0.0.1:{port}")
    assert check == Check(
        f"port {port}", WARN, "nothing listens: the proxy is not running", "ollama-metrics serve"
    )


@pytest.mark.process
@pytest.mark.parametrize(
    ("answers", "state", "detail", "fix"),
    [
        (
            {"/test": as_json('{"proxy_version": "9.9.9"}')},
            OK,
            "ollama-metrics (version 9.9.9) is already running on {port}",
            "",
        ),
        pytest.param(
            {"/api/version": as_json('{"version": "0.33.1"}')},
            FAIL,
            "an Ollama server (version 0.33.1) is already listening on {port}",
            "stop it with: sudo systemctl disable --now ollama",
            marks=linux_only,  # the fix named is the platform's
        ),
        (
            {},
            FAIL,
            "port {port} is already in use by another program (BaseHTTP",
            "stop it, or choose another port with --port",
        ),
    ],
)
def test_who_holds_the_proxy_port(
    answers: dict[str, Respond], state: str, detail: str, fix: str
) -> None:
    with answering(answers) as peer:
        check = doctor._proxy_port(Settings(proxy_port=peer.port), peer.url)
    assert check.name == f"port {peer.port}"
    assert check.state == state
    assert check.detail.startswith(detail.format(port=peer.port))
    assert check.fix == fix


@pytest.mark.process
def test_an_answering_ollama_is_named_without_its_credentials() -> None:
    with answering({"/api/version": as_json('{"version": "0.33.1"}')}) as ollama:
        upstream = ollama.url.replace("http://", "http://user:pw@")
        check = doctor._upstream(Settings(ollama_upstream=upstream))
    assert check == Check("ollama upstream", OK, f"Ollama 0.33.1 at 127.0.0.1:{ollama.port}")


def test_no_ollama_is_a_failure_saying_how_to_start_one() -> None:
    upstream = nowhere()
    check = doctor._upstream(Settings(ollama_upstream=upstream))
    assert check.state == FAIL
    assert check.detail == f"no Ollama answers at {upstream}"
    assert "ollama-metrics serve" in check.fix


@pytest.mark.process
@pytest.mark.parametrize(
    ("answer", "state", "detail", "fix"),
    [
        (
            as_json('{"upstream_reachable": true, "round_trip_ms": 1.5}'),
            OK,
            "{url} → Ollama in 1.5 ms",
            "",
        ),
        (
            as_json('{"upstream_reachable": false, "upstream": "http://ollama:11435"}'),
            FAIL,
            "the proxy cannot reach http://ollama:11435",
            "start Ollama",
        ),
        (
            (200, "text/html", b"<html>not the proxy</html>"),
            FAIL,
            "no answer from {url}/test",
            "ollama-metrics serve",
        ),
    ],
)
def test_the_chain_is_what_the_proxys_test_says(
    answer: Respond, state: str, detail: str, fix: str
) -> None:
    with answering({"/test": answer}) as proxy:
        check = doctor._chain(proxy.url)
    assert (check.name, check.state) == ("proxy", state)
    assert check.detail == detail.format(url=proxy.url)
    assert check.fix == fix


def test_no_proxy_is_no_chain() -> None:
    url = nowhere()
    assert doctor._chain(url) == Check(
        "proxy", FAIL, f"no answer from {url}/test", "ollama-metrics serve"
    )


METRICS = b"# HELP ollama_requests_total R.\n# TYPE ollama_requests_total counter\n"


@pytest.mark.process
@pytest.mark.parametrize(
    ("text", "state", "detail"),
    [
        (METRICS + b"ollama_requests_total 3\n# TYPE up gauge\nup 1\n", OK, "2 metric families"),
        (b"# TYPE up gauge\nup 1\n", FAIL, "no ollama_requests_total in /metrics"),
    ],
)
def test_the_scrape_needs_the_proxys_request_counter(text: bytes, state: str, detail: str) -> None:
    with answering({"/metrics": (200, "text/plain", text)}) as proxy:
        check = doctor._scrape(proxy.url)
    assert (check.name, check.state, check.detail) == ("prometheus scrape", state, detail)


@pytest.mark.process
def test_a_scrape_that_does_not_parse_is_a_failure() -> None:
    with answering({"/metrics": (200, "text/plain", b"not metrics at all\n")}) as proxy:
        check = doctor._scrape(proxy.url)
    assert check.state == FAIL
    assert check.detail.startswith(f"{proxy.url}/metrics: ")
    assert check.fix == "ollama-metrics serve"


def test_no_scrape_without_a_proxy() -> None:
    url = nowhere()
    check = doctor._scrape(url)
    assert check.state == FAIL
    assert check.detail.startswith(f"{url}/metrics: ")


def test_no_sql_store_is_fine(tmp_path: Path) -> None:
    settings = Settings(analytics_dir=tmp_path, analytics_backend="jsonl")
    assert doctor._store(settings) == Check("analytics store", OK, "no SQL store (jsonl)")
    off = Settings(analytics_dir=tmp_path, analytics_backend="none")
    assert doctor._store(off) == Check("analytics store", OK, "no SQL store (off)")


def test_a_store_behind_the_migrations_says_to_upgrade_it_then_is_ok(tmp_path: Path) -> None:
    settings = Settings(analytics_dir=tmp_path, analytics_backend="sqlite")
    engine = create_store_engine(settings_url(settings))
    head = migrate.head(engine)
    stale = doctor._store(settings)
    assert stale.state == WARN
    assert stale.detail.endswith(f"analytics.db at base, newest {head}")
    assert stale.fix == "ollama-metrics db upgrade"
    migrate.upgrade(engine)
    engine.dispose()
    fresh = doctor._store(settings)
    assert fresh.state == OK
    assert fresh.detail.endswith(f"analytics.db at {head}")


def test_an_unreachable_store_is_a_failure_without_its_password(tmp_path: Path) -> None:
    url = f"postgresql://doctor:pw-s3cret@127.0.0.1:{free_port()}/nothing"
    settings = Settings(
        analytics_dir=tmp_path, analytics_backend="postgresql", analytics_database_url=url
    )
    check = doctor._store(settings)
    assert check.state == FAIL
    assert check.detail.startswith("OperationalError: ")
    assert len(check.detail) <= 200
    assert "pw-s3cret" not in check.detail
    assert check.fix == "check ANALYTICS_DATABASE_URL / ANALYTICS_DIR"


class Compressing(QuietHandler):
    """Answers gzip-compressed when asked: what a buffering reverse proxy does."""

    def do_GET(self) -> None:
        body = b'{"version": "0.33.1"}'
        compress = "gzip" in (self.headers.get("Accept-Encoding") or "")
        if compress:
            body = gzip.compress(body)
        self.send_response(200)
        if compress:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.process
def test_a_compressing_front_buffers_streams() -> None:
    with ThreadedHttpServer(Compressing) as front:
        check = doctor._buffering(front.url)
    assert check.state == FAIL
    assert check.detail == f"{front.url} compresses answers (gzip): streams buffer"
    assert "proxy_buffering off" in check.fix


@pytest.mark.process
def test_an_uncompressed_answer_passes_streams() -> None:
    with answering({"/api/version": as_json('{"version": "0.33.1"}')}) as front:
        check = doctor._buffering(front.url)
    assert check == Check("streaming", OK, f"{front.url} passes answers uncompressed")


def test_streaming_is_a_warning_when_nothing_answers() -> None:
    url = nowhere()
    assert doctor._buffering(url) == Check("streaming", WARN, f"could not reach {url}", "")


def fake_systemctl(folder: Path, state: str) -> Path:
    """A ``systemctl`` that answers ``state`` and keeps its arguments."""
    script = folder / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{folder}/asked"\necho {state}\n')
    script.chmod(0o755)
    return folder / "asked"


@linux_only
@pytest.mark.process
@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (
            "enabled",
            Check(
                "ollama auto-start",
                FAIL,
                "systemd starts ollama.service on 11434",
                "sudo systemctl disable --now ollama",
            ),
        ),
        ("disabled", Check("ollama auto-start", OK, "no enabled ollama.service")),
    ],
)
def test_an_enabled_ollama_service_would_take_the_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str, expected: Check
) -> None:
    asked = fake_systemctl(tmp_path, state)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert doctor._autostart() == expected
    assert asked.read_text().split() == ["is-enabled", "ollama"]


@linux_only
def test_without_systemd_nothing_starts_ollama(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert doctor._autostart() == Check("ollama auto-start", OK, "no enabled ollama.service")


# -- all of them -----------------------------------------------------------------------------


@linux_only
def test_run_checks_runs_every_check_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no systemctl: no process is started
    port = free_port()
    public = nowhere()
    settings = Settings(
        proxy_port=port,
        ollama_upstream=nowhere(),
        analytics_dir=tmp_path,
        analytics_backend="jsonl",
    )
    checks = run_checks(settings, public_url=public)
    assert [(check.name, check.state) for check in checks] == [
        ("configuration", OK),
        (f"port {port}", WARN),
        ("ollama upstream", FAIL),
        ("proxy", FAIL),
        ("prometheus scrape", FAIL),
        ("analytics store", OK),
        ("streaming", WARN),
        ("ollama auto-start", OK),
    ]
    assert checks[3].detail == f"no answer from http://127.0.0.1:{port}/test"
    assert checks[6].detail == f"could not reach {public}"  # the public URL, not the proxy's


# -- the command, as a user runs it ----------------------------------------------------------


@pytest.mark.process
def test_doctor_passes_on_a_working_setup(proxied: tuple[ProxyProcess, dict[str, str]]) -> None:
    _, env = proxied
    done = wrapper(env, "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split()[1] for line in done.stdout.splitlines() if line[:1].strip()}
    assert {"port", "ollama", "proxy", "prometheus", "analytics", "streaming"} <= rows
    assert "FAIL" not in done.stdout
    assert "ollama-metrics (version" in done.stdout


@pytest.mark.process
def test_doctor_names_each_failure_and_its_fix(tmp_path: Path) -> None:
    env = wrapper_env(tmp_path)
    done = wrapper(env, "doctor")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert any(line.startswith("FAIL") and "no Ollama answers" in line for line in lines)
    assert any("fix: ollama-metrics serve" in line for line in lines)
    assert any(line.startswith("warn") and "the proxy is not running" in line for line in lines)

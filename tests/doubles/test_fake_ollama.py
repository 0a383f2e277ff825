"""The stand-in `ollama` (tests/fake_ollama) behaves as the real binary does for a wrapper.

Everything runs the script as a wrapper would: `ollama` found on PATH, the venv's
Python through FAKE_OLLAMA_PYTHON, servers on free loopback ports.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import fake_ollama
from tests.emulator.server import request_log, reset_emulator
from tests.fake_ollama.cli import main
from tests.fake_ollama.client import go_json
from tests.fake_ollama.commands import Console
from tests.fake_ollama.hosts import OllamaHost, resolve_host
from tests.fake_ollama.modelfile import ModelfileError, create_request
from tests.fake_ollama.render import go_duration, human_bytes, human_time
from tests.support import free_port, wait_until_listening

REFUSED = "Error: could not connect to ollama server, run 'ollama serve' to start it\n"


def ollama(
    *args: str, env: dict[str, str], stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ollama", *args],
        env=env,
        cwd=cwd,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=30,
    )


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]
    logs: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stdout(self) -> str:
        return (self.logs / "serve.out").read_text(encoding="utf-8")

    def stderr(self) -> str:
        return (self.logs / "serve.err").read_text(encoding="utf-8")

    def requests(self) -> list[dict[str, Any]]:
        return request_log(self.url)

    def calls(self) -> list[str]:
        return [f"{entry['method']} {entry['path']}" for entry in self.requests()]

    def reset(self) -> None:
        reset_emulator(self.url, catalog=True)


@contextmanager
def serving(logs: Path, bind: str = "127.0.0.1", **knobs: str) -> Iterator[Served]:
    """`ollama serve` on a free port of `bind` in the background; stopped at the end."""
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    env = fake_ollama.environ(OLLAMA_HOST=f"{bind}:{port}", **knobs)
    with (logs / "serve.out").open("wb") as out, (logs / "serve.err").open("wb") as err:
        process = subprocess.Popen(["ollama", "serve"], env=env, stdout=out, stderr=err)
        try:
            wait_until_listening(port, process)
            yield Served(process, port, env, logs)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


# --- OLLAMA_HOST, as envconfig.Host() reads it ------------------------------------------

HOSTS = [
    (None, "http", "127.0.0.1", "11434", ""),
    ("", "http", "127.0.0.1", "11434", ""),
    ("  \"'127.0.0.1:11435'\"  ", "http", "127.0.0.1", "11435", ""),
    ("0.0.0.0", "http", "0.0.0.0", "11434", ""),
    (":11435", "http", "", "11435", ""),
    ("example.com", "http", "example.com", "11434", ""),
    ("http://example.com", "http", "example.com", "80", ""),
    ("https://example.com", "https", "example.com", "443", ""),
    ("https://example.com:8443/ollama", "https", "example.com", "8443", "ollama"),
    ("example.com/ollama", "http", "example.com", "11434", "ollama"),
    ("ollama.com", "https", "ollama.com", "443", ""),
    ("[::1]", "http", "::1", "11434", ""),
    ("::1", "http", "::1", "11434", ""),
    ("[::1]:11435", "http", "::1", "11435", ""),
    ("::ffff:10.0.0.1", "http", "10.0.0.1", "11434", ""),
    ("host:port", "http", "host", "11434", ""),
    ("host:99999", "http", "host", "11434", ""),
    ("host:", "http", "host", "11434", ""),
]


@pytest.mark.parametrize(("raw", "scheme", "host", "port", "path"), HOSTS)
def test_ollama_host_is_read_like_envconfig_host(
    raw: str | None, scheme: str, host: str, port: str, path: str
) -> None:
    assert resolve_host(raw) == OllamaHost(scheme, host, port, path)


def test_host_addresses_for_listening_and_connecting() -> None:
    everywhere = resolve_host(":11435")
    assert everywhere.hostport == ":11435"
    assert everywhere.connect_url() == "http://127.0.0.1:11435"
    assert resolve_host("0.0.0.0").connect_url() == "http://127.0.0.1:11434"
    assert resolve_host("[::1]:1").hostport == "[::1]:1"
    assert resolve_host("https://h/base").url == "https://h:443/base"


# --- what the CLI prints -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (2_019_393_189, "2.0 GB"),
        (274_302_450, "274 MB"),
        (1_000_000_000, "1 GB"),
        (45_960_996, "45 MB"),
        (1429, "1.4 KB"),
    ],
)
def test_human_bytes(size: int, text: str) -> None:
    assert human_bytes(size) == text


@pytest.mark.parametrize(
    ("nanoseconds", "text"),
    [
        (0, "0s"),
        (850, "850ns"),
        (1_500, "1.5µs"),
        (12_403_771, "12.403771ms"),
        (1_500_000_000, "1.5s"),
        (3_600_000_000_000, "1h0m0s"),
        (62_500_000_000, "1m2.5s"),
    ],
)
def test_go_duration(nanoseconds: int, text: str) -> None:
    assert go_duration(nanoseconds) == text


def test_human_time() -> None:
    now = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    assert human_time(None, "Never", now) == "Never"
    assert human_time(now - dt.timedelta(days=15), "Never", now) == "2 weeks ago"
    assert human_time(now + dt.timedelta(minutes=4, seconds=59), "", now) == "4 minutes from now"
    assert human_time(now + dt.timedelta(days=365 * 200), "", now) == "Forever"


def test_modelfile_becomes_the_create_request() -> None:
    text = 'FROM llama3.2\n# comment\nSYSTEM """Be\nterse."""\nPARAMETER temperature 0.2\n'
    text += 'PARAMETER stop "<|x|>"\nMESSAGE user hi\n'
    assert create_request("mine", text) == {
        "model": "",
        "from": "llama3.2",
        "system": "Be\nterse.",
        "parameters": {"temperature": 0.2, "stop": ["<|x|>"]},
        "messages": [{"role": "user", "content": "hi"}],
        "name": "mine",
    }
    with pytest.raises(ModelfileError, match="no FROM line"):
        create_request("mine", "SYSTEM hi\n")


# --- the executable, without a server ----------------------------------------------------


@pytest.mark.process
def test_the_script_is_found_on_path_and_runs_the_venv_python() -> None:
    env = fake_ollama.environ()
    assert shutil.which("ollama", path=env["PATH"]) == str(fake_ollama.EXECUTABLE)
    assert fake_ollama.EXECUTABLE.read_text().startswith("#!/bin/sh\n")
    assert os.access(fake_ollama.EXECUTABLE, os.X_OK)
    done = ollama("--help", env=env)
    assert done.returncode == 0
    assert "Available Commands:" in done.stdout


@pytest.mark.process
def test_client_commands_without_a_server_say_how_to_start_one() -> None:
    env = fake_ollama.environ(OLLAMA_HOST=f"127.0.0.1:{free_port()}")
    for args in (["list"], ["ps"], ["run", "llama3.2", "hi"], ["pull", "llama3.2"]):
        done = ollama(*args, env=env)
        assert (done.returncode, done.stdout, done.stderr) == (1, "", REFUSED), args


@pytest.mark.process
def test_version_without_a_server_warns_and_succeeds() -> None:
    done = ollama("-v", env=fake_ollama.environ(OLLAMA_HOST=f"127.0.0.1:{free_port()}"))
    assert done.returncode == 0
    assert done.stdout == (
        "Warning: could not connect to a running Ollama instance\n"
        "Warning: client version is 0.33.0\n"
    )


@pytest.mark.process
def test_usage_errors_are_reported_like_cobra() -> None:
    env = fake_ollama.environ(OLLAMA_HOST=f"127.0.0.1:{free_port()}")
    unknown = ollama("frobnicate", env=env)
    assert (unknown.returncode, unknown.stderr) == (
        1,
        'Error: unknown command "frobnicate" for "ollama"\n',
    )
    assert "Did you mean this?\n\tlist\n" in ollama("lis", env=env).stderr
    assert ollama("cp", "a", env=env).stderr == "Error: accepts 2 arg(s), received 1\n"
    assert ollama("run", env=env).stderr == "Error: requires at least 1 arg(s), only received 0\n"
    assert ollama("list", "--bogus", env=env).stderr == "Error: unknown flag: --bogus\n"


# --- against a running `ollama serve` ----------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("serve")) as served:
        yield served


@pytest.fixture
def server(shared: Served) -> Served:
    shared.reset()
    return shared


@pytest.mark.process
def test_serve_logs_like_the_real_server(server: Served) -> None:
    assert f'msg="Listening on 127.0.0.1:{server.port} (version 0.33.0)"' in server.stderr()
    assert ollama("list", env=server.env).returncode == 0
    assert '|       127.0.0.1 | GET     "/api/tags"' in server.stdout()
    assert "| 200 |" in server.stdout()


@pytest.mark.process
def test_list_sends_a_heartbeat_then_prints_the_table(server: Served) -> None:
    done = ollama("list", env=server.env)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert any(row.startswith("llama3.2:latest ") and "2.0 GB" in row for row in rows)
    assert server.calls() == ["HEAD /", "GET /api/tags"]
    headers = dict(server.requests()[1]["headers"])
    assert headers["user-agent"] == "ollama/0.33.0 (amd64 linux) Go/go1.24.0"


@pytest.mark.process
def test_show_prints_details_or_not_found(server: Served) -> None:
    done = ollama("show", "llama3.2", env=server.env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("  Model\n    architecture        llama ")
    assert "quantization        Q4_K_M" in done.stdout
    missing = ollama("show", "nope", env=server.env)
    assert (missing.returncode, missing.stderr) == (1, "Error: model 'nope' not found\n")


@pytest.mark.process
def test_pull_streams_progress_and_installs_the_model(server: Served) -> None:
    done = ollama("pull", "smollm2:135m", env=server.env)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "pulling manifest"
    assert lines[-1] == "success"
    assert any(line.startswith("pulling ") and "100%" in line for line in lines)
    assert "smollm2:135m" in ollama("list", env=server.env).stdout
    unknown = ollama("pull", "no-such-model", env=server.env)
    assert unknown.returncode == 1
    assert unknown.stderr.endswith("Error: pull model manifest: file does not exist\n")


@pytest.mark.process
def test_run_one_shot_follows_the_real_request_sequence(server: Served) -> None:
    done = ollama("run", "llama3.2", "Why is the sky blue?", env=server.env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("\n\n")
    assert done.stdout.strip()
    assert server.calls() == ["HEAD /", "POST /api/show", "POST /api/generate", "POST /api/chat"]
    chat = server.requests()[-1]
    body = b'{"model":"llama3.2","messages":[{"role":"user","content":"Why is the sky blue?"}],'
    assert chat["body_sha256"] == sha256(body + b'"options":{}}')
    assert chat["status"] == 200


@pytest.mark.process
def test_run_pulls_a_missing_model_first(server: Served) -> None:
    done = ollama("run", "smollm2:135m", "hi", env=server.env)
    assert done.returncode == 0, done.stderr
    assert "success" in done.stderr
    assert server.calls() == [
        "HEAD /",
        "POST /api/show",
        "POST /api/pull",
        "POST /api/show",
        "POST /api/generate",
        "POST /api/chat",
    ]


@pytest.mark.process
def test_run_interactive_keeps_the_history(server: Served) -> None:
    done = ollama("run", "llama3.2", env=server.env, stdin="hello there\n/what\nand again\n/bye\n")
    assert done.returncode == 0, done.stderr
    assert ">>>" not in done.stdout  # stdin is not a terminal
    first, rest = done.stdout.split("\n\n", 1)
    assert rest.startswith("Unknown command '/what'. Type /? for help\n")
    assert rest.endswith("\n\n")
    chats = [entry for entry in server.requests() if entry["path"] == "/api/chat"]
    assert len(chats) == 2
    messages = [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "and again"},
    ]
    history = {"model": "llama3.2", "messages": messages, "options": {}}
    assert chats[1]["body_sha256"] == sha256(go_json(history))


@pytest.mark.process
def test_run_interactive_ends_at_end_of_input(server: Served) -> None:
    done = ollama("run", "llama3.2", env=server.env, stdin="")
    assert (done.returncode, done.stdout) == (0, "")
    assert server.calls() == ["HEAD /", "POST /api/show", "POST /api/generate"]


class TerminalInput(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.process
def test_run_interactive_prompts_on_a_terminal(server: Served) -> None:
    console = Console(io.StringIO(), io.StringIO(), TerminalInput("hi\n/bye\n"))
    environ = {"OLLAMA_HOST": f"127.0.0.1:{server.port}"}
    assert main(["run", "llama3.2"], environ, console) == 0
    shown = console.out.getvalue()
    assert shown.startswith(">>> ")
    assert shown.endswith("\n\n>>> ")
    assert console.err.getvalue() == ""


@pytest.mark.process
def test_ps_and_stop(server: Served) -> None:
    assert ollama("ps", env=server.env).stdout.split() == [
        "NAME",
        "ID",
        "SIZE",
        "PROCESSOR",
        "CONTEXT",
        "UNTIL",
    ]
    assert ollama("run", "llama3.2", "hi", env=server.env).returncode == 0
    running = ollama("ps", env=server.env).stdout.splitlines()[1]
    assert running.startswith("llama3.2:latest ")
    assert "100% GPU" in running
    assert "minutes from now" in running
    stop = ollama("stop", "llama3.2", env=server.env)
    assert (stop.returncode, stop.stdout, stop.stderr) == (0, "", "")
    assert len(ollama("ps", env=server.env).stdout.splitlines()) == 1
    unload = server.requests()[-3]  # then the heartbeat and /api/ps of the last `ps`
    body = b'{"model":"llama3.2","prompt":"","suffix":"","system":"","template":"",'
    assert unload["body_sha256"] == sha256(body + b'"keep_alive":"0s","options":null}')
    missing = ollama("stop", "nope", env=server.env)
    assert (missing.returncode, missing.stderr) == (
        1,
        'Error: couldn\'t find model "nope" to stop\n',
    )


@pytest.mark.process
def test_create_copy_and_remove(server: Served, tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text("FROM llama3.2\nSYSTEM You are terse.\n")
    created = ollama("create", "terse", env=server.env, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert created.stderr.splitlines()[-1] == "success"
    copied = ollama("cp", "terse", "terse2", env=server.env)
    assert copied.stdout == "copied 'terse' to 'terse2'\n"
    listed = ollama("list", env=server.env).stdout
    assert "terse:latest" in listed
    assert "terse2:latest" in listed
    removed = ollama("rm", "terse", "terse2", env=server.env)
    assert removed.stdout == "deleted 'terse'\ndeleted 'terse2'\n"
    assert "terse" not in ollama("list", env=server.env).stdout
    gone = ollama("rm", "terse", env=server.env)
    assert (gone.returncode, gone.stderr) == (1, "Error: model 'terse' not found\n")
    no_file = ollama("create", "x", "-f", str(tmp_path / "missing"), env=server.env)
    assert no_file.stderr == "Error: specified Modelfile wasn't found\n"


@pytest.mark.process
def test_push_and_version(server: Served) -> None:
    pushed = ollama("push", "llama3.2", env=server.env)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stderr.splitlines()[-1] == "success"
    version = ollama("--version", env=server.env)
    assert (version.returncode, version.stdout) == (0, "ollama version is 0.33.0\n")


# --- serve's lifecycle and knobs ---------------------------------------------------------


@pytest.mark.process
def test_serve_exits_0_on_sigterm_and_sigint(tmp_path: Path) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        with serving(tmp_path / signum.name) as served:
            served.process.send_signal(signum)
            assert served.process.wait(timeout=10) == 0


@pytest.mark.process
def test_a_taken_port_fails_like_go() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = ollama("serve", env=fake_ollama.environ(OLLAMA_HOST=f"127.0.0.1:{port}"))
    assert done.returncode == 1
    assert done.stderr == f"Error: listen tcp 127.0.0.1:{port}: bind: address already in use\n"


@pytest.mark.process
def test_crash_after_exits_2_and_every_start_is_in_the_pidfile(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    knobs = {"FAKE_OLLAMA_PIDFILE": str(pidfile), "FAKE_OLLAMA_CRASH_AFTER": "0.5"}
    with serving(tmp_path, **knobs) as served:
        assert ollama("list", env=served.env).returncode == 0  # it serves until then
        assert served.process.wait(timeout=10) == 2
        assert "panic: FAKE_OLLAMA_CRASH_AFTER" in served.stderr()
        with socket.socket() as taken:  # a start that fails is recorded too
            taken.bind(("127.0.0.1", served.port))
            taken.listen()
            assert ollama("serve", env=served.env).returncode == 1
    pids = [int(pid) for pid in pidfile.read_text().split()]
    assert len(pids) == 2
    assert pids[0] == served.process.pid


@pytest.mark.process
def test_empty_host_binds_every_interface(tmp_path: Path) -> None:
    with serving(tmp_path, bind="") as served:
        port = served.port
        listening = next(line for line in served.stderr().splitlines() if "Listening" in line)
        assert f"Listening on [::]:{port} " in listening or f"on 0.0.0.0:{port} " in listening
        assert ollama("list", env=served.env).returncode == 0


@pytest.mark.process
def test_token_delay_and_server_version_knobs(tmp_path: Path) -> None:
    knobs = {"FAKE_OLLAMA_TOKEN_DELAY": "0.05", "FAKE_OLLAMA_SERVER_VERSION": "0.30.0"}
    with serving(tmp_path, **knobs) as served:
        assert httpx.get(served.url + "/_emulator/config").json()["token_delay"] == 0.05
        version = ollama("-v", env=served.env)
        assert version.stdout == "ollama version is 0.30.0\nWarning: client version is 0.33.0\n"

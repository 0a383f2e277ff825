"""The sc.exe command lines: quoting read back the way Windows reads it, for awkward paths."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.winsvc import sc
from tests.winfake import cmd_unescape, split_args, split_image_path

PATHS = [
    r"C:\Program Files\Ollama Metrics\ollama-metrics.exe",
    r"C:\ollama-metrics.exe",
    r"C:\Program Files (x86)\Ollama Metrics\ollama-metrics.exe",
    r"D:\Tools & Stuff\(beta)\ollama-metrics.exe",
    r"C:\Users\Zoë Müller\アプリ\ollama-metrics.exe",
    r"C:\Program Files\Ollama  Metrics\two  spaces.exe",
    r"\\server\share\ollama metrics\ollama-metrics.exe",
    r"C:\a;b,c=d\ollama-metrics.exe",
]


@pytest.mark.parametrize("path", PATHS)
def test_create_line_reads_back_as_the_exact_path(path: str) -> None:
    line = sc.create("OllamaMetricsProxy", path).line
    argv = split_args(line)
    assert argv[:4] == ["sc.exe", "create", "OllamaMetricsProxy", "binPath="]
    assert argv[5:] == ["start=", "auto", "DisplayName=", "Ollama Metrics Proxy"]
    program, args = split_image_path(argv[4])
    assert program == path
    assert args == ["-service"]
    # The stored command line quotes the program, so C:\Program.exe is never tried.
    assert argv[4].startswith(f'"{path}"')


@pytest.mark.parametrize("path", PATHS)
def test_the_dry_run_form_gives_sc_the_same_arguments_through_cmd(path: str) -> None:
    line = sc.create("OllamaMetricsProxy", path).line
    assert split_args(cmd_unescape(sc.for_cmd(line))) == split_args(line)


def test_the_documented_line_for_program_files() -> None:
    # The exact line from the issue: it works verbatim in cmd.exe.
    line = sc.for_cmd(sc.create("OllamaMetricsProxy", sc_default_path()).line)
    assert line == (
        r'sc.exe create OllamaMetricsProxy binPath= "\"C:\Program Files\Ollama Metrics'
        r'\ollama-metrics.exe\" -service" start= auto DisplayName= "Ollama Metrics Proxy"'
    )


def sc_default_path() -> str:
    from app.winsvc.manage import DEFAULT_EXE

    return DEFAULT_EXE


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("ollama-metrics.exe", "absolute"),
        (r"Program Files\ollama-metrics.exe", "absolute"),
        ("C:\\Program Files\\Ollama Metrics\\", ".exe"),  # a trailing backslash: a folder
        (r"C:\Tools\ollama-metrics", ".exe"),
        (r"C:\100%\ollama-metrics.exe", "%"),
        ('C:\\a"b\\ollama-metrics.exe', '"'),
    ],
)
def test_unusable_paths_are_refused_with_the_reason(path: str, problem: str) -> None:
    with pytest.raises(sc.CommandError, match=re.escape(problem)):
        sc.create("OllamaMetricsProxy", path)


@pytest.mark.parametrize("name", ["Ollama Metrics", "a&b", "", "x" * 81, 'q"'])
def test_service_names_that_would_need_quoting_are_refused(name: str) -> None:
    with pytest.raises(sc.CommandError, match="service name"):
        sc.create(name, r"C:\x\ollama-metrics.exe")


@pytest.mark.parametrize(
    "arg",
    ["plain", "two words", "C:\\dir\\", "C:\\dir with space\\", 'say "hi"', 'a\\"b', "", "\\\\"],
)
def test_quote_arg_round_trips(arg: str) -> None:
    assert split_args(f"prog {sc.quote_arg(arg)} next") == ["prog", arg, "next"]


@given(st.text(alphabet=st.sampled_from(list('ab \\"\tü(&')), max_size=20))
def test_quote_arg_round_trips_any_text(arg: str) -> None:
    assert split_args(f"prog {sc.quote_arg(arg)}") == ["prog", arg]


def test_the_other_commands() -> None:
    name = "OllamaMetricsProxy"
    assert split_args(sc.describe(name).line) == ["sc.exe", "description", name, sc.DESCRIPTION]
    assert split_args(sc.on_failure(name).line) == [
        "sc.exe",
        "failure",
        name,
        "reset=",
        "86400",
        "actions=",
        "restart/5000/restart/10000/restart/60000",
    ]
    assert sc.start(name).line == f"sc.exe start {name}"
    assert sc.stop(name).line == f"sc.exe stop {name}"
    assert sc.delete(name).line == f"sc.exe delete {name}"
    assert split_args(sc.configure_start("Ollama Server", "disabled").line) == [
        "sc.exe",
        "config",
        "Ollama Server",
        "start=",
        "disabled",
    ]


@pytest.mark.parametrize(
    ("output", "state"),
    [
        ("SERVICE_NAME: X\r\n        STATE              : 4  RUNNING\r\n", "RUNNING"),
        ("        STATE              : 1  STOPPED  \n", "STOPPED"),
        ("        STATE              : 2  START_PENDING\n", "START_PENDING"),
        # A German Windows: the number is what counts.
        (
            "        STATUS             : 4  RUNNING\n        STATE : 3  STOP_PENDING",
            "STOP_PENDING",
        ),
        (
            "[SC] EnumQueryServicesStatus:OpenService FAILED 1060:\r\n\r\nThe specified "
            "service does not exist as an installed service.\r\n",
            None,
        ),
    ],
)
def test_parse_state(output: str, state: str | None) -> None:
    assert sc.parse_state(output) == state


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.process
def test_dry_run_prints_only_the_commands_on_stdout_on_any_os() -> None:
    exe = r"C:\Program Files (x86)\Ollama Metrics\ollama-metrics.exe"
    result = cli("service", "install", "--dry-run", "--name", "OM", "--exe", exe)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [split_args(cmd_unescape(line))[:3] for line in lines] == [
        ["sc.exe", "create", "OM"],
        ["sc.exe", "description", "OM"],
        ["sc.exe", "failure", "OM"],
    ]
    assert split_image_path(split_args(cmd_unescape(lines[0]))[4]) == (exe, ["-service"])
    assert "rem register the service" in result.stderr


@pytest.mark.process
@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("uninstall", ["sc.exe stop OllamaMetricsProxy", "sc.exe delete OllamaMetricsProxy"]),
        ("start", ["sc.exe start OllamaMetricsProxy"]),
        ("stop", ["sc.exe stop OllamaMetricsProxy"]),
        ("status", ["sc.exe query OllamaMetricsProxy"]),
    ],
)
def test_dry_run_of_each_action(action: str, expected: list[str]) -> None:
    result = cli("service", action, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected


@pytest.mark.process
def test_without_dry_run_off_windows_the_error_says_so() -> None:
    result = cli("service", "install", "--exe", r"C:\x\ollama-metrics.exe")
    assert result.returncode == 1
    assert "only on Windows" in result.stderr
    assert "--dry-run" in result.stderr


@pytest.mark.process
def test_a_bad_path_is_a_clear_error_not_a_traceback() -> None:
    result = cli("service", "install", "--dry-run", "--exe", "relative\\ollama-metrics.exe")
    assert result.returncode == 1
    assert "absolute path" in result.stderr
    assert "Traceback" not in result.stderr

"""The Windows seam's pure parts (app/winsvc/system.py): ``tasklist`` and ``netstat`` output
parsed, and a service's state read and waited for, against the fake Windows of tests/winfake.py."""

from __future__ import annotations

import time

import pytest

from app.winsvc.system import (
    Process,
    parse_netstat_listeners,
    parse_tasklist,
    service_state,
    wait_for_state,
)
from tests.winfake import FakeWindows, Service

# `tasklist /FO CSV /NH` as Windows 11 prints it (CRLF, thousands separators in the memory).
TASKLIST = (
    '"System Idle Process","0","Services","0","8 K"\r\n'
    '"System","4","Services","0","1,204 K"\r\n'
    '"ollama app.exe","7312","Console","1","24,580 K"\r\n'
    '"ollama.exe","9120","Console","1","1,310,112 K"\r\n'
    '"Code - Insiders, Portable.exe","9200","Console","1","100 K"\r\n'
)

# `netstat -ano -p TCP` on a German Windows: the state word is translated; IPv6 rows too.
NETSTAT = """
Aktive Verbindungen

  Proto  Lokale Adresse         Remoteadresse          Status           PID
  TCP    0.0.0.0:135            0.0.0.0:0              ABHÖREN          1024
  TCP    127.0.0.1:11434        0.0.0.0:0              ABHÖREN          9120
  TCP    127.0.0.1:11434        127.0.0.1:50120        HERGESTELLT      9120
  TCP    127.0.0.1:50120        127.0.0.1:11434        HERGESTELLT      4444
  TCP    [::]:11434             [::]:0                 ABHÖREN          7312
  TCP    [::1]:11435            [::]:0                 ABHÖREN          55
  TCP    192.168.1.20:49830     140.82.112.3:443       HERGESTELLT      6000
  UDP    0.0.0.0:11434          *:*                                     8000
"""


def test_tasklist_rows_become_processes() -> None:
    assert parse_tasklist(TASKLIST) == [
        Process(0, "System Idle Process"),
        Process(4, "System"),
        Process(7312, "ollama app.exe"),
        Process(9120, "ollama.exe"),
        Process(9200, "Code - Insiders, Portable.exe"),
    ]


@pytest.mark.parametrize(
    "output",
    [
        "INFO: No tasks are running which match the specified criteria.\r\n",
        "",
        '"Image Name","PID","Session Name","Session#","Mem Usage"\r\n',  # a header, if asked
    ],
)
def test_tasklist_output_without_process_rows(output: str) -> None:
    assert parse_tasklist(output) == []


def test_netstat_listeners_are_the_rows_with_remote_port_zero_whatever_the_language() -> None:
    assert parse_netstat_listeners(NETSTAT, 11434) == {9120, 7312}
    assert parse_netstat_listeners(NETSTAT, 135) == {1024}


def test_netstat_ports_match_exactly_and_udp_and_clients_are_not_listeners() -> None:
    assert parse_netstat_listeners(NETSTAT, 1143) == set()
    assert parse_netstat_listeners(NETSTAT, 1434) == set()
    assert parse_netstat_listeners(NETSTAT, 11435) == {55}
    assert parse_netstat_listeners(NETSTAT, 50120) == set()  # a client's end only
    assert parse_netstat_listeners(NETSTAT, 443) == set()
    assert parse_netstat_listeners("", 11434) == set()


def test_service_state_is_what_sc_query_says_and_none_for_no_such_service() -> None:
    win = FakeWindows(services={"Spooler": Service("spoolsv.exe", "auto", state="RUNNING")})
    assert service_state(win, "Spooler") == "RUNNING"
    assert service_state(win, "spooler") == "RUNNING"  # service names are case-insensitive
    assert service_state(win, "Nope") is None
    assert win.commands == ["sc.exe query Spooler", "sc.exe query spooler", "sc.exe query Nope"]


def test_wait_for_state_polls_until_the_wanted_state() -> None:
    win = FakeWindows(services={"Svc": Service("svc.exe", state="START_PENDING")})
    slept: list[float] = []
    assert wait_for_state(win, "Svc", "RUNNING", within=60, sleep=slept.append) == "RUNNING"
    assert slept == [0.25]
    assert win.commands == ["sc.exe query Svc"] * 2


def test_wait_for_state_stops_at_the_failed_state() -> None:
    win = FakeWindows(
        services={"Svc": Service("svc.exe", state="START_PENDING", behaviour="fails")}
    )
    slept: list[float] = []
    state = wait_for_state(win, "Svc", "RUNNING", within=60, failed="STOPPED", sleep=slept.append)
    assert state == "STOPPED"
    assert slept == [0.25]


def test_wait_for_state_returns_at_once_for_a_missing_or_settled_service() -> None:
    win = FakeWindows(services={"Svc": Service("svc.exe", state="RUNNING")})
    slept: list[float] = []
    assert wait_for_state(win, "Gone", "STOPPED", within=60, sleep=slept.append) is None
    assert wait_for_state(win, "Svc", "RUNNING", within=60, sleep=slept.append) == "RUNNING"
    assert slept == []


class StuckWindows(FakeWindows):
    """A Windows whose services never leave a pending state."""

    @staticmethod
    def _advance(service: Service) -> None:
        pass


def test_wait_for_state_gives_up_when_time_is_up_with_the_last_state_seen() -> None:
    win = StuckWindows(services={"Svc": Service("svc.exe", state="STOP_PENDING")})
    assert wait_for_state(win, "Svc", "STOPPED", within=0, sleep=time.sleep) == "STOP_PENDING"
    assert win.commands == ["sc.exe query Svc"]  # no time left: no second look
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(0.01)

    assert wait_for_state(win, "Svc", "STOPPED", within=0.05, sleep=sleep) == "STOP_PENDING"
    assert slept
    assert set(slept) == {0.25}

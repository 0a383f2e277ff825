"""Logging set-up (text or JSON lines, stderr or a rotating file) and the access log's lines."""

from __future__ import annotations

import json
import logging
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path

import httpx
import pytest

from app import logs
from app.logs import AccessLog, JsonFormatter, configure_logging
from app.record import ExchangeRecord
from tests.emulator import EmulatorServer
from tests.support import sample_record
from tests.test_cli import proxy_session

# Each test may reconfigure logging (tests/conftest.py puts it back).
pytestmark = pytest.mark.usefixtures("keep_logging")


def record_of(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("app.test", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


# -- JsonFormatter ---------------------------------------------------------------------------


def test_a_json_line_holds_time_level_logger_and_message() -> None:
    record = record_of("%s took %d ms", "ünïcode", 12)
    record.created = 1_700_000_000.25
    line = JsonFormatter().format(record)
    assert json.loads(line) == {
        "time": "2023-11-14T22:13:20.250+00:00",
        "level": "warning",
        "logger": "app.test",
        "message": "ünïcode took 12 ms",
    }
    assert "ünïcode" in line  # kept as it is, not \\u-escaped
    assert "\n" not in line


def test_an_access_records_fields_join_the_line() -> None:
    entry = json.loads(
        JsonFormatter().format(record_of("GET /", access={"status": 200, "id": "x"}))
    )
    assert entry["status"] == 200
    assert entry["id"] == "x"
    assert entry["message"] == "GET /"


def test_an_access_that_is_not_a_dict_is_left_out() -> None:
    entry = json.loads(JsonFormatter().format(record_of("GET /", access="status=200")))
    assert set(entry) == {"time", "level", "logger", "message"}


def test_an_exception_is_in_the_line() -> None:
    try:
        raise RuntimeError("it broke")
    except RuntimeError:
        record = logging.LogRecord(
            "app.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "error"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("RuntimeError: it broke")


# -- configure_logging -----------------------------------------------------------------------


def test_text_logs_go_to_stderr_at_the_level_asked(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning", "text")
    logging.getLogger("app.test").info("not shown")
    logging.getLogger("app.test").warning("shown %d", 1)
    err = capsys.readouterr().err
    assert "not shown" not in err
    [line] = err.splitlines()
    assert line.endswith(" WARNING app.test: shown 1")
    assert logging.getLogger().level == logging.WARNING


def test_json_logs_are_one_object_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    logging.getLogger("app.test").info("first")
    logging.getLogger("app.other").error("second")
    entries = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["logger"], e["level"], e["message"]) for e in entries] == [
        ("app.test", "info", "first"),
        ("app.other", "error", "second"),
    ]


def test_configuring_again_replaces_the_handler_and_closes_an_old_file(tmp_path: Path) -> None:
    first = tmp_path / "first.log"
    configure_logging("info", "text", file=first)
    [old] = logging.getLogger().handlers
    assert isinstance(old, RotatingFileHandler)
    logging.getLogger("app.test").info("into the first")
    configure_logging("info", "text", file=tmp_path / "second.log")
    [new] = logging.getLogger().handlers
    assert new is not old
    assert old.stream is None  # closed: the service's file is not held open
    logging.getLogger("app.test").info("into the second")
    assert "into the second" not in first.read_text(encoding="utf-8")
    assert "into the second" in (tmp_path / "second.log").read_text(encoding="utf-8")


def test_a_log_file_gets_its_folder_and_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "logs" / "ollama-metrics.log"
    configure_logging("info", "json", file=path)
    logging.getLogger("app.test").info("to the file")
    [handler] = logging.getLogger().handlers
    assert isinstance(handler, RotatingFileHandler)
    assert (handler.maxBytes, handler.backupCount) == (10 * 1024 * 1024, 5)
    [entry] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert entry["message"] == "to the file"


def test_the_service_log_rotates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "LOG_FILE_BYTES", 2000)
    monkeypatch.setattr(logs, "LOG_FILE_BACKUPS", 2)
    path = tmp_path / "logs" / "ollama-metrics.log"
    logs.configure_logging("info", "text", file=path)
    for i in range(200):
        logging.getLogger("app.test").info("line %03d %s", i, "x" * 40)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["ollama-metrics.log", "ollama-metrics.log.1", "ollama-metrics.log.2"]
    assert all((path.parent / name).stat().st_size <= 2000 for name in files)
    assert "line 199" in path.read_text(encoding="utf-8")


# -- AccessLog -------------------------------------------------------------------------------


def access_lines(
    caplog: pytest.LogCaptureFixture, record: ExchangeRecord
) -> list[logging.LogRecord]:
    with caplog.at_level(logging.INFO, logger="app.access"):
        AccessLog().finished(record)
    return [line for line in caplog.records if line.name == "app.access"]


def test_an_access_line_says_what_happened(caplog: pytest.LogCaptureFixture) -> None:
    record = sample_record(duration_s=1.23456, client="10.0.0.7")
    [line] = access_lines(caplog, record)
    assert line.levelno == logging.INFO
    assert line.getMessage() == "POST /api/chat 200 1234.6ms model=llama3.2:latest tokens=20/30"
    assert line.access == {  # type: ignore[attr-defined]
        "id": record.id,
        "method": "POST",
        "path": "/api/chat",
        "model": "llama3.2:latest",
        "status": 200,
        "prompt_tokens": 20,
        "completion_tokens": 30,
        "duration_ms": 1234.56,
        "client": "10.0.0.7",
    }


def test_an_access_line_leaves_out_what_is_not_known(caplog: pytest.LogCaptureFixture) -> None:
    record = sample_record(model="", prompt_tokens=None, completion_tokens=None, path="/api/tags")
    [line] = access_lines(caplog, record)
    assert line.getMessage() == "POST /api/tags 200 2000.0ms"


def test_an_access_line_counts_missing_tokens_as_0_and_names_a_disconnect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = sample_record(prompt_tokens=None, completion_tokens=7, cancelled=True)
    [line] = access_lines(caplog, record)
    assert line.getMessage().endswith(" tokens=0/7 (client disconnected)")
    assert line.access["prompt_tokens"] is None  # type: ignore[attr-defined]


def test_no_access_line_below_info(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="app.access"):
        AccessLog().finished(sample_record())
    assert [record for record in caplog.records if record.name == "app.access"] == []


def test_a_started_request_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        AccessLog().started("id", "/api/chat", "llama3.2")
    assert caplog.records == []


@pytest.mark.process
def test_json_logs_carry_one_access_object_per_request(emulator: EmulatorServer) -> None:
    def request(url: str) -> None:
        body = {"model": "llama3.2", "prompt": "hi", "stream": False}
        httpx.post(url + "/api/generate", json=body)

    _, output = proxy_session(emulator.url, request, "--log-format", "json")
    entries = [json.loads(line) for line in output.splitlines()]
    access = [e for e in entries if e["logger"] == "app.access"]
    assert len(access) == 1
    assert access[0]["method"] == "POST"
    assert access[0]["path"] == "/api/generate"
    assert access[0]["model"] == "llama3.2:latest"
    assert access[0]["status"] == 200
    assert access[0]["completion_tokens"] > 0
    assert access[0]["duration_ms"] > 0
    assert {"time", "level", "message"} <= access[0].keys()

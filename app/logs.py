"""Logging set-up (human-readable or JSON lines) and the access log, one line per request."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

from app.record import ExchangeRecord

access_log = logging.getLogger("app.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and an access record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "access", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


# A service's log file: rotated at 10 MB, five old files kept.
LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5


def configure_logging(level: str, fmt: str, *, file: Path | None = None) -> None:
    """Log to stderr, or (a service, which has no console) to a rotating ``file``."""
    handler: logging.Handler
    if file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(
            file, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8"
        )
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, RotatingFileHandler):
            old.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class AccessLog:
    """A sink of ``app.exchange``: one line per proxied request."""

    def started(self, request_id: str, endpoint: str, model: str) -> None:
        return None

    def finished(self, record: ExchangeRecord) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        tokens = ""
        if record.prompt_tokens is not None or record.completion_tokens is not None:
            tokens = f" tokens={record.prompt_tokens or 0}/{record.completion_tokens or 0}"
        access_log.info(
            "%s %s %s %.1fms%s%s%s",
            record.method,
            record.path,
            record.status,
            record.duration_s * 1000,
            f" model={record.model}" if record.model else "",
            tokens,
            " (client disconnected)" if record.cancelled else "",
            extra={
                "access": {
                    "id": record.id,
                    "method": record.method,
                    "path": record.path,
                    "model": record.model,
                    "status": record.status,
                    "prompt_tokens": record.prompt_tokens,
                    "completion_tokens": record.completion_tokens,
                    "duration_ms": round(record.duration_s * 1000, 3),
                    "client": record.client,
                }
            },
        )

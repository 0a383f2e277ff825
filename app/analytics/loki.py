"""Rows pushed to Grafana Loki: one HTTP POST per batch.

    write(rows) ──▶ POST {url}/loki/api/v1/push   Content-Type: application/json
                    {"streams": [{"stream": {label: value, ...},
                                  "values": [["<unix ns>", "<row as compact JSON>"], ...]}]}

Streams are keyed by low-cardinality labels only: ``app`` (``ollama-metrics`` unless a static
label overrides it), ``model``, ``endpoint``, ``status_class`` (``2xx``, ``4xx``, ...),
``node`` (the machine, ``PROXY_NODE``: one value per proxy) and the static ``labels`` given.
Prompts, ids and clients live in the line, which is the whole row as JSON, so LogQL
``| json`` and line filters reach every field. A model name becomes a label value
only once Ollama answered it without error (status < 400) and at most ``max_models`` of them;
anything else is ``other``, so clients sending junk names cannot create streams.

What :class:`LokiBackend` guarantees:

- Failures raise. :class:`LokiError` (unreachable, timeout, 429, 5xx, any other non-2xx such as
  401/403/404 from a misconfiguration) means "retry the same batch later" (not before its
  ``retry_after``, from Loki's ``Retry-After`` header, when it sent one). Its subclass
  :class:`LokiRejected` (400: Loki refused entries, e.g. too old, too long, out of order; 413:
  batch too large) means retrying the same batch cannot succeed; it is a ``RejectedRows``, so
  the writer drops the batch and counts it. Loki keeps the valid entries of a push and answers
  400 for the invalid ones, so dropping the batch loses only those.
- A retry sends byte-identical entries (timestamps in whole microseconds from the row, lines
  from the row alone), and Loki drops an entry whose stream, timestamp and line equal one it
  already has, so a batch Loki took before the answer was lost is normally not stored twice.
  That deduplication is Loki's and best effort: delivery is at-least-once; rows carry ``id``.
- ``delete_older_than`` deletes nothing and returns 0: Loki applies its own retention
  (``retention_period`` in its limits), which a push client cannot do row by row.

Credentials (basic auth, bearer token, or ``user:password@`` in the URL, moved into basic auth
so the URL that httpx logs carries none) are sent as headers and never logged.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from operator import itemgetter
from typing import Any

import httpx

from app import __version__
from app.analytics.jsonl import compact_json
from app.analytics.rows import RejectedRows
from app.metrics.labels import BoundedLabel

log = logging.getLogger(__name__)

PUSH_PATH = "/loki/api/v1/push"
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
ROW_LABELS = frozenset({"model", "endpoint", "status_class", "node"})
DEFAULT_MAX_MODELS = 100
_REJECTED = frozenset({400, 413})
_EXCERPT = 200

Stream = dict[str, Any]


class LokiError(Exception):
    """The push failed; the same batch may succeed later (retry it)."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status  # Loki's HTTP status; None when no answer came
        # Seconds Loki asked us to wait (Retry-After of a 429/503); the writer honours it.
        self.retry_after = retry_after


class LokiRejected(LokiError, RejectedRows):
    """Loki refused the batch itself (400, 413): retrying it cannot help. A
    :class:`RejectedRows`, so the writer drops the batch and counts it."""


def status_class(status: object) -> str:
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        return f"{status // 100}xx"
    return "unknown"


def nanoseconds(timestamp: float) -> int:
    # Whole microseconds: what time.time() really resolves, and the same on every retry.
    return round(timestamp * 1_000_000) * 1_000


class LokiBackend:
    """Pushes each batch of rows to Loki at ``url`` (the base URL, without the push path)."""

    name = "loki"

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10,
        labels: dict[str, str] | None = None,
        tenant: str | None = None,
        auth: tuple[str, str] | None = None,
        bearer: str | None = None,
        max_models: int = DEFAULT_MAX_MODELS,
    ) -> None:
        if auth is not None and bearer is not None:
            raise ValueError("give either auth or bearer, not both")
        self._labels = {"app": "ollama-metrics", **_checked(labels or {})}
        self._models = BoundedLabel("model", max_models)
        endpoint = httpx.URL(url.rstrip("/") + PUSH_PATH)
        if endpoint.username or endpoint.password:
            auth = auth or (endpoint.username, endpoint.password)
            endpoint = endpoint.copy_with(username=None, password=None)
        self._endpoint = endpoint
        # trust_env=False: proxies and .netrc come from Settings, the one reader of the
        # environment, not from whatever the process inherited.
        self._client = httpx.Client(
            timeout=timeout, auth=auth, headers=_headers(tenant, bearer), trust_env=False
        )

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        streams = self._streams(rows)
        body = compact_json({"streams": streams}).encode("utf-8")
        started = time.perf_counter()
        _check(self._post(body))
        log.debug(
            "pushed %d rows in %d streams (%d bytes) to %s in %.3fs",
            len(rows),
            len(streams),
            len(body),
            self._endpoint,
            time.perf_counter() - started,
        )

    def delete_older_than(self, cutoff: float) -> int:
        """Nothing: Loki's own retention removes old entries. Always 0."""
        return 0

    def close(self) -> None:
        self._client.close()

    def _streams(self, rows: list[dict[str, Any]]) -> list[Stream]:
        # Admit first, label after: a retry of the same batch then gets the same labels even
        # when a row early in it names a model that a later row proves real.
        for row in rows:
            if isinstance(row.get("status"), int) and row["status"] < 400:
                self._models(_text(row.get("model")))
        grouped: dict[tuple[tuple[str, str], ...], list[tuple[int, str]]] = {}
        for row in rows:
            key = tuple(sorted(self._labels_of(row).items()))
            entry = (nanoseconds(row["timestamp"]), compact_json(row))
            grouped.setdefault(key, []).append(entry)
        return [_stream(dict(key), entries) for key, entries in grouped.items()]

    def _labels_of(self, row: dict[str, Any]) -> dict[str, str]:
        return {
            **self._labels,
            "model": self._models(_text(row.get("model")), admit=False),
            "endpoint": _text(row.get("endpoint")),
            "status_class": status_class(row.get("status")),
            "node": _text(row.get("node")),
        }

    def _post(self, body: bytes) -> httpx.Response:
        try:
            return self._client.post(
                self._endpoint, content=body, headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as exc:
            name = type(exc).__name__
            raise LokiError(f"Loki push to {self._endpoint} failed: {name}: {exc}") from exc


def _checked(labels: dict[str, str]) -> dict[str, str]:
    for name, value in labels.items():
        if not LABEL_NAME.fullmatch(name):
            raise ValueError(f"Loki label name {name!r} must match {LABEL_NAME.pattern}")
        if name in ROW_LABELS:
            raise ValueError(f"Loki label {name!r} is set from each row; it cannot be static")
        if not value:
            raise ValueError(f"Loki label {name!r} needs a value (Loki drops empty labels)")
    return labels


def _headers(tenant: str | None, bearer: str | None) -> dict[str, str]:
    headers = {"User-Agent": f"ollama-metrics-proxy/{__version__}"}
    if tenant:
        headers["X-Scope-OrgID"] = tenant
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    return headers


def _text(value: object) -> str:
    # Loki drops a label whose value is empty; "none" keeps such rows selectable.
    return str(value) if value else "none"


def _stream(labels: dict[str, str], entries: list[tuple[int, str]]) -> Stream:
    # Loki before 2.4 rejects entries older than the newest one of their stream in a push.
    entries.sort(key=itemgetter(0))
    return {"stream": labels, "values": [[str(ns), line] for ns, line in entries]}


def _check(response: httpx.Response) -> None:
    if response.is_success:
        return
    status = response.status_code
    message = f"Loki answered {status}: {response.text[:_EXCERPT]}"
    if status in _REJECTED:
        raise LokiRejected(message, status=status)
    raise LokiError(message, status=status, retry_after=retry_after(response))


def retry_after(response: httpx.Response) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds (delta or HTTP date)."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)

"""The SQL store (SQLite or PostgreSQL): batch inserts, search, stats and retention.

Every method is synchronous and is called from a worker thread (``asyncio.to_thread``),
never on the event loop. Statistics are computed by the database, not by loading rows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    Integer,
    and_,
    case,
    cast,
    create_engine,
    delete,
    event,
    false,
    func,
    insert,
    or_,
    select,
    text,
)
from sqlalchemy.engine import make_url

from app.analytics.migrate import upgrade
from app.analytics.tables import requests
from app.config import Settings

SUMMARY_COLUMNS = [
    c for c in requests.c if c.name not in ("request_body", "thinking", "tool_calls")
]
_WORD = re.compile(r"\w+", re.UNICODE)


def database_url(url: str | None, directory: Path) -> str:
    """The SQLAlchemy URL: a given one (``postgresql://`` means psycopg 3), else SQLite in
    ``directory``."""
    if not url:
        return f"sqlite:///{directory / 'analytics.db'}"
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def settings_url(settings: Settings) -> str:
    """The SQL store's URL for these settings (``ANALYTICS_DATABASE_URL`` or SQLite)."""
    given = settings.analytics_database_url
    return database_url(given.get_secret_value() if given else None, settings.analytics_dir)


def create_store_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    # WAL: readers (search) never block the writer; NORMAL is durable across process
    # crashes (a power cut may lose the last commits, never corrupt the file).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@dataclass(frozen=True, slots=True)
class SearchQuery:
    model: str | None = None
    endpoint: str | None = None
    category: str | None = None
    status: int | None = None
    prompt_search: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    min_duration: float | None = None
    limit: int = 50
    cursor: str | None = None


class SqlStore:
    """A ``Backend`` (see ``app.analytics.rows``) over one SQLAlchemy engine."""

    def __init__(self, engine: Engine, *, auto_migrate: bool = True) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.name = "postgresql" if self.dialect == "postgresql" else "sqlite"
        # Migrated before the first write; a database that is down at start-up is migrated
        # once it answers (the writer retries), so the proxy never waits for it.
        self.migrated = not auto_migrate

    def migrate(self) -> None:
        if not self.migrated:
            upgrade(self.engine)
            self.migrated = True

    # -- writing -----------------------------------------------------------------------

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Insert a batch in one transaction. Rows already stored (a retried batch whose
        commit did reach the database) are skipped, so a retry never duplicates."""
        if not rows:
            return
        self.migrate()
        with self.engine.begin() as connection:
            ids = [row["id"] for row in rows]
            present = set(connection.scalars(select(requests.c.id).where(requests.c.id.in_(ids))))
            fresh = [row for row in rows if row["id"] not in present]
            if not fresh:
                return
            connection.execute(insert(requests), fresh)
            if self.dialect == "sqlite":
                connection.execute(
                    text("INSERT INTO requests_fts (id, prompt, response) VALUES (:id, :p, :r)"),
                    [{"id": r["id"], "p": r["prompt"], "r": r["response"]} for r in fresh],
                )

    def delete_older_than(self, cutoff: float) -> int:
        with self.engine.begin() as connection:
            old = requests.c.timestamp < cutoff
            if self.dialect == "sqlite":
                connection.execute(
                    text(
                        "DELETE FROM requests_fts WHERE id IN "
                        "(SELECT id FROM requests WHERE timestamp < :cutoff)"
                    ),
                    {"cutoff": cutoff},
                )
            return connection.execute(delete(requests).where(old)).rowcount or 0

    def close(self) -> None:
        self.engine.dispose()

    # -- reading -----------------------------------------------------------------------

    def get(self, record_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(requests).where(requests.c.id == record_id)).first()
        return dict(row._mapping) if row is not None else None

    def search(self, query: SearchQuery) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first; the cursor is the id of the last record returned."""
        conditions = self._filters(query)
        if query.cursor:
            conditions.append(requests.c.id < query.cursor)
        statement = (
            select(*SUMMARY_COLUMNS)
            .where(and_(True, *conditions))
            .order_by(requests.c.id.desc())
            .limit(query.limit + 1)
        )
        with self.engine.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(statement)]
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return rows, rows[-1]["id"] if more and rows else None

    def _filters(self, query: SearchQuery) -> list[ColumnElement[bool]]:
        c = requests.c
        conditions: list[ColumnElement[bool]] = []
        if query.model is not None:
            conditions.append(c.model == query.model)
        if query.endpoint is not None:
            conditions.append(c.endpoint == query.endpoint)
        if query.category is not None:
            conditions.append(c.category == query.category)
        if query.status is not None:
            conditions.append(c.status == query.status)
        if query.start_time is not None:
            conditions.append(c.timestamp >= query.start_time)
        if query.end_time is not None:
            conditions.append(c.timestamp < query.end_time)
        if query.min_duration is not None:
            conditions.append(c.duration_s >= query.min_duration)
        if query.prompt_search:
            conditions.append(self._matches(query.prompt_search))
        return conditions

    def _matches(self, words: str) -> ColumnElement[bool]:
        """Full text over prompt and response: every word must occur (any order)."""
        if self.dialect == "postgresql":
            return text("search_vector @@ plainto_tsquery('simple', :words)").bindparams(
                words=words
            )  # type: ignore[return-value]
        # FTS5 has its own query language; quoting each word makes any input a plain
        # AND of words (no syntax errors, no operators smuggled in).
        terms = _WORD.findall(words)
        if not terms:
            return false()
        fts = " ".join('"' + term + '"' for term in terms)
        return requests.c.id.in_(
            text("SELECT id FROM requests_fts WHERE requests_fts MATCH :fts").bindparams(fts=fts)
        )

    # -- statistics --------------------------------------------------------------------

    def stats(self, since: float) -> dict[str, Any]:
        c = requests.c
        window = c.timestamp >= since
        failed = or_(c.status >= 400, c.upstream_error.is_not(None))
        errors = func.sum(case((failed, 1), else_=0))
        with self.engine.connect() as connection:
            totals = connection.execute(
                select(
                    func.count(),
                    errors,
                    func.sum(case((c.cancelled, 1), else_=0)),
                    func.avg(c.duration_s),
                    func.sum(c.prompt_tokens),
                    func.sum(c.completion_tokens),
                    func.avg(c.prompt_tokens),
                    func.avg(c.completion_tokens),
                    func.avg(c.tokens_per_second),
                ).where(window)
            ).one()
            count = int(totals[0])
            summary: dict[str, Any] = {
                "total_requests": count,
                "errors": int(totals[1] or 0),
                "cancelled": int(totals[2] or 0),
                "success_rate": (count - int(totals[1] or 0)) / count if count else None,
                "error_rate": int(totals[1] or 0) / count if count else None,
                "latency": {
                    "avg_s": _float(totals[3]),
                    "p50_s": self._percentile(connection, c.duration_s, 0.5, window),
                    "p95_s": self._percentile(connection, c.duration_s, 0.95, window),
                },
                "ttft": {
                    "p50_s": self._percentile(connection, c.ttft_s, 0.5, window),
                    "p95_s": self._percentile(connection, c.ttft_s, 0.95, window),
                },
                "tokens": {
                    "prompt_total": int(totals[4] or 0),
                    "completion_total": int(totals[5] or 0),
                    "prompt_avg": _float(totals[6]),
                    "completion_avg": _float(totals[7]),
                },
                "tokens_per_second_avg": _float(totals[8]),
            }
            summary["models"] = self._breakdown(connection, c.model, window, errors)
            summary["categories"] = self._breakdown(connection, c.category, window, errors)
            summary["top_clients"] = [
                {"client": client, "requests": n}
                for client, n in connection.execute(
                    select(c.client, func.count().label("n"))
                    .where(window)
                    .group_by(c.client)
                    .order_by(func.count().desc(), c.client)
                    .limit(10)
                )
            ]
            summary["hourly"] = self._hourly(connection, window, errors)
        return summary

    def _percentile(
        self, connection: Any, column: Any, fraction: float, window: ColumnElement[bool]
    ) -> float | None:
        """Nearest-rank percentile, found by the database (ORDER BY ... OFFSET)."""
        present = and_(window, column.is_not(None))
        count = connection.execute(select(func.count()).where(present)).scalar_one()
        if not count:
            return None
        offset = max(math.ceil(fraction * count) - 1, 0)
        value = connection.execute(
            select(column).where(present).order_by(column).offset(offset).limit(1)
        ).scalar_one()
        return float(value)

    def _breakdown(
        self, connection: Any, key: Any, window: ColumnElement[bool], errors: Any
    ) -> list[dict[str, Any]]:
        c = requests.c
        rows = connection.execute(
            select(
                key,
                func.count(),
                errors,
                func.avg(c.duration_s),
                func.sum(c.prompt_tokens),
                func.sum(c.completion_tokens),
                func.avg(c.tokens_per_second),
            )
            .where(window)
            .group_by(key)
            .order_by(func.count().desc(), key)
            .limit(100)
        )
        return [
            {
                "name": name,
                "requests": int(n),
                "errors": int(e or 0),
                "avg_duration_s": _float(d),
                "prompt_tokens": int(p or 0),
                "completion_tokens": int(q or 0),
                "tokens_per_second_avg": _float(r),
            }
            for name, n, e, d, p, q, r in rows
        ]

    def _hourly(
        self, connection: Any, window: ColumnElement[bool], errors: Any
    ) -> list[dict[str, Any]]:
        c = requests.c
        hour = (
            func.floor(c.timestamp / 3600)
            if self.dialect == "postgresql"
            else cast(c.timestamp / 3600, Integer)
        ).label("hour")
        rows = connection.execute(
            select(
                hour,
                func.count(),
                errors,
                func.sum(c.prompt_tokens),
                func.sum(c.completion_tokens),
                func.avg(c.duration_s),
            )
            .where(window)
            .group_by(hour)
            .order_by(hour)
        )
        return [
            {
                "hour": int(h) * 3600,
                "requests": int(n),
                "errors": int(e or 0),
                "prompt_tokens": int(p or 0),
                "completion_tokens": int(q or 0),
                "avg_duration_s": _float(d),
            }
            for h, n, e, p, q, d in rows
        ]


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]

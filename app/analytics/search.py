"""``/analytics/search``: filters, full text and newest-first pages that stay fast at
millions of records.

- Time bounds are also applied to the id (a ULID made from the timestamp's millisecond),
  so the ``(filter, id)`` indexes serve filter, window and order together.
- Full text, on both stores: a word in few records (counted up to ``RARE_DOCS``) is looked
  up in the full-text index and the matches sorted; a common word is searched slice by
  slice backwards in time (a minute, then 4×, 16×, …) until the page is full. Either way
  the page is exactly the newest matches.
- SQLite: FTS5 ``requests_fts`` (its rowid is the row's rowid; a slice's matches are found
  within the slice's rowid range). PostgreSQL: ``search_vector @@ plainto_tsquery('simple',
  …)`` over the GIN index; the plan is forced per path rather than left to the planner's
  guess (see ``_TsQuery``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    false,
    func,
    literal_column,
    select,
    text,
)

from app.analytics.tables import requests
from app.ollama.models import normalise_model
from app.record import STORED, ulid_floor, ulid_ms

SUMMARY_COLUMNS = [requests.c[field.name] for field in STORED if field.summary]
_WORD = re.compile(r"\w+", re.UNICODE)
RARE_DOCS = 5_000  # at most this many matching records: look them all up and sort
FIRST_SLICE_MS = 60_000
_ROWID: ColumnElement[int] = literal_column("requests.rowid")
_FTS_ROWIDS = text("SELECT rowid FROM requests_fts WHERE requests_fts MATCH :fts").columns(
    literal_column("rowid")
)
_FTS_RANGE = text(
    "SELECT rowid FROM requests_fts WHERE requests_fts MATCH :fts "
    "AND rowid >= :rmin AND rowid <= :rmax"
).columns(literal_column("rowid"))


@dataclass(frozen=True, slots=True)
class SearchQuery:
    model: str | None = None
    endpoint: str | None = None
    category: str | None = None
    status: int | None = None
    api_key: str | None = None  # a key's name
    client_app: str | None = None
    truncation: str | None = None
    cold_cause: str | None = None
    cold_start: bool | None = None  # True: any cold start; False: none
    placement: str | None = None
    node: str | None = None  # PROXY_NODE of the machine that served it
    prompt_search: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    min_duration: float | None = None
    min_queue_wait: float | None = None
    limit: int = 50
    cursor: str | None = None


def run(connection: Connection, query: SearchQuery) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first; the cursor is the id of the last record returned."""
    conditions, low, high = _filters(query)
    if low is not None and high is not None and low >= high:
        return [], None
    want = query.limit + 1
    if query.prompt_search:
        matcher = _matcher(connection, query.prompt_search)
        if matcher is None:
            return [], None
        rows = _text(connection, matcher, conditions, low, high, want)
    else:
        rows = _page(connection, [*conditions, *_between(low, high)], want)
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return rows, rows[-1]["id"] if more and rows else None


# The filters that select one stored value.
_EQUALS = (
    "endpoint",
    "category",
    "status",
    "api_key",
    "client_app",
    "truncation",
    "cold_cause",
    "placement",
    "node",
)


def _filters(query: SearchQuery) -> tuple[list[ColumnElement[bool]], str | None, str | None]:
    """Conditions, and the id range [low, high) they imply (None: unbounded)."""
    c = requests.c
    conditions: list[ColumnElement[bool]] = []
    if query.model is not None:
        # As Ollama resolves the name (``llama3.2`` is ``llama3.2:latest``), or as sent: a
        # name Ollama refused is stored as the client wrote it.
        conditions.append(c.model.in_(sorted({query.model, normalise_model(query.model)})))
    for name in _EQUALS:
        value = getattr(query, name)
        if value is not None:
            conditions.append(c[name] == value)
    if query.cold_start is not None:
        cold = c.cold_cause.is_not(None)
        conditions.append(cold if query.cold_start else ~cold)
    low = high = None
    if query.start_time is not None:
        conditions.append(c.timestamp >= query.start_time)
        # timestamp ≥ start ⇒ its millisecond ≥ start's (both truncate the same way).
        low = ulid_floor(int(query.start_time * 1000))
    if query.end_time is not None:
        conditions.append(c.timestamp < query.end_time)
        high = ulid_floor(int(query.end_time * 1000) + 1)
    if query.cursor:
        high = query.cursor if high is None else min(high, query.cursor)
    if query.min_duration is not None:
        conditions.append(c.duration_s >= query.min_duration)
    if query.min_queue_wait is not None:
        conditions.append(c.queue_wait_s >= query.min_queue_wait)
    return conditions, low, high


def _between(low: str | None, high: str | None) -> list[ColumnElement[bool]]:
    out = []
    if low is not None:
        out.append(requests.c.id >= low)
    if high is not None:
        out.append(requests.c.id < high)
    return out


def _page(connection: Connection, conditions: list[Any], want: int) -> list[dict[str, Any]]:
    statement = (
        select(*SUMMARY_COLUMNS)
        .where(and_(True, *conditions))
        .order_by(requests.c.id.desc())
        .limit(want)
    )
    return [dict(row._mapping) for row in connection.execute(statement)]


class _Matcher(Protocol):
    """How one store finds the records whose text holds every word."""

    def few(self, connection: Connection) -> bool:
        """Whether at most ``RARE_DOCS`` records match (counting stops past that)."""

    def all(self) -> ColumnElement[bool]:
        """Every match, looked up through the full-text index."""

    def within(self, connection: Connection, start: str, high: str) -> ColumnElement[bool]:
        """The matches among the records with ``start <= id < high``."""


def _matcher(connection: Connection, words: str) -> _Matcher | None:
    if connection.dialect.name == "sqlite":
        terms = _WORD.findall(words)
        # FTS5 has its own query language; quoting each word makes any input a plain AND
        # of words (no syntax errors, no operators smuggled in).
        return _Fts5(" ".join('"' + term + '"' for term in terms)) if terms else None
    return _TsQuery(words)


@dataclass(frozen=True, slots=True)
class _Fts5:
    """SQLite: FTS5 ``requests_fts``, whose rowid is the row's rowid."""

    fts: str

    def few(self, connection: Connection) -> bool:
        # FTS5 walks its doclists in rowid order, so counting stops after RARE_DOCS + 1.
        probe = text(
            "SELECT count(*) FROM (SELECT rowid FROM requests_fts "
            "WHERE requests_fts MATCH :fts LIMIT :cap)"
        )
        found = connection.execute(probe, {"fts": self.fts, "cap": RARE_DOCS + 1}).scalar_one()
        return int(found) <= RARE_DOCS

    def all(self) -> ColumnElement[bool]:
        return _ROWID.in_(_FTS_ROWIDS.bindparams(fts=self.fts))

    def within(self, connection: Connection, start: str, high: str) -> ColumnElement[bool]:
        bounds = select(func.min(_ROWID), func.max(_ROWID)).where(
            requests.c.id >= start, requests.c.id < high
        )
        rmin, rmax = cast("tuple[int | None, int | None]", connection.execute(bounds).one())
        if rmin is None:
            return false()
        return _ROWID.in_(_FTS_RANGE.bindparams(fts=self.fts, rmin=rmin, rmax=rmax))


@dataclass(frozen=True, slots=True)
class _TsQuery:
    """PostgreSQL: the generated ``search_vector`` column and its GIN index.

    Left to itself the planner guesses from its statistics between the GIN index and a
    newest-first walk of the primary key, and a wrong guess for a word it thinks common but
    is not walks the whole table (seconds at a million records). Both paths are forced
    instead: the matches of a rare word come from the index alone (a materialised
    subquery the planner cannot fold into the walk), a common word is searched within one
    id range at a time."""

    words: str

    def _matches(self) -> ColumnElement[bool]:
        return text("search_vector @@ plainto_tsquery('simple', :words)").bindparams(  # type: ignore[return-value]
            words=self.words
        )

    def few(self, connection: Connection) -> bool:
        probe = select(requests.c.id).where(self._matches()).limit(RARE_DOCS + 1).subquery()
        found = connection.execute(select(func.count()).select_from(probe)).scalar_one()
        return int(found) <= RARE_DOCS

    def all(self) -> ColumnElement[bool]:
        ids = (
            select(requests.c.id).where(self._matches()).cte("matches").prefix_with("MATERIALIZED")
        )
        return requests.c.id.in_(select(ids.c.id))

    def within(self, connection: Connection, start: str, high: str) -> ColumnElement[bool]:
        return self._matches()


def _text(
    connection: Connection,
    matcher: _Matcher,
    conditions: list[ColumnElement[bool]],
    low: str | None,
    high: str | None,
    want: int,
) -> list[dict[str, Any]]:
    """A word in few records is looked up and the matches sorted; a common word is
    searched slice by slice backwards in time until the page is full."""
    if matcher.few(connection):
        return _page(connection, [*conditions, *_between(low, high), matcher.all()], want)
    if high is None:
        newest = connection.execute(select(func.max(requests.c.id))).scalar()
        if newest is None:
            return []
        high = ulid_floor(ulid_ms(newest) + 1)
    if low is None:
        low = connection.execute(select(func.min(requests.c.id))).scalar() or high
    rows: list[dict[str, Any]] = []
    span = FIRST_SLICE_MS
    while len(rows) < want and high > low:
        start = max(ulid_floor(ulid_ms(high) - span), low)
        slice_ = [*conditions, *_between(start, high), matcher.within(connection, start, high)]
        rows += _page(connection, slice_, want - len(rows))
        high = start
        span *= 4
    return rows

"""``/analytics/*``: search, read and summarise the stored records (needs a SQL store).

No ``from __future__ import annotations`` here: FastAPI reads the route signatures at
definition time, and they name dependencies local to ``create_analytics_router``.
"""

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, create_model

from app.analytics.sql import SearchQuery, SqlStore
from app.api.guards import bearer_guard
from app.ollama.residency import ColdCause, Placement
from app.record import STORED, Kind, Stored

_ULID = r"^[0-9A-HJKMNP-TV-Z]{26}$"


_PYTHON_TYPES: dict[Kind, type] = {
    "label": str,
    "text": str,
    "flag": bool,
    "integer": int,
    "bytes": int,
    "seconds": float,
    "rate": float,
    "ratio": float,
}


def _model_fields(fields: Iterable[Stored]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in fields:
        type_ = _PYTHON_TYPES[field.kind]
        out[field.name] = (type_ | None if field.nullable else type_, ...)
        if field.name == "timestamp":
            # Served as ISO-8601 (UTC) to read, with the Unix seconds after it to compute.
            out["timestamp"] = (str, ...)
            out["unix_time"] = (float, ...)
    return out


def response_models(fields: Sequence[Stored]) -> tuple[type[BaseModel], type[BaseModel]]:
    """The models of a search result's records and of one full record: the summary fields
    of ``fields``, and then the rest."""
    summary = create_model("RecordSummary", **_model_fields(f for f in fields if f.summary))
    full = _model_fields(f for f in fields if not f.summary)
    return summary, create_model("Record", __base__=summary, **full)


RecordSummary, Record = response_models(STORED)


class SearchResult(BaseModel):
    records: list[RecordSummary]  # type: ignore[valid-type]  # made by response_models
    next_cursor: str | None


def _present(row: dict[str, Any]) -> dict[str, Any]:
    stamp = row["timestamp"]
    return {
        **row,
        "unix_time": stamp,
        "timestamp": datetime.fromtimestamp(stamp, UTC).isoformat().replace("+00:00", "Z"),
    }


def _reject_nul(values: dict[str, str | None]) -> None:
    """No stored value holds NUL, and PostgreSQL refuses it in a parameter: a clear 422."""
    for name, value in values.items():
        if value is not None and "\x00" in value:
            raise HTTPException(
                422,
                detail=[
                    {
                        "loc": ["query", name],
                        "msg": "must not contain NUL characters",
                        "type": "value_error",
                    }
                ],
            )


def parse_time(value: str | None, name: str) -> float | None:
    """Unix seconds or ISO-8601 (a missing zone means UTC); a clear 422 otherwise."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(
            422,
            detail=[
                {
                    "loc": ["query", name],
                    "msg": "must be Unix seconds or an ISO-8601 date-time",
                    "type": "value_error",
                    "input": value,
                }
            ],
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def create_analytics_router(
    *, store: SqlStore | None, token: str | None, backends: tuple[str, ...]
) -> APIRouter:
    # The token guards every stored prompt; compared in constant time.
    authorised = bearer_guard(token, "ANALYTICS_TOKEN", "analytics")

    def sql_store() -> SqlStore:
        if store is None:
            raise HTTPException(
                501,
                detail=(
                    "searching analytics needs a SQL store: set ANALYTICS_BACKEND to include "
                    "sqlite (the default) or postgresql; configured now: "
                    + (", ".join(backends) or "none")
                ),
            )
        store.migrate()
        return store

    router = APIRouter(prefix="/analytics", tags=["analytics"], dependencies=[Depends(authorised)])
    Store = Annotated[SqlStore, Depends(sql_store)]

    @router.get("/search", summary="Search stored requests, newest first")
    def search(
        db: Store,
        model: str | None = None,
        endpoint: str | None = Query(None, max_length=200),
        category: str | None = Query(None, max_length=64),
        status: int | None = Query(None, ge=100, le=599),
        key: str | None = Query(
            None, max_length=64, description="Name of the API key the requests presented."
        ),
        client_app: str | None = Query(
            None, max_length=64, description="The application that sent the requests."
        ),
        truncation: Literal["prompt", "output"] | None = Query(
            None, description="What was cut: the prompt, or the output at its limit."
        ),
        cold_start: bool | None = Query(
            None, description="true: requests that waited for their model to load; false: not."
        ),
        # B008: ruff cannot see that these imported Literal aliases are immutable.
        cold_cause: ColdCause | None = Query(  # noqa: B008
            None, description="Why the model had to be loaded for the request."
        ),
        placement: Placement | None = Query(  # noqa: B008
            None, description="Where the model ran: gpu, mixed (partly on the CPU) or cpu."
        ),
        node: str | None = Query(
            None, max_length=64, description="The machine that served them (PROXY_NODE)."
        ),
        prompt_search: str | None = Query(
            None, max_length=1000, description="Words that must all occur in prompt or response."
        ),
        start_time: str | None = Query(None, description="Unix seconds or ISO-8601."),
        end_time: str | None = Query(None, description="Unix seconds or ISO-8601."),
        min_duration: float | None = Query(None, ge=0, description="Seconds."),
        min_queue_wait: float | None = Query(
            None, ge=0, description="Seconds Ollama held the request waiting (for a slot)."
        ),
        limit: int = Query(50, ge=1, le=1000),
        cursor: str | None = Query(None, pattern=_ULID, description="next_cursor of a page."),
    ) -> SearchResult:
        texts = {
            "model": model,
            "endpoint": endpoint,
            "category": category,
            "key": key,
            "client_app": client_app,
            "node": node,
        }
        _reject_nul({**texts, "prompt_search": prompt_search})
        query = SearchQuery(
            model=model or None,
            endpoint=endpoint,
            category=category,
            status=status,
            api_key=key,
            client_app=client_app,
            truncation=truncation,
            cold_start=cold_start,
            cold_cause=cold_cause,
            placement=placement,
            node=node,
            prompt_search=prompt_search,
            start_time=parse_time(start_time, "start_time"),
            end_time=parse_time(end_time, "end_time"),
            min_duration=min_duration,
            min_queue_wait=min_queue_wait,
            limit=limit,
            cursor=cursor,
        )
        rows, next_cursor = db.search(query)
        return SearchResult(
            records=[RecordSummary(**_present(row)) for row in rows], next_cursor=next_cursor
        )

    @router.get(
        "/records/{record_id}",
        summary="One full record",
        responses={404: {"description": "No record has this id."}},
    )
    def record(
        db: Store, record_id: Annotated[str, Path(pattern=_ULID, description="A record's id.")]
    ) -> Record:  # type: ignore[valid-type]
        row = db.get(record_id)
        if row is None:
            raise HTTPException(404, detail=f"no record {record_id}")
        return Record(**_present(row))

    @router.get(
        "/stats",
        summary="Totals, rates, percentiles and breakdowns",
        description=(
            "Counts, error counts, token sums and averages are exact. The p50/p95 of "
            "latency and time to first token are approximate: read from histograms with "
            "5 % wide log-spaced buckets, each within ±2.5 % of the exact nearest-rank "
            "value (the same bucket). Whole hours come from hourly rollups, so a week "
            "costs about what a day does."
        ),
    )
    def stats(db: Store, hours: float = Query(24, gt=0, le=24 * 366)) -> dict[str, Any]:
        since = datetime.now(UTC).timestamp() - hours * 3600
        return {"hours": hours, "since": since, **db.stats(since)}

    return router

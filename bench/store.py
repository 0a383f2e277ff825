"""Scenario 4, analytics: calls ``bench.analytics.run`` (another engineer's module) if it
exists. It is given the admin URL of the local PostgreSQL (trust auth) when one answers; it
creates its own throw-away database there and drops it afterwards.

The module answers ``run(*, records, postgres_url, smoke) -> dict`` with writer rates,
search and stats latencies and its own targets; until it exists the section is "pending".
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import traceback
from typing import Any

from bench.plan import Plan

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def postgres() -> tuple[str | None, str | None]:
    """(the admin URL, None) if PostgreSQL answers there, else (None, why not)."""
    try:
        import psycopg
    except ImportError as exc:
        return None, f"psycopg missing: {exc}"
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=5) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        return None, f"no PostgreSQL at {ADMIN_URL}: {str(exc).strip()}"
    return ADMIN_URL, None


def run(plan: Plan) -> dict[str, Any]:
    if importlib.util.find_spec("bench.analytics") is None:
        return {"status": "pending", "reason": "bench/analytics.py does not exist yet"}
    module = importlib.import_module("bench.analytics")
    url, why_not = postgres()
    try:
        found = module.run(records=plan.analytics_records, postgres_url=url, smoke=plan.smoke)
    except Exception as exc:  # another module's failure must not lose the other results
        return {"status": "error", "error": repr(exc), "traceback": traceback.format_exc()}
    result: dict[str, Any] = {"status": "measured", "records": plan.analytics_records}
    result["postgres"] = why_not or f"admin URL {ADMIN_URL}"
    result["result"] = found
    return result

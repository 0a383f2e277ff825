"""``/analytics/stats`` from the hourly rollups plus the raw rows of one partial hour.

A window ``[since, now]`` is split at the first whole hour: hours from there on are read
from the rollups (the current hour's rollup is as fresh as its rows: they are written
together), the rows before it — at most one hour's — are aggregated on the fly by the same
code that builds the rollups. Counts, error counts and token sums are therefore exact,
averages too (to floating-point rounding); p50/p95 come from the histograms and are within
one 5 % bucket of the exact value (see ``app.analytics.rollups``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, func, select

from app.analytics import rollups
from app.analytics.rollups import SUMS, Aggregate
from app.analytics.tables import hourly, hourly_apps, hourly_clients, hourly_latency, hourly_nodes

Sums = list[Any]


def compute(connection: Connection, since: float) -> dict[str, Any]:
    boundary = rollups.next_hour(since)
    edge = rollups.rows_between(connection, since, boundary) if boundary > since else Aggregate()
    by_model = _sums(connection, hourly.c.model, boundary)
    by_category = _sums(connection, hourly.c.category, boundary)
    by_hour = _sums(connection, hourly.c.hour, boundary)
    for (hour, model, category, _endpoint), sums in edge.groups.items():
        for table, key in ((by_model, model), (by_category, category), (by_hour, hour)):
            _add(table.setdefault(key, [0] * len(SUMS)), sums)
    total: Sums = [0] * len(SUMS)
    for sums in by_model.values():
        _add(total, sums)
    count, errors = int(total[0]), int(total[1])
    per_model = _histograms(connection, boundary, edge)
    histograms: dict[str, dict[int, int]] = {metric: {} for metric in rollups.METRICS}
    for (_model, metric), histogram in per_model.items():
        into = histograms[metric]
        for index, n in histogram.items():
            into[index] = into.get(index, 0) + n
    return {
        "total_requests": count,
        "errors": errors,
        "cancelled": int(total[2]),
        "success_rate": (count - errors) / count if count else None,
        "error_rate": errors / count if count else None,
        "latency": {
            "avg_s": _ratio(total[3], count),
            "p50_s": _percentile(histograms["duration"], 0.5),
            "p95_s": _percentile(histograms["duration"], 0.95),
        },
        "ttft": {
            "p50_s": _percentile(histograms["ttft"], 0.5),
            "p95_s": _percentile(histograms["ttft"], 0.95),
        },
        "tokens": {
            "prompt_total": int(total[4]),
            "completion_total": int(total[6]),
            "prompt_avg": _ratio(total[4], total[5]),
            "completion_avg": _ratio(total[6], total[7]),
        },
        "tokens_per_second_avg": _ratio(total[8], total[9]),
        "truncations": int(total[10]),
        "cold_starts": int(total[11]),
        "queue_wait": {
            "p50_s": _percentile(histograms["queue"], 0.5),
            "p95_s": _percentile(histograms["queue"], 0.95),
        },
        "stream_max_gap": {
            "p50_s": _percentile(histograms["gap"], 0.5),
            "p95_s": _percentile(histograms["gap"], 0.95),
        },
        "client_apps": _client_apps(connection, boundary, edge),
        "nodes": _nodes(connection, boundary, edge),
        "models": [
            {
                **entry,
                "queue_wait_p95_s": _percentile(per_model.get((entry["name"], "queue"), {}), 0.95),
            }
            for entry in _breakdown(by_model.items())
        ],
        "categories": _breakdown(by_category.items()),
        "top_clients": _top_clients(connection, boundary, edge),
        "hourly": [
            {
                "hour": int(hour),
                "requests": int(sums[0]),
                "errors": int(sums[1]),
                "prompt_tokens": int(sums[4]),
                "completion_tokens": int(sums[6]),
                "avg_duration_s": _ratio(sums[3], sums[0]),
            }
            for hour, sums in sorted(by_hour.items())
        ],
    }


def _sums(connection: Connection, key: Any, boundary: int) -> dict[Any, Sums]:
    statement = (
        select(key, *(func.sum(hourly.c[name]) for name in SUMS))
        .where(hourly.c.hour >= boundary)
        .group_by(key)
    )
    return {row[0]: list(row[1:]) for row in connection.execute(statement)}


def _add(into: Sums, sums: Sums) -> None:
    for i, value in enumerate(sums):
        into[i] += value


def _ratio(part: Any, whole: Any) -> float | None:
    return float(part) / float(whole) if whole else None


def _breakdown(groups: Iterable[tuple[str, Sums]]) -> list[dict[str, Any]]:
    ordered = sorted(groups, key=lambda item: (-int(item[1][0]), item[0]))[:100]
    return [
        {
            "name": name,
            "requests": int(sums[0]),
            "errors": int(sums[1]),
            "avg_duration_s": _ratio(sums[3], sums[0]),
            "prompt_tokens": int(sums[4]),
            "completion_tokens": int(sums[6]),
            "tokens_per_second_avg": _ratio(sums[8], sums[9]),
            "truncations": int(sums[10]),
            "cold_starts": int(sums[11]),
            "cold_start_share": _ratio(sums[11], sums[0]),
            # Of the requests whose placement was known: the share partly or all on the CPU.
            "placed": int(sums[12]),
            "spilled_share": _ratio(sums[13], sums[12]),
        }
        for name, sums in ordered
    ]


def _top_clients(connection: Connection, boundary: int, edge: Aggregate) -> list[dict[str, Any]]:
    c = hourly_clients.c
    counts: dict[str, int] = {
        client: int(n)
        for client, n in connection.execute(
            select(c.client, func.sum(c.requests)).where(c.hour >= boundary).group_by(c.client)
        )
    }
    for (_hour, client), n in edge.clients.items():
        counts[client] = counts.get(client, 0) + n
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:10]
    return [{"client": client, "requests": n} for client, n in top]


def _client_apps(connection: Connection, boundary: int, edge: Aggregate) -> list[dict[str, Any]]:
    c = hourly_apps.c
    sums: dict[str, list[int]] = {
        app: [int(n), int(p), int(t)]
        for app, n, p, t in connection.execute(
            select(
                c.client_app,
                func.sum(c.requests),
                func.sum(c.prompt_tokens),
                func.sum(c.completion_tokens),
            )
            .where(c.hour >= boundary)
            .group_by(c.client_app)
        )
    }
    for (_hour, app), counts in edge.apps.items():
        into = sums.setdefault(app, [0, 0, 0])
        for i, n in enumerate(counts):
            into[i] += n
    ordered = sorted(sums.items(), key=lambda item: (-item[1][0], item[0]))
    return [
        {"name": app, "requests": n, "prompt_tokens": p, "completion_tokens": t}
        for app, (n, p, t) in ordered
    ]


def _nodes(connection: Connection, boundary: int, edge: Aggregate) -> list[dict[str, Any]]:
    c = hourly_nodes.c
    columns = (c.requests, c.errors, c.duration_sum, c.prompt_tokens, c.completion_tokens)
    sums: dict[str, list[Any]] = {
        node: list(values)
        for node, *values in connection.execute(
            select(c.node, *(func.sum(column) for column in columns))
            .where(c.hour >= boundary)
            .group_by(c.node)
        )
    }
    for (_hour, node), counts in edge.nodes.items():
        into = sums.setdefault(node, [0, 0, 0.0, 0, 0])
        for i, n in enumerate(counts):
            into[i] += n
    ordered = sorted(sums.items(), key=lambda item: (-int(item[1][0]), item[0]))
    return [
        {
            "name": node,
            "requests": int(n),
            "errors": int(e),
            "avg_duration_s": _ratio(d, n),
            "prompt_tokens": int(p),
            "completion_tokens": int(t),
        }
        for node, (n, e, d, p, t) in ordered
    ]


def _histograms(
    connection: Connection, boundary: int, edge: Aggregate
) -> dict[tuple[str, str], dict[int, int]]:
    """Per (model, metric): bucket → count."""
    c = hourly_latency.c
    histograms: dict[tuple[str, str], dict[int, int]] = {}
    statement = (
        select(c.model, c.metric, c.bucket, func.sum(c.count))
        .where(c.hour >= boundary)
        .group_by(c.model, c.metric, c.bucket)
    )
    for model, metric, index, n in connection.execute(statement):
        histograms.setdefault((model, metric), {})[index] = int(n)
    for (_hour, model, metric, index), n in edge.latency.items():
        histogram = histograms.setdefault((model, metric), {})
        histogram[index] = histogram.get(index, 0) + n
    return histograms


def _percentile(histogram: dict[int, int], fraction: float) -> float | None:
    """Nearest rank, to the bucket: the bucket holding the ceil(fraction·n)-th value."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(math.ceil(fraction * total), 1)
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return rollups.bucket_value(index)
    raise AssertionError("unreachable: the ranks add up to the total")

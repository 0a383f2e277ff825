"""Analytics: a durable record of every request, written off the request path.

    ExchangeRecord ──▶ AnalyticsWriter.submit (never waits; a full queue drops and counts)
                          │ one bounded queue per backend
                          ▼
                       batch ──▶ backend.write(rows) in a worker thread, retried with backoff
                                  sqlite / postgresql (SQLAlchemy + Alembic), jsonl, loki

- ``rows``: a record as a flat, JSON-ready row (texts capped, prompts optional).
- ``tables``: the SQLAlchemy table every SQL store shares; ``migrations/`` evolves it.
- ``sql``: the SQLite/PostgreSQL store: batch insert, full-text search, stats, retention.
- ``jsonl``, ``loki``: the other backends.
- ``writer``: queues, batching, retries, drain on shutdown, the analytics metrics.
"""

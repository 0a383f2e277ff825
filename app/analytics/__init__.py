"""Analytics: a durable record of every request, written off the request path.

    ExchangeRecord ──▶ AnalyticsWriter.finished (never waits; a full queue drops and counts)
                          │ one bounded queue per backend
                          ▼
                       batch ──▶ backend.write(rows) in a worker thread, retried with backoff
                                  sqlite / postgresql (SQLAlchemy + Alembic), jsonl, loki

- ``rows``: a record as a flat, JSON-ready row (texts capped, prompts optional).
- ``tables``: the SQLAlchemy tables every SQL store shares; ``migrations/`` evolves them.
- ``sql``: the SQLite/PostgreSQL store: batch insert, retention; ``search``, ``stats`` and
  ``rollups`` its read side and its hourly sums; ``migrate`` runs Alembic.
- ``jsonl``, ``loki``: the other backends.
- ``writer``: queues, batching, retries, drain on shutdown, the analytics metrics.

Owns storage and everything read back from it. Receives finished records only.

Must not import: ``app.proxy``, ``app.exchange``, ``app.api``, ``app.middleware``,
``app.main``.
"""

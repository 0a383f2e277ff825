"""The proxy's own HTTP API (FastAPI): ``/metrics``, ``/test``, ``/analytics/*``, ``/ui``.

- ``routes``: the FastAPI app with ``/metrics``, ``/test`` and the docs.
- ``analytics``: ``/analytics/search``, ``/records/{id}``, ``/stats`` over the SQL store.
- ``ui``: the analytics page (``app/ui/``), served with a strict CSP.
- ``guards``: the bearer tokens of ``/metrics`` and ``/analytics`` (constant time).

Ollama uses none of these paths; which requests reach this app is derived from its routes
(``app.middleware.own_paths``), everything else is forwarded by ``app.proxy``.

Must not import: ``app.proxy``, ``app.exchange``, ``app.middleware``, ``app.main``.
"""

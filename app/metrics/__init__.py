"""Prometheus instruments: in memory, updated from the request path, read by ``/metrics``.

- ``instruments``: every request metric (and the OpenTelemetry GenAI ones), fed finished
  records as a sink; the one owner of ``ollama_upstream_up`` (``upstream_answered``).
- ``poller``: the models Ollama has loaded, from ``/api/ps`` in the background, served by a
  collector that reads only its cache, and handed to ``app.ollama.residency``.
- ``labels``: bounded label values (the first N models, the rest ``other``).

Owns the Prometheus side only; every metric takes the ``registry`` it is given.

Must not import: ``app.proxy``, ``app.exchange``, ``app.analytics``, ``app.api``,
``app.middleware``, ``app.main``.
"""

"""Ollama wire knowledge: what the bytes of each API mean.

- ``endpoints``: which route a path is, which API it speaks (``api_of``: its error shape),
  how its answer is read and what operation it performs.
- ``models``: model-name normalisation (``llama3.2`` is ``llama3.2:latest``).
- ``requests``: what a request body says (model, streaming, prompt) and the usage injection.
- ``residency``: what Ollama holds in memory, from ``/api/ps`` answers and the requests going
  by: loads, unloads and reloads, cold starts and their causes, placement, loaded context.
- ``streams``: incremental readers of NDJSON, SSE and JSON answers that pull out tokens and
  Ollama's own timings while the bytes pass through untouched.

Owns every fact about Ollama's (and its OpenAI- and Anthropic-compatible) formats and about
its scheduler as seen from outside; pure functions, readers and state, no I/O. Everything
above it asks here instead of knowing itself.

Must not import: ``app.proxy``, ``app.record``, ``app.exchange``, ``app.metrics``,
``app.analytics``, ``app.api``, ``app.middleware``, ``app.categories``, ``app.main``.
"""

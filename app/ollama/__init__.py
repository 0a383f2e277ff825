"""Ollama wire knowledge: what the bytes of each API mean.

- ``endpoints``: which route a path is, which API shape it speaks, what operation it performs.
- ``models``: model-name normalisation (``llama3.2`` is ``llama3.2:latest``).
- ``requests``: what a request body says (model, streaming, prompt) and the usage injection.
- ``streams``: incremental readers of NDJSON, SSE and JSON answers that pull out tokens and
  Ollama's own timings while the bytes pass through untouched.
"""

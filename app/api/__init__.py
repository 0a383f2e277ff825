"""The proxy's own HTTP API (FastAPI): ``/metrics``, ``/test`` and, later, ``/analytics``.

These paths are ones Ollama does not use; everything else is forwarded by ``app.proxy``.
"""

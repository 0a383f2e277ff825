"""Policies that stand between the client and the forwarder, one per module, each a small
ASGI wrapper (starlette's ``middleware/`` is the model), in the order a request meets them:

- ``api_keys``: with ``PROXY_API_KEYS`` set, a proxied request (and ``/test``) must present
  a key; without one the answer is 401 and nothing goes upstream.
- ``own_paths``: the paths the proxy answers itself, derived from the FastAPI app's routes,
  go to that app; every other request goes to the forwarder untouched.
- ``dot_segments``: under an upstream base path, a target with ``.`` or ``..`` segments is
  refused with 400 (it could leave Ollama's API on a gateway that normalises paths).

Each knows only the ASGI types, ``app.auth`` and ``app.proxy.errors`` (for the error
shapes); what it wraps is handed to it by the app factory (``app.main``).

Must not import: ``app.exchange``, ``app.record``, ``app.metrics``, ``app.analytics``,
``app.api``, ``app.main``.
"""

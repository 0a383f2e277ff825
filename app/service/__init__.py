"""Ollama's lifecycle for the wrapper: find the binary, run and supervise ``ollama serve``
on the upstream port, explain port conflicts in plain words.

- ``binary``: where the ``ollama`` executable is.
- ``supervisor``: runs it on the upstream address and restarts it when it exits.
- ``ports``: who holds a port, in words a user can act on.
- ``jobobject``: (Windows) Ollama and its runners die with the service.

Must not import: ``app.proxy``, ``app.exchange``, ``app.metrics``, ``app.analytics``,
``app.api``, ``app.middleware``, ``app.main``.
"""

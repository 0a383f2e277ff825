"""The Windows service: install it, control it, and be it.

``manage`` (the ``service`` command) builds ``sc`` command lines (``sc``) and handles an
Ollama that already starts on its own (``ollama_conflicts``), reaching the machine only
through the ``system.Windows`` seam (real: ``win32``). ``host`` is what the service manager
starts (``-service``); it runs ``runner.ServiceRunner``, which is ``serve`` with state
reports.

Must not import: ``app.proxy``, ``app.exchange``, ``app.metrics``, ``app.analytics``,
``app.api``, ``app.middleware``.
"""

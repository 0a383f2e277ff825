"""``python -m bench.soak``: load and soak — many concurrent streaming clients for minutes.

Starts the generator upstream (``bench.upstream``) and our proxy as ``bench.procs.our_proxy``
does (metrics on, SQLite analytics in a temporary ``ANALYTICS_DIR``, ``PS_POLL_INTERVAL=0``),
then keeps ``--streams`` clients busy for ``--minutes``. Each client loops on one keep-alive
connection: a streamed ``/api/chat``, ``/api/generate`` or ``/v1/chat/completions`` of 100–400
tokens paced 10–20 ms apart (``x_bench_interval_ms``), now and then a non-streamed native
request, and now and then a stream it drops on purpose halfway (FIN or RST; client-caused).
Every answer is classified (``classify``); every ``--sample-seconds`` the proxy's RSS, open
fds, sockets, asyncio tasks and analytics gauges are sampled. After the clients stop: the
proxy must settle back to its baseline, its idle upstream pool must be reused (a probe of as
many concurrent streams as it holds opens no new connection), and the SQLite file must hold
one record per request sent. Verdicts go to a table, ``--output`` (markdown) and
``--json-output``.

The asyncio task count needs a hook the product does not have, so the proxy runs under a
launcher (``LAUNCHER``) that wraps ``uvicorn.Server.serve`` with a task writing
``len(asyncio.all_tasks())`` to a file every 0.5 s, then calls ``app.cli.main`` with the same
arguments as the ``ollama-metrics`` script: the proxy's code is untouched.

The flow, module by module:

- ``clients``: the request mix (``Spec``), the keep-alive client that parses each answer,
  ``classify`` of its ``Outcome``, the ``Tally``; ``client_loop`` is one client.
- ``watch``: the proxy under test, started under ``LAUNCHER``, and how to read it: sockets,
  task count, ``/metrics``, ``/proc``; ``sample`` is one row of the series.
- ``run``: warm-up, baseline, the load with its samples, settling, the pool probe and the
  record count, returned as one result dict.
- ``verdicts``: the trends over the series and the checks (``judge``, ``passes``).
- ``report``: the markdown and JSON files and the console summary.
- ``__main__``: options and machine facts; starts the generator and the proxy, then hands the
  result from ``run`` to ``verdicts`` and ``report``.
"""

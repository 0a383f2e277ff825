"""Forwarding: every request that is not the proxy's own goes to Ollama, byte for byte.

The flow of one request::

    client --ASGI--> relay.Forwarder --HTTP/1.1--> Upstream (pool) --> Ollama
           <-chunks- (each upstream chunk is sent on at once, nothing is held whole)

- ``headers``: what is forwarded each way (hop-by-hop headers dropped, ``Host`` rewritten),
  and the request head in wire form.
- ``upstream``: where Ollama lives and the keep-alive pool of connections to it.
- ``connection``: one connection to Ollama, an asyncio protocol with httptools' response
  parser: the request goes out as the client sent it, the answer comes back in the pieces
  it arrives in, never decoded or decompressed.
- ``errors``: upstream failures translated once into Ollama-, OpenAI- or Anthropic-shaped
  errors (which shape a path gets is ``app.ollama.endpoints.api_of``'s to say).
- ``relay``: the ASGI forwarder itself: streams the request body up and the response down,
  and cancels the upstream request when the client goes away.

Owns the bytes on the wire and the connections to Ollama. It knows nothing of records,
metrics or storage: it reports what happened to a ``relay.Tap`` that the app wiring
supplies (``app.exchange.ExchangeTap``).

Must not import: ``app.record``, ``app.exchange``, ``app.metrics``, ``app.analytics``,
``app.api``, ``app.middleware``, ``app.categories``, ``app.main``.
"""

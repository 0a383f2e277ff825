"""Forwarding: every request that is not the proxy's own goes to Ollama, byte for byte.

The flow of one request::

    client --ASGI--> relay.Forwarder --aiohttp--> Ollama
           <-chunks- (each upstream chunk is sent on at once, nothing is held whole)

- ``headers``: what is forwarded each way (hop-by-hop headers dropped, ``Host`` rewritten).
- ``upstream``: the one pooled aiohttp session to Ollama, opened and closed in the lifespan.
- ``errors``: upstream failures translated once into Ollama-, OpenAI- or Anthropic-shaped errors.
- ``relay``: the ASGI forwarder itself: streams the request body up and the response down,
  and cancels the upstream request when the client goes away.

This package knows nothing of metrics or storage: it reports what happened to an
``Observer`` that the app wiring supplies.
"""

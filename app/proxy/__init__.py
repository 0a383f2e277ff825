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
- ``errors``: upstream failures translated once into Ollama-, OpenAI- or Anthropic-shaped errors.
- ``relay``: the ASGI forwarder itself: streams the request body up and the response down,
  and cancels the upstream request when the client goes away.

This package knows nothing of metrics or storage: it reports what happened to an
``Observer`` that the app wiring supplies.
"""

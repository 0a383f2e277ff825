"""The clients: the request mix, a keep-alive protocol client, what each answer was.

``choose`` picks a ``Spec`` as the mix has it; ``Client`` sends it on one keep-alive
connection and fills an ``Outcome``; ``classify`` names it and the ``Tally`` counts it.
``one`` is one request, ``client_loop`` one client until the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import httptools

from bench import client

NOT_STREAMED_SHARE = 0.10  # of requests
CUT_SHARE = 0.10  # of streams, dropped by the client on purpose
TOKENS = (100, 400)
INTERVAL_MS = (10, 20)
THINK_S = 0.2  # a client's pause between requests, at most
STALL_S = 60.0  # an answer not complete by then is a proxy stall

PROXY_ERRORS = (
    "refused",
    "reset",
    "stalled",
    "status",
    "truncated",
    "extra",
    "missing_final",
    "bad_body",
)
CLASSES = ("ok", "client_disconnect", "upstream", *PROXY_ERRORS)


@dataclass(frozen=True)
class Spec:
    """One request a client sends, and what a correct answer looks like."""

    path: str
    body: bytes
    streamed: bool
    expected: int  # NDJSON lines / SSE events a complete answer has (0: not streamed)
    sse: bool = False
    cut_after: int | None = None  # the client drops the connection after this many events
    cut_abort: bool = False  # ... with an RST rather than a FIN

    @property
    def kind(self) -> str:
        return self.path + ("" if self.streamed else " (not streamed)")


@dataclass
class Outcome:
    """What came back; ``classify`` judges it."""

    streamed: bool
    expected: int
    status: int = 0
    events: int = 0
    complete: bool = False
    final_ok: bool = False
    body_ok: bool = False
    error: str | None = None
    refused: bool = False
    stalled: bool = False
    cut: bool = False
    upstream_ok: bool = True


def classify(outcome: Outcome) -> str:
    """``ok``, ``client_disconnect`` (ours, on purpose), ``upstream`` (the generator had died,
    not the proxy's fault) or one of ``PROXY_ERRORS``."""
    if outcome.cut:
        return "client_disconnect"
    if not outcome.upstream_ok:
        return "upstream"
    if outcome.refused:
        return "refused"
    if outcome.stalled:
        return "stalled"
    if not outcome.complete:
        return "reset"  # the proxy closed or reset the connection before the answer ended
    if not 200 <= outcome.status < 300:
        return "status"
    if outcome.streamed:
        if outcome.events < outcome.expected:
            return "truncated"
        if outcome.events > outcome.expected:
            return "extra"  # e.g. the usage chunk the proxy asked for on the client's behalf
        return "ok" if outcome.final_ok else "missing_final"
    return "ok" if outcome.body_ok else "bad_body"


def choose(rng: random.Random) -> Spec:
    """A request as the mix has it."""
    tokens, interval = rng.randint(*TOKENS), rng.randint(*INTERVAL_MS)
    question = rng.randrange(1000)
    if rng.random() < NOT_STREAMED_SHARE:
        return request(
            rng.choice(("/api/generate", "/api/chat")), False, tokens, interval, question
        )
    path = rng.choice(("/api/chat", "/api/generate", "/v1/chat/completions"))
    spec = request(path, True, tokens, interval, question)
    if rng.random() < CUT_SHARE:
        cut_after = rng.randint(1, spec.expected // 2)
        spec = dataclasses.replace(spec, cut_after=cut_after, cut_abort=rng.random() < 0.5)
    return spec


def request(path: str, streamed: bool, tokens: int, interval: int, question: int) -> Spec:
    """The request for ``path``: ``tokens`` tokens, one every ``interval`` ms."""
    ask = b'"Why is the sky blue? (%d)"' % question
    messages = b'"messages":[{"role":"user","content":%s}]' % ask
    ask = messages if path != "/api/generate" else b'"prompt":' + ask
    if path == "/v1/chat/completions":
        body = b'{"model":"llama3.2",%s,"stream":true,"max_tokens":%d,' % (ask, tokens)
        body += b'"x_bench_interval_ms":%d}' % interval
        # first, tokens - 1, finish_reason, [DONE] (no usage: the client did not ask)
        return Spec(path, body, True, tokens + 2, sse=True)
    body = b'{"model":"llama3.2","options":{"num_predict":%d},' % tokens
    body += b'"x_bench_interval_ms":%d,%s%s}' % (
        interval,
        ask,
        b"" if streamed else b',"stream":false',
    )
    return Spec(path, body, streamed, tokens + 1 if streamed else 0)  # tokens, then done:true


class Client(asyncio.Protocol):
    """One keep-alive connection to the proxy, answers parsed by httptools."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.spec: Spec | None = None
        self.outcome = Outcome(False, 0)
        self.body = bytearray()

    @classmethod
    async def open(cls, port: int) -> Client:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, "127.0.0.1", port)
        return protocol

    @property
    def closed(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._finish(error=f"connection lost: {exc!r}" if exc else "connection closed")

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(error=f"not HTTP: {exc}")
            self.close()

    def on_headers_complete(self) -> None:
        self.outcome.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        spec, outcome = self.spec, self.outcome
        if spec is None:
            return
        if not spec.streamed:
            self.body += body
            return
        tail = bytes(self.body[-2:])
        outcome.events += (tail + body).count(b"\n\n" if spec.sse else b"\n") - tail.count(
            b"\n\n" if spec.sse else b"\n"
        )
        self.body = (self.body + body)[-2048:]
        # Only a good answer is cut: an error answer must be seen whole, and counted.
        cut = spec.cut_after is not None and outcome.events >= spec.cut_after
        if cut and outcome.status == 200 and not outcome.cut:
            outcome.cut = True
            if self.transport is not None:
                self.transport.abort() if spec.cut_abort else self.transport.close()
            self._finish()

    def on_message_complete(self) -> None:
        spec, outcome = self.spec, self.outcome
        outcome.complete = True
        if spec is not None and spec.streamed:
            if spec.sse:
                outcome.final_ok = bytes(self.body).endswith(b"\n\ndata: [DONE]\n\n")
            else:
                last = bytes(self.body).rstrip(b"\n").rsplit(b"\n", 1)[-1]
                outcome.final_ok = b'"done":true' in last and b'"eval_count"' in last
        elif spec is not None:
            with contextlib.suppress(ValueError):
                answer = json.loads(self.body)
                outcome.body_ok = (
                    isinstance(answer, dict)
                    and answer.get("done") is True
                    and "eval_count" in answer
                )
        self._finish()

    def _finish(self, error: str | None = None) -> None:
        if self.waiter is not None and not self.waiter.done():
            if error is not None and not self.outcome.cut:
                self.outcome.error = error
            self.waiter.set_result(None)

    async def request(self, spec: Spec) -> Outcome:
        assert self.transport is not None, "connection closed"
        self.spec, self.outcome, self.body = (
            spec,
            Outcome(spec.streamed, spec.expected),
            bytearray(),
        )
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(client.post(spec.path, spec.body) + spec.body)
        try:
            await asyncio.wait_for(asyncio.shield(self.waiter), STALL_S)
        except TimeoutError:
            self.outcome.stalled = True
            if self.transport is not None:
                self.transport.abort()
        return self.outcome

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class Tally:
    """Outcomes by class and by request kind, and the first proxy errors in full."""

    sent: int = 0
    classes: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    events: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, spec: Spec, outcome: Outcome) -> None:
        verdict = classify(outcome)
        self.classes[verdict] += 1
        self.kinds[spec.kind] += 1
        self.events += outcome.events
        if verdict in PROXY_ERRORS and len(self.examples) < 20:
            self.examples.append({"class": verdict, "path": spec.path, **asdict(outcome)})

    @property
    def proxy_errors(self) -> int:
        return sum(self.classes[name] for name in PROXY_ERRORS)


async def one(
    port: int, spec: Spec, conn: Client | None, tally: Tally, alive: Callable[[], bool]
) -> Client | None:
    """Send ``spec`` (on ``conn`` or a new connection); the connection to go on with."""
    tally.sent += 1
    if conn is None or conn.closed:
        try:
            conn = await Client.open(port)
        except OSError as exc:
            outcome = Outcome(spec.streamed, spec.expected, refused=True, error=repr(exc))
            outcome.upstream_ok = alive()
            tally.add(spec, outcome)
            return None
    outcome = await conn.request(spec)
    outcome.upstream_ok = alive()
    tally.add(spec, outcome)
    if outcome.cut or outcome.error or outcome.stalled:
        conn.close()
        return None
    return conn


async def client_loop(
    port: int, deadline: float, seed: int, tally: Tally, alive: Callable[[], bool]
) -> None:
    rng = random.Random(seed)
    conn: Client | None = None
    try:
        while time.monotonic() < deadline:
            conn = await one(port, choose(rng), conn, tally, alive)
            await asyncio.sleep(rng.uniform(0, THINK_S))
    finally:
        if conn is not None:
            conn.close()

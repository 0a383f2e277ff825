"""The proxy's lifespan: its components started in order and stopped in reverse.

A component is anything with ``async start()`` and ``async stop()`` (the Ollama supervisor,
the upstream pool, the analytics writer, the ``/api/ps`` poller); :class:`Step` makes one of
two callables where there is only one half (the shared HTTP client's ``aclose``, the
store's migration at start). The app factory
lists them in the order they must start: what a component needs starts before it.

- Start: each in order. If one fails, the ones already started are stopped in reverse and
  the failure is reported to the server (``lifespan.startup.failed``), which then exits.
- Stop: each in reverse. One that fails is logged and the others still stop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from app.types import Receive, Send

log = logging.getLogger(__name__)


class Component(Protocol):
    def start(self) -> Awaitable[None]: ...

    def stop(self) -> Awaitable[None]: ...


async def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Step:
    """A component made of two callables (either may be left out)."""

    name: str
    start: Callable[[], Awaitable[None]] = _nothing
    stop: Callable[[], Awaitable[None]] = _nothing


def name_of(component: Component) -> str:
    return component.name if isinstance(component, Step) else type(component).__name__


class Lifespan:
    """Runs the ASGI lifespan protocol over ``components`` (in start order)."""

    def __init__(self, components: Sequence[Component]) -> None:
        self.components = tuple(components)
        self.started: list[Component] = []

    async def startup(self) -> None:
        for component in self.components:
            try:
                await component.start()
            except BaseException:
                await self.shutdown()
                raise
            self.started.append(component)
        log.info("started: %s", ", ".join(name_of(c) for c in self.started))

    async def shutdown(self) -> None:
        if not self.started:
            return
        while self.started:
            component = self.started.pop()
            try:
                await component.stop()
            except Exception:
                log.exception("could not stop %s", name_of(component))
        log.info("stopped")

    async def __call__(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.error("could not start: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

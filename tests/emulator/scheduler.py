"""The part of Ollama's scheduler whose waits show in the metrics.

* Loads (server/sched.go processPending): one at a time; a model that is not in /api/ps
  takes `cold_load_delay` to load, a warm one its own `load_duration_ns`. load_duration
  runs from the request's arrival to the grant, so it holds the wait for another load.
* Slots (llm/llama_server.go `sem.Acquire`): with `num_parallel` N > 0 a model serves N
  requests at once; the others wait, first come first served, without limit. The slot is
  taken after the grant, so its wait is outside load_duration and lands in
  total − load − prompt_eval − eval.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio

from tests.emulator.catalog import Catalog, ModelSpec
from tests.emulator.config import EmulatorConfig

__all__ = ["Scheduler", "sleep_until"]


async def sleep_until(deadline_ns: int) -> None:
    """Sleep until time.monotonic_ns() reaches `deadline_ns` (never wakes early)."""
    # A timer may fire a little early (uvloop's are in milliseconds): sleep what is left.
    while (remaining := deadline_ns - time.monotonic_ns()) > 0:  # noqa: ASYNC110
        await anyio.sleep(remaining / 1e9)


@dataclass
class _Slots:
    busy: int = 0
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)


class Scheduler:
    def __init__(self, config: EmulatorConfig, catalog: Catalog) -> None:
        self.config = config
        self.catalog = catalog
        self._loading = anyio.Lock()
        self._slots: dict[str, _Slots] = {}

    async def load(self, spec: ModelSpec, keep_alive_ns: int | None, arrival_ns: int) -> int:
        """Get the model loaded for a request that arrived at `arrival_ns`; returns its
        load_duration. A warm load reports the model's own figure (deterministic)."""
        measured = False
        if self.config.cold_load_delay > 0 and not self.catalog.is_loaded(spec.name):
            measured = True  # a cold load, or a wait behind one: measured
            async with self._loading:
                if not self.catalog.is_loaded(spec.name):
                    delay_ns = int(self.config.cold_load_delay * 1e9)
                    await sleep_until(time.monotonic_ns() + delay_ns)
                    self.catalog.touch(spec, keep_alive_ns)
        self.catalog.touch(spec, keep_alive_ns)  # listed in /api/ps once loaded
        await sleep_until(arrival_ns + spec.load_duration_ns)
        return time.monotonic_ns() - arrival_ns if measured else spec.load_duration_ns

    @asynccontextmanager
    async def slot(self, name: str) -> AsyncIterator[None]:
        await self._acquire(name)
        try:
            yield
        finally:
            self._release(name)

    def _free(self, slots: _Slots) -> bool:
        limit = self.config.num_parallel
        return limit <= 0 or slots.busy < limit

    async def _acquire(self, name: str) -> None:
        slots = self._slots.setdefault(name, _Slots())
        if self._free(slots) and not slots.waiting:
            slots.busy += 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slots.waiting.append(granted)
        try:
            await granted  # _release counts us in before it wakes us
        except BaseException:
            if granted.done() and not granted.cancelled():
                self._release(name)  # granted, then cancelled before running: hand it on
            else:
                slots.waiting.remove(granted)
            raise

    def _release(self, name: str) -> None:
        slots = self._slots[name]
        slots.busy -= 1
        while slots.waiting and self._free(slots):
            granted = slots.waiting.popleft()
            if not granted.done():
                slots.busy += 1
                granted.set_result(None)

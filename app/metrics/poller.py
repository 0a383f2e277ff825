"""Which models Ollama holds in memory: a background ``GET /api/ps`` poll, cached for ``/metrics``.

``ModelPoller`` asks Ollama every ``interval`` seconds (and at once when ``poke``d: a model
was just loaded) and hands each good answer, read by ``app.ollama.residency.parse_ps``, to
``LoadedModelsCollector`` as one immutable snapshot, and to ``on_models`` (the residency that
tells loads, unloads and cold starts); a scrape only reads that snapshot, so ``/metrics``
never waits on Ollama (the mistake of calling ``/api/ps`` inside the handler).

Exported, from the last good answer only:

- ``ollama_model_loaded{model}``: 1 per loaded model (an unloaded model's series vanishes);
- ``ollama_model_size_bytes{model}``, ``ollama_model_vram_bytes{model}``: ``size``, ``size_vram``;
- ``ollama_model_vram_ratio{model}``: ``size_vram / size`` (placement);
- ``ollama_models_loaded``: how many models are loaded.

"Unknown" is never shown as "none": until the first good answer, and once the last one is
older than three intervals, every family is empty and ``ollama_models_loaded`` is absent, so
dashboards show "no data" rather than a false 0. Per-model series are bounded to the first
``MAX_MODELS`` models of an answer; ``ollama_models_loaded`` still counts them all.

Wiring (the lifespan owns the task)::

    collector = LoadedModelsCollector(registry=registry)
    ollama = Upstream(url, connect_timeout=5, max_connections=1)  # app.proxy.upstream
    poller = ModelPoller(ollama=ollama, interval=15, collector=collector,
                         on_result=..., on_models=residency.observe)
    await poller.start()  # ... await poller.stop() on shutdown
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.ollama.residency import LoadedModel, PsFormatError, parse_ps

__all__ = [
    "MAX_MODELS",
    "STALE_AFTER_INTERVALS",
    "LoadedModel",
    "LoadedModelsCollector",
    "ModelPoller",
]

logger = logging.getLogger(__name__)

MAX_MODELS = 100
"""Per-model series kept from one answer: a bound on label cardinality, not a real limit."""
STALE_AFTER_INTERVALS = 3
"""A snapshot is served for this many poll intervals after it was taken, then dropped."""
MAX_TIMEOUT = 5.0
POKE_GAP = 1.0
"""Seconds between a poll and one a poke brings forward: a model that reloads on every
request (thrashing) pokes on every request, yet adds at most one poll a second."""
# /api/ps is a few hundred bytes per model; anything near this is not Ollama.
_MAX_BODY = 1 << 20


@dataclass(frozen=True, slots=True)
class _Snapshot:
    models: tuple[LoadedModel, ...]  # distinct names, at most MAX_MODELS
    count: int  # distinct models in the answer, before the bound
    expires_at: float  # time.monotonic()


class LoadedModelsCollector(Collector):
    """Serves the last ``/api/ps`` snapshot; ``collect()`` does no I/O and never waits."""

    def __init__(self, *, registry: CollectorRegistry) -> None:
        self._snapshot: _Snapshot | None = None
        self._truncating = False
        registry.register(self)

    def update(self, models: Iterable[LoadedModel], *, valid_for: float) -> None:
        """Replace the snapshot (one reference swap); it is served for ``valid_for`` seconds."""
        distinct: dict[str, LoadedModel] = {}
        for entry in models:
            distinct.setdefault(entry.model, entry)
        kept = tuple(distinct.values())[:MAX_MODELS]
        if len(distinct) > MAX_MODELS and not self._truncating:
            logger.warning(
                "Ollama reports %d loaded models; exporting per-model series for the first %d",
                len(distinct),
                MAX_MODELS,
            )
        self._truncating = len(distinct) > MAX_MODELS
        self._snapshot = _Snapshot(kept, len(distinct), time.monotonic() + valid_for)

    def current(self) -> tuple[LoadedModel, ...] | None:
        """The models being exported, or None when they are unknown."""
        snapshot = self._live()
        return None if snapshot is None else snapshot.models

    def _live(self) -> _Snapshot | None:
        snapshot = self._snapshot  # read once: update() may swap it meanwhile
        if snapshot is None or time.monotonic() >= snapshot.expires_at:
            return None
        return snapshot

    def describe(self) -> Iterator[Metric]:
        # Lets the registry reject a second collector exporting the same names.
        yield from self._families()
        yield _count_family(None)

    def collect(self) -> Iterator[Metric]:
        snapshot = self._live()
        if snapshot is None:
            # Unknown: empty families, and no count at all rather than a false 0.
            yield from self._families()
            return
        loaded, size, vram, ratio = self._families()
        for entry in snapshot.models:
            loaded.add_metric([entry.model], 1)
            if entry.size is not None:
                size.add_metric([entry.model], entry.size)
            if entry.size_vram is not None:
                vram.add_metric([entry.model], entry.size_vram)
                if entry.size:  # placement: 1 on the GPU, 0 on the CPU, between: split
                    ratio.add_metric([entry.model], min(entry.size_vram / entry.size, 1.0))
        yield from (loaded, size, vram, ratio)
        yield _count_family(snapshot.count)

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily
    ]:
        return (
            GaugeMetricFamily(
                "ollama_model_loaded", "1 for each model Ollama holds in memory.", labels=["model"]
            ),
            GaugeMetricFamily(
                "ollama_model_size_bytes", "Memory a loaded model occupies.", labels=["model"]
            ),
            GaugeMetricFamily(
                "ollama_model_vram_bytes", "Part of a loaded model held in VRAM.", labels=["model"]
            ),
            GaugeMetricFamily(
                "ollama_model_vram_ratio",
                "size_vram / size of a loaded model: 1 all on the GPU, 0 all on the CPU, "
                "between: partly offloaded to the CPU (slower).",
                labels=["model"],
            ),
        )


def _count_family(count: int | None) -> GaugeMetricFamily:
    return GaugeMetricFamily("ollama_models_loaded", "Models Ollama holds in memory.", value=count)


class _PollError(Exception):
    """Why one poll of ``/api/ps`` produced no snapshot; the message names the cause."""


class OllamaClient(Protocol):
    """How the poller reaches Ollama: ``app.proxy.upstream.Upstream`` (a pool of its own, so
    a poll never waits behind the proxied requests; the URL's credentials go as a header)."""

    public_url: str  # Ollama's URL without credentials, for the log lines

    async def get(self, path: str, *, limit: int) -> tuple[int, bytes]:
        """The status and body of ``GET path``; ``ConnectionError`` saying why not."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ModelPoller:
    """Polls ``GET {url}/api/ps`` every ``interval`` seconds in a named background task.

    Failure policy (connection errors, timeouts, a status other than 200, a body that is not
    JSON or not shaped like ``{"models": [...]}``): every failed poll calls
    ``on_result(False)``; the last snapshot keeps being exported until it is
    ``STALE_AFTER_INTERVALS`` intervals old, then every series disappears (unknown, not 0),
    so a blip of one or two polls does not make models flicker but an Ollama that is gone
    is not reported as holding models for long. The expiry is checked at scrape time, so it
    also holds if the poller is stopped. Logging is per episode, never per poll: one warning
    when polls start failing, one info line when they succeed again.

    Each poll has a total deadline of ``min(interval, 5)`` s; polls run at a fixed rate
    (first one at once) and a late one is not made up with a burst. The loop never raises.
    """

    def __init__(
        self,
        *,
        ollama: OllamaClient,
        interval: float,
        collector: LoadedModelsCollector,
        on_result: Callable[[bool], None] | None = None,
        on_models: Callable[[Sequence[LoadedModel], float], None] | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"poll interval must be positive, got {interval!r}")
        self._interval = interval
        self._timeout = min(interval, MAX_TIMEOUT)
        self._ollama = ollama
        self._url = ollama.public_url.rstrip("/") + "/api/ps"
        self._collector = collector
        self._on_result = on_result
        self._on_models = on_models
        self._poked = asyncio.Event()
        self._failures = 0
        self._traceback_logged = False
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start polling; the first poll happens at once. Starting twice is a no-op."""
        if not self.running:
            await self._ollama.start()
            self._task = asyncio.create_task(self._run(), name=f"ollama-ps-poller {self._url}")

    async def stop(self) -> None:
        """Cancel the poll task, wait until it has ended, close the idle connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
            if not task.cancelled() and task.exception() is not None:
                logger.error("model poller had ended with an error", exc_info=task.exception())
        await self._ollama.stop()

    async def poll_once(self) -> bool:
        """Poll once, update the snapshot on success, report to ``on_result``; never raises."""
        try:
            models = await self._fetch()
        except _PollError as exc:
            self._failed(str(exc))
            return False
        except Exception as exc:  # a bug must not end the loop
            if not self._traceback_logged:
                self._traceback_logged = True
                logger.exception("Unexpected error while polling %s", self._url)
            self._failed(f"unexpected {type(exc).__name__}: {exc}")
            return False
        valid_for = STALE_AFTER_INTERVALS * self._interval
        self._collector.update(models, valid_for=valid_for)
        if self._on_models is not None:
            try:
                self._on_models(models, valid_for)
            except Exception:
                logger.exception("on_models callback of the model poller failed")
        if self._failures:
            logger.info(
                "Loaded models readable again from %s after %d failed polls",
                self._url,
                self._failures,
            )
        self._failures = 0
        self._traceback_logged = False
        self._notify(True)
        return True

    def poke(self) -> None:
        """Poll again soon rather than at the next interval (a model was just loaded: a load
        shorter than the interval would be missed): ``POKE_GAP`` after the last poll at the
        earliest. Pokes before that poll runs, or while it runs, make one more."""
        self._poked.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            self._poked.clear()
            polled_at = loop.time()
            await self.poll_once()
            now = loop.time()
            next_at = max(next_at + self._interval, now)
            try:
                async with asyncio.timeout(next_at - now):
                    await self._poked.wait()
            except TimeoutError:
                continue
            early = min(polled_at + POKE_GAP, next_at) - loop.time()
            if early > 0:
                await asyncio.sleep(early)

    async def _fetch(self) -> list[LoadedModel]:
        """The one place where transport and format errors become ``_PollError``."""
        try:
            async with asyncio.timeout(self._timeout):
                body = await self._get()
        except TimeoutError as exc:
            raise _PollError(f"no answer within {self._timeout:g} s") from exc
        except ConnectionError as exc:
            raise _PollError(str(exc)) from exc
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise _PollError("answer is not JSON") from exc
        try:
            return parse_ps(document)
        except PsFormatError as exc:
            raise _PollError(str(exc)) from exc

    async def _get(self) -> bytes:
        status, body = await self._ollama.get("/api/ps", limit=_MAX_BODY)
        if status != 200:
            raise _PollError(f"HTTP {status}")
        return body

    def _failed(self, reason: str) -> None:
        self._failures += 1
        if self._failures == 1:
            logger.warning(
                "Cannot read loaded models from %s (%s); the last known stay for at most %g s",
                self._url,
                reason,
                STALE_AFTER_INTERVALS * self._interval,
            )
        self._notify(False)

    def _notify(self, ok: bool) -> None:
        if self._on_result is None:
            return
        try:
            self._on_result(ok)
        except Exception:
            logger.exception("on_result callback of the model poller failed")

"""Ollama's scheduler (server/sched.go), as far as its waits show in the metrics and its
runners in /api/ps.

* Runners: one per loaded model (`Catalog.loaded`, Ollama's `s.loaded`), launched with the
  api.Runner options of the request that loaded it (`LaunchOptions`), with a refcount of
  the requests holding it, a keep-alive and `expires_at`.
* getRunner (`request`): the fast path takes a loaded runner whose options suit the
  request (`needs_reload` false) at once: refcount + 1, its expiry timer stopped, an
  explicit `keep_alive` kept (useLoadedRunner). It never queues and never counts toward
  `max_queue`. Anything else joins the pending queue (pendingReqCh, FIFO, capacity
  `max_queue`; full: 503 ErrMaxQueue, raised before any output).
* processPending (`_process`): one queued request at a time holds the pending turn, so
  only one model loads at a time. It loops: use the runner if it is now loaded and suits;
  evict when the count cap is reached (`max_loaded_models`, 0: 3 = defaultModelsPerGPU ×
  one GPU or none), when the model does not fit beside the others (`vram_bytes` > 0, at
  least one other runner, predicted size > 80 % of the free VRAM: Scheduler.load with
  requireFull) or when it needs a reload; else load it: `cold_load_delay` seconds, during
  which the model is absent from /api/ps (llama-server is still starting).
* findRunnerToUnload (`_find_runner_to_unload`): sorted by keep-alive, shortest first,
  then by name (Ollama: by blob path); the first idle one, else the first, whose requests
  are then waited for. The victim's keep-alive becomes 0, so it unloads once idle.
* processCompleted (`release`): when the last request lets go, a keep-alive of 0 unloads
  the runner; otherwise `expires_at` = now + keep-alive and a timer unloads it then.
  expireRunner (`expire`: an empty prompt with keep_alive 0) unloads it once idle.
* load_duration (`grant`): from the request's arrival to the grant, holding the queue, the
  eviction waits and the load, measured. When nothing waited and no cold load was slept
  (cold_load_delay 0), the model's own warm figure instead, so it stays deterministic.
* Slots (llm/llama_server.go `sem.Acquire`): with `num_parallel` N > 0 a model serves N
  requests at once; the others wait, first come first served, without limit. The slot is
  taken after the grant, so its wait is outside load_duration and lands in
  total − load − prompt_eval − eval.
* Placement (llm/server.go MemorySize, as `ollama ps` shows it): size = the model file +
  the KV cache of its num_ctx (`KV_BYTES_PER_TOKEN` a token); size_vram = what of it fits
  in `vram_bytes` beside the other runners (0 with num_gpu 0; all of it when `vram_bytes`
  is 0). A runner partly or wholly on the CPU evaluates prompt and tokens
  1 + `CPU_SLOWDOWN` × cpu_share times slower (cpu_share = (size − size_vram) / size).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from tests.emulator import parsing
from tests.emulator.catalog import FOREVER_NS, Catalog, ModelSpec
from tests.emulator.config import EmulatorConfig
from tests.emulator.wire import ApiError

__all__ = [
    "BLOCK_COUNT",
    "CPU_SLOWDOWN",
    "KV_BYTES_PER_TOKEN",
    "MAX_QUEUE_ERROR",
    "LaunchOptions",
    "Runner",
    "Scheduler",
    "Ticket",
    "launch_options",
    "model_size",
    "needs_reload",
    "sleep_until",
]

# server/sched.go ErrMaxQueue (two spaces, as in Ollama).
MAX_QUEUE_ERROR = "server busy, please try again.  maximum pending requests exceeded"
# server/sched.go defaultModelsPerGPU: the automatic OLLAMA_MAX_LOADED_MODELS, × max(GPUs, 1).
DEFAULT_MODELS_PER_GPU = 3
# The KV cache a context token takes (f16, a 3B-class model); the loaded size grows by it.
KV_BYTES_PER_TOKEN = 114_688
# `{arch}.block_count` in /api/show; layers = blocks + 1 (the output layer).
BLOCK_COUNT = 28
# A runner with a CPU share s evaluates 1 + CPU_SLOWDOWN × s times slower (all on the
# CPU: 10 ×, about what a CPU does against a GPU for these model sizes).
CPU_SLOWDOWN = 9
_MIB = 1 << 20
_GIB = 1 << 30


async def sleep_until(deadline_ns: int) -> None:
    """Sleep until time.monotonic_ns() reaches `deadline_ns` (never wakes early)."""
    # A timer may fire a little early (uvloop's are in milliseconds): sleep what is left.
    while (remaining := deadline_ns - time.monotonic_ns()) > 0:  # noqa: ASYNC110
        await anyio.sleep(remaining / 1e9)


@dataclass(frozen=True)
class LaunchOptions:
    """The api.Runner options a runner is launched with (api/types.go Runner), which of
    them were automatic (server/routes.go usesAutomaticNumCtx, usesAutomaticNumBatch) and
    the context-shift launch flag (server/sched.go resolveContextShift)."""

    num_ctx: int = parsing.DEFAULT_NUM_CTX
    num_ctx_auto: bool = True
    num_batch: int = 512
    num_batch_auto: bool = True
    num_gpu: int = -1  # -1: llama-server decides
    main_gpu: int | None = None
    use_mmap: bool | None = None
    num_thread: int = 0
    draft_num_predict: int = 4
    shift: bool = True


def _number(options: Mapping[str, Any], key: str, default: int) -> int:
    value = options.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return default


def _modelfile_keys(spec: ModelSpec) -> set[str]:
    return {line.split()[0] for line in spec.parameters.splitlines() if line.split()}


def launch_options(
    spec: ModelSpec, options: Mapping[str, Any] | None, shift: bool | None
) -> LaunchOptions:
    """The options a request asks its runner for: server/routes.go scheduleRunner (the
    option merge; automatic = set by neither the request nor the Modelfile) and
    server/sched.go getRunner (num_ctx at least 4, capped at the trained context:
    effectiveContext; the shift flag: the request's, else on but for deepseek2)."""
    opts = options or {}
    modelfile = _modelfile_keys(spec)
    main_gpu = opts.get("main_gpu")
    use_mmap = opts.get("use_mmap")
    return LaunchOptions(
        num_ctx=max(parsing.num_ctx(opts, spec.parameters, spec.context_length), 4),
        num_ctx_auto="num_ctx" not in opts and "num_ctx" not in modelfile,
        num_batch=_number(opts, "num_batch", 512),
        num_batch_auto="num_batch" not in opts and "num_batch" not in modelfile,
        num_gpu=_number(opts, "num_gpu", -1),
        main_gpu=int(main_gpu) if isinstance(main_gpu, int | float) else None,
        use_mmap=use_mmap if isinstance(use_mmap, bool) else None,
        num_thread=_number(opts, "num_thread", 0),
        draft_num_predict=_number(opts, "draft_num_predict", 4),
        shift=shift if shift is not None else spec.family != "deepseek2",
    )


def needs_reload(launched: LaunchOptions, wanted: LaunchOptions) -> bool:
    """server/sched.go runnerRef.needsReload: the launched options against the request's,
    after its normalisation: num_ctx and num_batch are ignored when both sides are
    automatic, use_mmap when the runner's was automatic and the request leaves it unset,
    num_gpu when the request's is < 0 (the default -1); a different shift flag reloads."""
    if launched.shift != wanted.shift:
        return True
    if launched.num_ctx_auto and wanted.num_ctx_auto:
        wanted = replace(wanted, num_ctx=launched.num_ctx)
    if launched.num_batch_auto and wanted.num_batch_auto:
        wanted = replace(wanted, num_batch=launched.num_batch)
    if launched.use_mmap is None and wanted.use_mmap is None:
        wanted = replace(wanted, use_mmap=launched.use_mmap)
    if wanted.num_gpu < 0:
        wanted = replace(wanted, num_gpu=launched.num_gpu)

    def runner(options: LaunchOptions) -> tuple[object, ...]:
        return (
            options.num_ctx,
            options.num_batch,
            options.num_gpu,
            options.main_gpu,
            options.use_mmap,
            options.num_thread,
            options.draft_num_predict,
        )

    return runner(launched) != runner(wanted)


def model_size(spec: ModelSpec, num_ctx: int) -> int:
    """The loaded size: the weights plus the KV cache for the context."""
    return spec.size + num_ctx * KV_BYTES_PER_TOKEN


def _batch_surcharge(spec: ModelSpec, num_batch: int) -> int:
    """server/sched.go generationBatchSurchargeForCompletion: what a large batch adds to
    a completion model's predicted VRAM."""
    if "completion" not in spec.capabilities:
        return 0
    if num_batch >= 2048:
        return 2 * _GIB
    if num_batch >= 1024:
        return 768 * _MIB
    return 0


@dataclass(eq=False)
class Runner:
    """server/sched.go runnerRef: one loaded model."""

    spec: ModelSpec
    options: LaunchOptions
    size: int
    size_vram: int
    keep_alive_ns: int  # sessionDuration; FOREVER_NS for "forever"
    ref_count: int = 0
    expires_at_ns: int = 0  # wall clock; 0 is Go's zero time: not idle yet
    timer: asyncio.TimerHandle | None = None
    unloaded: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.spec.name

    def slowed(self, ns: int, *, ceil: bool = False) -> int:
        """`ns` of GPU work as this runner's placement takes it (CPU_SLOWDOWN)."""
        if self.size <= 0 or self.size_vram >= self.size:
            return ns
        scaled = ns * (self.size + CPU_SLOWDOWN * (self.size - self.size_vram))
        return -(-scaled // self.size) if ceil else scaled // self.size

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def discard(self) -> None:
        """The llama-server is gone (runnerRef.unload): wake whoever waits for it."""
        self.stop_timer()
        self.unloaded.set()


class _Fifo:
    """A first-come-first-served gate of `limit()` places (0: no limit); joining is
    synchronous (`enqueue`), so a place in the line is taken before any await."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self.limit = limit
        self.busy = 0
        self.waiting: deque[asyncio.Future[None]] = deque()

    def _free(self) -> bool:
        limit = self.limit()
        return limit <= 0 or self.busy < limit

    def enqueue(self) -> asyncio.Future[None]:
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._free() and not self.waiting:
            self.busy += 1
            place.set_result(None)
        else:
            self.waiting.append(place)
        return place

    async def wait(self, place: asyncio.Future[None]) -> None:
        try:
            await place  # release() counts us in before it wakes us
        except BaseException:
            if place.done() and not place.cancelled():
                self.release()  # granted, then cancelled before running: hand it on
            else:
                self.withdraw(place)
            raise

    def withdraw(self, place: asyncio.Future[None]) -> None:
        if place in self.waiting:
            self.waiting.remove(place)
        place.cancel()

    def release(self) -> None:
        self.busy -= 1
        while self.waiting and self._free():
            place = self.waiting.popleft()
            if not place.done():
                self.busy += 1
                place.set_result(None)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        await self.wait(self.enqueue())
        try:
            yield
        finally:
            self.release()


@dataclass(eq=False)
class Ticket:
    """server/sched.go LlmRequest: one request's claim on a runner, from getRunner
    (`Scheduler.request`) to the end of its context (`Scheduler.release`)."""

    spec: ModelSpec
    options: LaunchOptions
    keep_alive_ns: int | None  # None: not sent, the runner's keep-alive stays
    arrival_ns: int
    runner: Runner | None = None
    turn: asyncio.Future[None] | None = None  # its place in the pending queue
    waits_seen: int = 0
    load_ns: int = 0
    released: bool = False


class Scheduler:
    def __init__(self, config: EmulatorConfig, catalog: Catalog) -> None:
        self.config = config
        self.catalog = catalog
        self._pending = _Fifo(lambda: 1)  # processPending: one request at a time
        self._slots: dict[str, _Fifo] = {}
        self._waits = 0  # real waits (a cold load, a busy victim) finished so far

    @property
    def loaded(self) -> dict[str, Runner]:
        return self.catalog.loaded

    def max_runners(self) -> int:
        """envconfig.MaxRunners, or the automatic value processPending picks."""
        return self.config.max_loaded_models or DEFAULT_MODELS_PER_GPU

    def _default_keep_alive(self) -> int:
        """envconfig.KeepAlive: negative means forever."""
        seconds = self.config.keep_alive
        return FOREVER_NS if seconds < 0 else int(seconds * 1e9)

    # --- getRunner ----------------------------------------------------------------------

    def request(
        self,
        spec: ModelSpec,
        options: LaunchOptions,
        keep_alive_ns: int | None,
        arrival_ns: int,
    ) -> Ticket:
        """server/sched.go getRunner: the fast path, or a place in the pending queue;
        ApiError 503 when the queue is full. Synchronous, so it is answered before any
        output; `grant` then waits, `release` ends the claim."""
        if keep_alive_ns is not None and keep_alive_ns < 0:
            keep_alive_ns = FOREVER_NS  # api.Duration: negative is forever
        ticket = Ticket(spec, options, keep_alive_ns, arrival_ns)
        runner = self.loaded.get(spec.name)
        if runner is not None and not needs_reload(runner.options, options):
            self._use(runner, ticket)
            return ticket
        if len(self._pending.waiting) >= self.config.max_queue:
            raise ApiError(503, MAX_QUEUE_ERROR)
        ticket.waits_seen = self._waits
        ticket.turn = self._pending.enqueue()
        return ticket

    async def grant(self, ticket: Ticket) -> int:
        """Wait for the runner; returns the load_duration (checkpointLoaded −
        checkpointStart): measured when the request waited for something real, else the
        model's own warm figure."""
        waited = False
        if ticket.runner is None:
            assert ticket.turn is not None
            await self._pending.wait(ticket.turn)
            try:
                waited = await self._process(ticket)
                waited = waited or self._waits != ticket.waits_seen
            finally:
                self._pending.release()
        spec = ticket.spec
        await sleep_until(ticket.arrival_ns + spec.load_duration_ns)
        ticket.load_ns = (
            time.monotonic_ns() - ticket.arrival_ns if waited else spec.load_duration_ns
        )
        return ticket.load_ns

    @asynccontextmanager
    async def runner(
        self,
        spec: ModelSpec,
        options: LaunchOptions,
        keep_alive_ns: int | None,
        arrival_ns: int,
    ) -> AsyncIterator[Ticket]:
        """request + grant + release around a handler's use of the runner."""
        ticket = self.request(spec, options, keep_alive_ns, arrival_ns)
        try:
            await self.grant(ticket)
            yield ticket
        finally:
            self.release(ticket)

    def _use(self, runner: Runner, ticket: Ticket) -> None:
        """server/sched.go useLoadedRunner."""
        runner.ref_count += 1
        runner.stop_timer()
        if ticket.keep_alive_ns is not None:
            runner.keep_alive_ns = ticket.keep_alive_ns
        ticket.runner = runner

    # --- processPending -----------------------------------------------------------------

    async def _process(self, ticket: Ticket) -> bool:
        """server/sched.go processPending's loop for one request; True when it waited (a
        cold load slept, a busy victim waited for)."""
        waited = False
        while True:
            runner = self.loaded.get(ticket.spec.name)
            if runner is not None:
                if not needs_reload(runner.options, ticket.options):
                    self._use(runner, ticket)
                    return waited
                victim = runner  # a reload: a full unload and cold load
            elif len(self.loaded) >= self.max_runners():
                victim = self._find_runner_to_unload()
            elif not self.loaded or self._fits(ticket):
                return await self._load(ticket) or waited
            else:
                victim = self._find_runner_to_unload()
            waited = await self._evict(victim) or waited

    def _free_vram(self, besides: Runner | None = None) -> int:
        used = sum(r.size_vram for r in self.loaded.values() if r is not besides)
        return max(self.config.vram_bytes - used, 0)

    def _fits(self, ticket: Ticket) -> bool:
        """server/sched.go Scheduler.load with requireFull: with a GPU in play (num_gpu
        not 0) and no explicit partial offload, the predicted size (llm.PredictServerVRAM
        plus the batch surcharge) must stay within 80 % of the free VRAM."""
        options = ticket.options
        if self.config.vram_bytes <= 0 or options.num_gpu == 0:
            return True
        if 0 < options.num_gpu < BLOCK_COUNT + 1:  # explicitPartialGPUOffload
            return True
        predicted = model_size(ticket.spec, options.num_ctx)
        predicted += _batch_surcharge(ticket.spec, options.num_batch)
        return predicted <= self._free_vram() * 80 // 100

    def _place(self, spec: ModelSpec, options: LaunchOptions) -> tuple[int, int]:
        """(size, size_vram) as llama-server places the model: num_gpu layers (all by
        default, none with 0), then as much as the free VRAM holds; the rest on the CPU."""
        size = model_size(spec, options.num_ctx)
        if options.num_gpu == 0:
            return size, 0
        on_gpu = size
        if 0 < options.num_gpu < BLOCK_COUNT + 1:
            on_gpu = size * options.num_gpu // (BLOCK_COUNT + 1)
        if self.config.vram_bytes <= 0:
            return size, on_gpu
        return size, min(on_gpu, self._free_vram())

    async def _load(self, ticket: Ticket) -> bool:
        """server/sched.go Scheduler.load + WaitUntilRunning: the runner joins `loaded`
        (and /api/ps) only once llama-server is up, holding this request. A request
        cancelled meanwhile aborts the load."""
        spec, options = ticket.spec, ticket.options
        size, size_vram = self._place(spec, options)
        delay_ns = int(self.config.cold_load_delay * 1e9)
        if delay_ns > 0:
            try:
                await sleep_until(time.monotonic_ns() + delay_ns)
            finally:
                self._waits += 1
        keep = ticket.keep_alive_ns
        runner = Runner(
            spec, options, size, size_vram, self._default_keep_alive() if keep is None else keep
        )
        old = self.loaded.pop(spec.name, None)
        if old is not None:  # "model was still loaded": not expected, but never leak it
            old.discard()
        runner.ref_count = 1
        self.loaded[spec.name] = runner
        ticket.runner = runner
        return delay_ns > 0

    def _find_runner_to_unload(self) -> Runner:
        """server/sched.go findRunnerToUnload (ByDurationAndName): not LRU, not expires_at."""
        ordered = sorted(self.loaded.values(), key=lambda r: (r.keep_alive_ns, r.name))
        return next((r for r in ordered if r.ref_count <= 0), ordered[0])

    async def _evict(self, victim: Runner) -> bool:
        """Expire the victim now (sessionDuration = 0) and wait for it to unload, which
        a busy one does when its last request ends. The VRAM-recovery wait of a real GPU
        (waitForVRAMRecovery) is not modelled."""
        victim.stop_timer()
        victim.keep_alive_ns = 0
        if victim.ref_count <= 0:
            self._unload(victim)
            return False
        try:
            await victim.unloaded.wait()
        finally:
            self._waits += 1
        return True

    # --- processCompleted ---------------------------------------------------------------

    def release(self, ticket: Ticket) -> None:
        """The request's context ended (server/sched.go processCompleted): refcount − 1;
        an idle runner unloads at once with keep-alive 0, else its timer starts."""
        if ticket.released:
            return
        ticket.released = True
        runner = ticket.runner
        if runner is None:
            if ticket.turn is not None and not ticket.turn.done():
                self._pending.withdraw(ticket.turn)  # never served
            return
        runner.ref_count -= 1
        if self.loaded.get(runner.name) is not runner or runner.ref_count > 0:
            return
        if runner.keep_alive_ns <= 0:
            self._unload(runner)
            return
        runner.stop_timer()
        runner.expires_at_ns = time.time_ns() + runner.keep_alive_ns
        if runner.keep_alive_ns < FOREVER_NS:
            loop = asyncio.get_running_loop()
            runner.timer = loop.call_later(runner.keep_alive_ns / 1e9, self._expired, runner)

    def _expired(self, runner: Runner) -> None:
        runner.timer = None
        if runner.ref_count <= 0:
            self._unload(runner)

    def _unload(self, runner: Runner) -> None:
        if self.loaded.get(runner.name) is runner:
            del self.loaded[runner.name]
        runner.discard()

    def expire(self, name: str) -> None:
        """server/sched.go expireRunner (an empty prompt with keep_alive 0): expires_at is
        now, and the runner unloads once idle."""
        runner = self.loaded.get(name)
        if runner is None:
            return
        runner.expires_at_ns = time.time_ns()
        runner.stop_timer()
        runner.keep_alive_ns = 0
        if runner.ref_count <= 0:
            self._unload(runner)

    # --- loadedModels -------------------------------------------------------------------

    def running(self) -> list[tuple[Runner, int]]:
        """server/sched.go loadedModels + PsHandler: each runner with its expires_at (a
        zero one, before the first idle moment, is estimated as now + keep-alive on every
        call), sorted by expires_at in whole seconds, latest first."""
        now = time.time_ns()
        listed = [(r, r.expires_at_ns or now + r.keep_alive_ns) for r in self.loaded.values()]
        return sorted(listed, key=lambda item: item[1] // 1_000_000_000, reverse=True)

    # --- slots --------------------------------------------------------------------------

    @asynccontextmanager
    async def slot(self, name: str) -> AsyncIterator[None]:
        """A parallel slot of the model's llama-server (`num_parallel`, 0: no limit)."""
        slots = self._slots.get(name)
        if slots is None:
            slots = self._slots[name] = _Fifo(lambda: self.config.num_parallel)
        async with slots.hold():
            yield

"""Paces a planned generation into steps, one per streamed chunk, as a runner emits them.

The plan (`tokens.Expected`) decides *what* is said; this module decides *when*, and
every reported duration is really slept, so load + prompt_eval + eval <= total <= the
time the request took:

    arrival ─ pending queue, evictions, load (Scheduler.grant) ─ grant ─ slot wait
      ─ prompt eval ─ first_token_delay
      ─ tokens (each at least its eval time, or token_delay when that is longer) ─ final

total_duration is measured from the request's arrival (time.monotonic_ns) to the final
chunk, as server/routes.go stamps it; load is the model's figure (or measured, when the
request waited for the scheduler), prompt_eval and eval the plan's, slowed by the
runner's CPU share (`Runner.slowed`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from tests.emulator.catalog import ModelSpec
from tests.emulator.config import EmulatorConfig
from tests.emulator.faults import Fault
from tests.emulator.scheduler import Scheduler, Ticket, sleep_until
from tests.emulator.tokens import Expected
from tests.emulator.wire import EmulatedReset, Failure

__all__ = ["Run", "Step", "paced", "run_steps"]


@dataclass(frozen=True)
class Run:
    """Who runs one generation: the model, the scheduler, the request's claim on a
    runner (taken by `Scheduler.request` before any output; it holds the arrival)."""

    spec: ModelSpec
    scheduler: Scheduler
    config: EmulatorConfig
    ticket: Ticket


@dataclass(frozen=True)
class Step:
    thinking: str = ""
    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    final: bool = False
    pieces: tuple[str, ...] = ()  # the tokens shown (for logprobs)
    tokens: int = 0  # tokens generated for this step, shown or not
    total_ns: int = 0  # final step: total_duration, measured
    load_ns: int = 0  # final step: load_duration
    prompt_eval_ns: int = 0  # final step: prompt_eval_duration, as the runner took it
    eval_ns: int = 0  # final step: eval_duration, as the runner took it


def _planned(plan: Expected) -> list[Step]:
    steps = [
        Step(thinking=c.thinking, content=c.content, pieces=c.pieces, tokens=c.tokens)
        for c in plan.chunks
    ]
    final = plan.final
    last = Step(
        thinking=final.thinking,
        content=final.content,
        tool_calls=list(plan.tool_calls),
        final=True,
        pieces=final.pieces,
        tokens=final.tokens,
    )
    return [*steps, last]


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await anyio.sleep(seconds)


async def run_steps(plan: Expected, run: Run, fault: Fault) -> AsyncIterator[Step | Failure]:
    """Yield the steps; a fault at index N replaces step N (the final step included)."""
    config, ticket = run.config, run.ticket
    try:
        load_ns = await run.scheduler.grant(ticket)
        runner = ticket.runner
        assert runner is not None
        prompt_ns = runner.slowed(plan.prompt_eval_duration)
        eval_ns = runner.slowed(plan.eval_duration)
        per_token = runner.slowed(run.spec.eval_ns_per_token, ceil=True)
        async with run.scheduler.slot(run.spec.name):
            await sleep_until(time.monotonic_ns() + prompt_ns)
            await _sleep(config.first_token_delay)
            interval = max(per_token, int(config.token_delay * 1e9))
            cursor = time.monotonic_ns()
            for index, step in enumerate(_planned(plan)):
                # The first token comes at the model's pace; then each takes the interval.
                if index == 0 and step.tokens:
                    cursor += per_token + (step.tokens - 1) * interval
                else:
                    cursor += step.tokens * interval
                await sleep_until(cursor)
                if fault.reset_after == index:
                    raise EmulatedReset(f"reset after {index} chunks")
                if fault.fail_after == index:
                    yield Failure()
                    return
                if step.final:
                    total = time.monotonic_ns() - ticket.arrival_ns
                    step = replace(
                        step,
                        total_ns=total,
                        load_ns=load_ns,
                        prompt_eval_ns=prompt_ns,
                        eval_ns=eval_ns,
                    )
                yield step
    finally:
        run.scheduler.release(ticket)  # the request's context ends: processCompleted


async def paced(items: list[Any], config: EmulatorConfig) -> AsyncIterator[Any]:
    """Progress streams (pull/push/create) pace their lines like tokens."""
    await _sleep(config.first_token_delay)
    for index, item in enumerate(items):
        if index:
            await _sleep(config.token_delay)
        yield item

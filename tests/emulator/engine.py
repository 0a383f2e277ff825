"""Paces a planned generation into steps, one per token, the way a runner emits them.

The plan (`tokens.Expected`) decides *what* is said; this module decides *when*
(first_token_delay, token_delay, read live from the config) and injects faults.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from tests.emulator.config import EmulatorConfig
from tests.emulator.faults import Fault
from tests.emulator.tokens import Expected
from tests.emulator.wire import EmulatedReset, Failure

__all__ = ["Step", "run_steps"]


@dataclass(frozen=True)
class Step:
    thinking: str = ""
    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    final: bool = False


def _planned(plan: Expected) -> list[Step]:
    steps = [Step(thinking=token) for token in plan.thinking_tokens]
    steps += [Step(content=token) for token in plan.text_tokens]
    steps += [Step(tool_calls=[call]) for call in plan.tool_calls]
    return [*steps, Step(final=True)]


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await anyio.sleep(seconds)


async def run_steps(
    plan: Expected, config: EmulatorConfig, fault: Fault
) -> AsyncIterator[Step | Failure]:
    """Yield the steps; a fault at index N replaces step N (the final step included)."""
    await _sleep(config.first_token_delay)
    for index, step in enumerate(_planned(plan)):
        if index:
            await _sleep(config.token_delay)
        if fault.reset_after == index:
            raise EmulatedReset(f"reset after {index} chunks")
        if fault.fail_after == index:
            yield Failure()
            return
        yield step


async def paced(items: list[Any], config: EmulatorConfig) -> AsyncIterator[Any]:
    """Progress streams (pull/push/create) pace their lines like tokens."""
    await _sleep(config.first_token_delay)
    for index, item in enumerate(items):
        if index:
            await _sleep(config.token_delay)
        yield item

"""The lifespan: components start in order, stop in reverse, and a failure stops the rest."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.lifecycle import Lifespan, Step
from app.types import Message


class Part:
    """A component that writes what happens to it into a shared journal."""

    def __init__(self, name: str, journal: list[str], *, fail: str | None = None) -> None:
        self.name = name
        self.journal = journal
        self.fail = fail

    async def start(self) -> None:
        await asyncio.sleep(0)
        if self.fail == "start":
            raise RuntimeError(f"{self.name} cannot start")
        self.journal.append(f"start {self.name}")

    async def stop(self) -> None:
        if self.fail == "stop":
            raise RuntimeError(f"{self.name} cannot stop")
        self.journal.append(f"stop {self.name}")


def run_protocol(lifespan: Lifespan, *messages: str) -> list[Message]:
    """Feed ``lifespan.*`` messages as a server would; what it answered."""
    inbox = [{"type": f"lifespan.{kind}"} for kind in messages]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(lifespan(receive, send))
    return sent


def test_start_in_order_and_stop_in_reverse(caplog: pytest.LogCaptureFixture) -> None:
    journal: list[str] = []
    lifespan = Lifespan([Part(name, journal) for name in ("a", "b", "c")])
    with caplog.at_level(logging.INFO, logger="app.lifecycle"):
        sent = run_protocol(lifespan, "startup", "shutdown")
    assert [r.getMessage() for r in caplog.records] == ["started: Part, Part, Part", "stopped"]
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert journal == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]


def test_a_failed_start_stops_what_had_started_and_tells_the_server() -> None:
    journal: list[str] = []
    parts = [Part("a", journal), Part("b", journal), Part("c", journal, fail="start")]
    parts.append(Part("d", journal))
    sent = run_protocol(Lifespan(parts), "startup")
    assert sent == [{"type": "lifespan.startup.failed", "message": "c cannot start"}]
    assert journal == ["start a", "start b", "stop b", "stop a"]


def test_a_failed_stop_is_logged_and_the_others_still_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal: list[str] = []
    parts = [Part("a", journal), Part("b", journal, fail="stop"), Part("c", journal)]
    with caplog.at_level(logging.ERROR, logger="app.lifecycle"):
        sent = run_protocol(Lifespan(parts), "startup", "shutdown")
    assert sent[-1] == {"type": "lifespan.shutdown.complete"}
    assert journal == ["start a", "start b", "start c", "stop c", "stop a"]
    assert "could not stop Part" in caplog.text


def test_a_step_adapts_two_callables_and_either_may_be_missing() -> None:
    journal: list[str] = []

    async def open_pool() -> None:
        journal.append("open")

    async def close_pool() -> None:
        journal.append("close")

    steps = [Step("pool", start=open_pool, stop=close_pool), Step("client", stop=close_pool)]
    lifespan = Lifespan(steps)
    asyncio.run(lifespan.startup())
    asyncio.run(lifespan.shutdown())
    assert journal == ["open", "close", "close"]
    asyncio.run(lifespan.shutdown())  # stopping twice stops nothing twice
    assert journal == ["open", "close", "close"]

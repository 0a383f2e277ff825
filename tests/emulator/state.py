"""Everything one emulator server owns, built in `create_app` and handed to each handler."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.emulator.catalog import Catalog
from tests.emulator.config import EmulatorConfig
from tests.emulator.requestlog import RequestLog
from tests.emulator.scheduler import Scheduler

__all__ = ["EmulatorState"]


@dataclass
class EmulatorState:
    config: EmulatorConfig
    catalog: Catalog = field(default_factory=Catalog.initial)
    log: RequestLog = field(default_factory=RequestLog)
    scheduler: Scheduler = field(init=False)

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.config, self.catalog)

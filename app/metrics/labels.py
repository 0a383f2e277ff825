"""Bounded label values: clients can send any string as a model name."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

OTHER = "other"


class BoundedLabel:
    """Admits the first ``limit`` distinct values; every later new value becomes ``other``.

    Callers admit a value only once it proved real (for models: Ollama answered without
    error), so a client sending junk names cannot crowd out the models in use. A value once
    admitted stays admitted.
    """

    __slots__ = ("admitted", "limit", "name", "warned")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.admitted: set[str] = set()
        self.warned = False

    def __call__(self, value: str, *, admit: bool = True) -> str:
        if value in self.admitted:
            return value
        if not admit:
            return OTHER
        if len(self.admitted) < self.limit:
            self.admitted.add(value)
            return value
        if not self.warned:
            self.warned = True
            log.warning(
                "more than %d distinct %s values: further ones are labelled %r",
                self.limit,
                self.name,
                OTHER,
            )
        return OTHER

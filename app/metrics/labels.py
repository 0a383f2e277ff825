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

    A value not yet proven can be *held* while it is in use (a request in flight): it is its
    own label until released, and at most ``limit`` such values are held at once.
    """

    __slots__ = ("admitted", "held", "limit", "name", "warned")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.admitted: set[str] = set()
        # Values held and not admitted: how many holds each has.
        self.held: dict[str, int] = {}
        self.warned = False

    def hold(self, value: str) -> str:
        """The label of a value in use: itself if admitted, or held if fewer than ``limit``
        values are held; otherwise ``other``. Each hold that returned ``value`` unadmitted
        is ended by one :meth:`release`."""
        if value in self.admitted:
            return value
        holds = self.held.get(value, 0)
        if not holds and len(self.held) >= self.limit:
            return OTHER
        self.held[value] = holds + 1
        return value

    def release(self, value: str) -> None:
        holds = self.held.get(value, 0)
        if holds > 1:
            self.held[value] = holds - 1
        else:
            self.held.pop(value, None)

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

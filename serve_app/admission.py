"""Refusing work at the gateway when the model behind it is already full.

An image request calls the prompt optimizer (OpenAI) before the ImageGenerator's bounded
queue can refuse it, so in a burst every request paid an OpenAI round trip (and its cost)
only to be told 503 after it: seconds with a real API. The gateway counts the generations it
has in flight and refuses the excess at once, before the prompt step. Serve's own
back-pressure (`max_queued_requests`) stays the bound across gateway replicas; this one is
per replica and only makes the refusal early and cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from core.errors import Overloaded
from core.metrics import queue_rejections


class InFlightLimit:
    """At most `limit` requests inside `admit()` at once in this process (None: no limit).

    Used from one event loop only, so a plain counter is enough.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.in_flight = 0

    @contextmanager
    def admit(self, what: str) -> Iterator[None]:
        """Hold a slot for the block; 503 `overloaded` with Retry-After when none is free."""
        if self.limit is not None and self.in_flight >= self.limit:
            queue_rejections().inc(1, tags={"call": what})
            raise Overloaded(f"{what} is at capacity; retry shortly", headers={"Retry-After": "1"})
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

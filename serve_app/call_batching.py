"""Gathering concurrent calls from one Gateway replica into one deployment request.

Each model replica runs one request at a time. When 32 clients search at once, 32 text
embeddings of a millisecond each used to line up in Serve's router, one request each, with
the router backing off while the model idled. Instead the Gateway gathers the calls that
arrive while one request to the model is in flight, and sends them as the next request
(`CallBatcher`): one model request serves many clients, the model
still sees one request at a time, a lone request waits for nobody, and 32 waiting searches
are one or two requests in the model's bounded queue instead of 32.

A call is a list of items (texts, images, queries) and gets one result per item, in order;
calls longer than `max_batch_size` are split. When a gathered request is refused as the
client's fault (a 4xx: an unreadable image among several uploads), each call of the batch
is retried on its own, so only the call at fault gets the error. Any other failure (the
model down, a timeout) reaches every call of the batch. A client that leaves while its
batch runs no longer cancels the model's work (the others still want it); batched calls
are short, and each model call is bounded by the request timeout.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from core.errors import ApiError

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class Outcome(Generic[Result]):
    """What one gathered call gets back: its results, or the error meant for it."""

    results: list[Result] | None = None
    error: ApiError | None = None

    def unwrap(self) -> list[Result]:
        if self.error is not None:
            raise self.error
        assert self.results is not None
        return self.results


async def run_gathered(
    call: Callable[[list[Item]], Awaitable[Sequence[Result]]],
    calls: list[list[Item]],
) -> list[Outcome[Result]]:
    """Run `calls` as one `call` of all their items; split the results back per call.

    A 4xx refusal of a batch of several calls is retried call by call, one after the other
    (the model stays at one request at a time), so that it reaches only the call at fault.
    """
    items = [item for one in calls for item in one]
    try:
        results = list(await call(items))
    except ApiError as exc:
        if exc.status_code >= 500 or len(calls) == 1:
            return [Outcome(error=exc) for _ in calls]
        return [await _alone(call, one) for one in calls]
    if len(results) != len(items):
        raise RuntimeError(f"a batch of {len(items)} items answered {len(results)} results")
    outcomes: list[Outcome[Result]] = []
    start = 0
    for one in calls:
        outcomes.append(Outcome(results=results[start : start + len(one)]))
        start += len(one)
    return outcomes


async def _alone(
    call: Callable[[list[Item]], Awaitable[Sequence[Result]]], items: list[Item]
) -> Outcome[Result]:
    try:
        return Outcome(results=list(await call(items)))
    except ApiError as exc:
        return Outcome(error=exc)


class CallBatcher(Generic[Item, Result]):
    """Concurrent calls of `call(items) -> results` from this process, gathered: at most one
    `call` in flight; what arrives meanwhile goes out together as the next one.

    Used from one event loop (the replica's). Serve's `@serve.batch` does not fit this: it
    forms the next batch as soon as the previous one has started, and that batch then waits
    for the previous one to finish holding only what had arrived by then, so under steady
    load its batches shrink to a call or two while the rest wait behind them.
    """

    def __init__(
        self,
        call: Callable[[list[Item]], Awaitable[Sequence[Result]]],
        *,
        max_batch_size: int,
        on_send: Callable[[int], None] | None = None,
    ) -> None:
        """`on_send(items)` is told the size of each request sent (for a metric)."""
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.max_batch_size = max_batch_size
        self._call = call
        self._on_send = on_send
        self._waiting: deque[_Call[Item, Result]] = deque()
        self._in_flight: asyncio.Task[None] | None = None

    async def __call__(self, items: Sequence[Item]) -> list[Result]:
        """One result per item, in order, computed together with other callers' items."""
        size = self.max_batch_size
        chunks = [list(items[i : i + size]) for i in range(0, len(items), size)]
        if not chunks:
            return []
        outcomes = await asyncio.gather(*(self._submit(chunk) for chunk in chunks))
        return [result for outcome in outcomes for result in outcome.unwrap()]

    async def _submit(self, items: list[Item]) -> Outcome[Result]:
        future: asyncio.Future[Outcome[Result]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Call(items, future, contextvars.copy_context()))
        if self._in_flight is None:
            self._send_next()
        return await future  # a caller cancelled here is dropped from its batch (if not sent)

    def _send_next(self) -> None:
        batch: list[_Call[Item, Result]] = []
        size = 0
        while self._waiting:
            waiting = self._waiting[0]
            if waiting.future.done():  # its caller left before it was sent
                self._waiting.popleft()
                continue
            if batch and size + len(waiting.items) > self.max_batch_size:
                break
            batch.append(self._waiting.popleft())
            size += len(waiting.items)
        if batch:  # the model call runs in the first caller's context (its request id)
            if self._on_send is not None:
                self._on_send(size)
            self._in_flight = asyncio.get_running_loop().create_task(
                self._send(batch), context=batch[0].context
            )

    async def _send(self, batch: list[_Call[Item, Result]]) -> None:
        try:
            outcomes = await run_gathered(self._call, [one.items for one in batch])
        except asyncio.CancelledError:  # the loop is closing: so are its callers
            for one in batch:
                one.future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - reaches every caller of the batch
            for one in batch:
                if not one.future.done():
                    one.future.set_exception(exc)
        else:
            for one, outcome in zip(batch, outcomes, strict=True):
                if not one.future.done():
                    one.future.set_result(outcome)
        finally:
            self._in_flight = None
            if not asyncio.get_running_loop().is_closed():
                self._send_next()


@dataclass(frozen=True)
class _Call(Generic[Item, Result]):
    items: list[Item]
    future: asyncio.Future[Outcome[Result]]
    context: contextvars.Context

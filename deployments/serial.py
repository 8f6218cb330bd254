"""One model call at a time, in arrival order, off the replica's event loop.

A model replica may hold several requests (`MODEL_MAX_ONGOING_REQUESTS`): they wait here, in
the replica, in FIFO order, and the next one starts the moment the model is free. (A request
that Serve's router cannot place because the replica is full backs off for 25 ms, then 50,
100, ... up to 500 ms before it asks again, while the model may sit idle: benchmark 1 and 2
in docs/benchmarks.md.) A request cancelled while it waits (client gone, timeout) leaves the
queue without running.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class ModelQueue:
    """Runs blocking calls on one worker thread, one at a time, first come first served."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the worker thread, after the calls queued before it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """The same from synchronous code (the constructor's warm-up runs on the model's
        thread, where the requests will run)."""
        return self._executor.submit(fn, *args, **kwargs).result()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

"""One model call at a time, in arrival order, off the replica's event loop.

A model replica may hold several requests (`MODEL_MAX_ONGOING_REQUESTS`): they wait here, in
the replica, in FIFO order, and the next one starts the moment the model is free. (A request
that Serve's router cannot place because the replica is full backs off for 25 ms, then 50,
100, ... up to 500 ms before it asks again, while the model may sit idle: benchmark 1 and 2
in docs/benchmarks.md.) A request cancelled while it waits (client gone, timeout) leaves the
queue without running.

It is also the one place where a model's failure becomes the client's answer: the wrapper's
`ModelInputError` becomes its 4xx `ApiError`, an `ApiError` passes as it is, and anything else
is logged here with the request id and answered as a masked `ModelFailed` (503).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from core.errors import ApiError, ModelFailed, ModelInputError

T = TypeVar("T")
logger = logging.getLogger("ray.serve")


class ModelQueue:
    """Runs blocking calls on one worker thread, one at a time, first come first served."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, task: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the worker thread, after the calls queued before it.

        `task` names the work in messages ("image generation"). Errors come out as the client
        should see them (see the module's docstring).
        """
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, functools.partial(fn, *args, **kwargs)
            )
        except ModelInputError as exc:
            raise exc.to_api_error() from None
        except ApiError:
            raise
        except Exception:
            logger.exception("%s failed (request %s)", task, current_request_id())
            raise ModelFailed(f"{task} failed") from None

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """The same from synchronous code (the constructor's warm-up runs on the model's
        thread, where the requests will run)."""
        return self._executor.submit(fn, *args, **kwargs).result()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def current_request_id() -> str | None:
    """Serve's id of the request being handled (the client's X-Request-ID), if any."""
    try:
        from ray.serve.context import _get_serve_request_context
    except ImportError:  # pragma: no cover - a Ray without request contexts
        return None
    return _get_serve_request_context().request_id or None

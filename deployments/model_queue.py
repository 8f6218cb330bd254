"""One model call at a time, in arrival order, off the replica's event loop.

A model replica may hold several requests (`MODEL_MAX_ONGOING_REQUESTS`): they wait here, in
the replica, in FIFO order, and the next one starts the moment the model is free. (A request
that Serve's router cannot place because the replica is full backs off for 25 ms, then 50,
100, ... up to 500 ms before it asks again, while the model may sit idle: benchmark 1 and 2
in docs/benchmarks.md.) A request cancelled while it waits (client gone, timeout) leaves the
queue without running.

A request cancelled while its call runs (the Gateway's timeout cancels it, or the client
went away) cannot be interrupted from outside the thread, so each call gets a cancel flag
(a `threading.Event`, set the moment the caller is cancelled) that the running code can see
through `cancel_flag()`: long model calls (voice synthesis between chunks and model steps,
image generation between steps) check it and stop with `CallCancelled`, and the next request
in the queue starts then. How long a call ran on after its caller left is logged.

It is also the one place where a model's failure becomes the client's answer: the wrapper's
`ModelInputError` becomes its 4xx `ApiError`, an `ApiError` passes as it is, and anything else
is logged here with the request id and answered as a masked `ModelFailed` (503). Running out
of GPU memory answers 503 too, with a reason, and the replica stays up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, TypeVar

from core.errors import ApiError, ModelFailed, ModelInputError, ServiceUnavailable

T = TypeVar("T")
logger = logging.getLogger("ray.serve")

# The cancel flag of the call running on this thread (set by ModelQueue.run's worker).
_CANCEL_FLAG: ContextVar[threading.Event | None] = ContextVar("model_call_cancel", default=None)


class CallCancelled(Exception):
    """Raised by a model call that stopped early because its caller went away (nobody
    receives it: the caller is gone; the queue logs it)."""


def cancel_flag() -> threading.Event | None:
    """The cancel flag of the `ModelQueue.run` call running on this thread, if any: set once
    its caller has been cancelled. Model wrappers read it at the start of a call and check
    it between units of work (it is per thread: pass the Event itself to other threads)."""
    return _CANCEL_FLAG.get()


class ModelQueue:
    """Runs blocking calls on one worker thread, one at a time, first come first served."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, task: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the worker thread, after the calls queued before it.

        `task` names the work in messages ("image generation"). Errors come out as the client
        should see them (see the module's docstring).
        """
        cancel = threading.Event()
        future = self._executor.submit(_with_cancel_flag, cancel, fn, args, kwargs)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            cancel.set()  # a running call sees it at its next check and stops
            cancelled_at = time.perf_counter()
            if not future.cancel():  # not waiting any more: it runs, or has just finished
                future.add_done_callback(_StopLog(task, current_request_id(), cancelled_at))
            raise
        except ModelInputError as exc:
            raise exc.to_api_error() from None
        except ApiError:
            raise
        except Exception as exc:
            if _is_out_of_memory(exc):  # this request was too big for the model's share
                _release_cached_memory()
                logger.warning("%s ran out of GPU memory (request %s)", task, current_request_id())
                raise ServiceUnavailable(
                    f"{task} ran out of GPU memory; retry later or with a smaller request",
                    headers={"Retry-After": "1"},
                ) from None
            logger.exception("%s failed (request %s)", task, current_request_id())
            raise ModelFailed(f"{task} failed") from None

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """The same from synchronous code (the constructor's warm-up runs on the model's
        thread, where the requests will run)."""
        return self._executor.submit(fn, *args, **kwargs).result()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _with_cancel_flag(
    cancel: threading.Event, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    token = _CANCEL_FLAG.set(cancel)
    try:
        return fn(*args, **kwargs)
    finally:
        _CANCEL_FLAG.reset(token)


class _StopLog:
    """Logs, when a call whose caller left ends, how long it ran on."""

    def __init__(self, task: str, request_id: str | None, cancelled_at: float) -> None:
        self.task, self.request_id, self.cancelled_at = task, request_id, cancelled_at

    def __call__(self, future: concurrent.futures.Future[Any]) -> None:
        after = time.perf_counter() - self.cancelled_at
        error = None if future.cancelled() else future.exception()
        how = "stopped" if isinstance(error, CallCancelled) else "finished"
        logger.info(
            "%s %s %.2f s after its caller went away (request %s)",
            self.task,
            how,
            after,
            self.request_id,
        )


def current_request_id() -> str | None:
    """Serve's id of the request being handled (the client's X-Request-ID), if any."""
    try:
        from ray.serve.context import _get_serve_request_context
    except ImportError:  # pragma: no cover - a Ray without request contexts
        return None
    return _get_serve_request_context().request_id or None


def _is_out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")  # only replicas that run torch can run out of GPU memory
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


def _release_cached_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()

"""Awaiting deployment calls from the gateway, with Ray's failures mapped to API errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from core.errors import ModelFailed, Overloaded, ServiceUnavailable, find_api_error
from core.metrics import queue_rejections

logger = logging.getLogger("ray.serve")


async def await_deployment(
    response: Any, *, what: str, timeout_s: float, watch: Awaitable[None] | None = None
) -> Any:
    """Await a DeploymentResponse; raise an ApiError (503 family) on any Ray-level failure.

    `what` names the call in messages, e.g. "image generation". `watch`
    (`board.watch(MODULE)`) ends the wait with the module's 503 as soon as Serve reports one
    of its deployments failed, instead of waiting out `timeout_s` for a replica that is gone.
    """
    try:
        return await asyncio.wait_for(_resolve(response, watch), timeout=timeout_s)
    except asyncio.CancelledError:
        # The request itself was cancelled (the client went away): cancel the call too, so
        # that the model replica stops its work (deployments.model_queue's cancel flag).
        response.cancel()
        raise
    except TimeoutError:
        response.cancel()  # the model replica stops its work too (the same cancel flag)
        raise ServiceUnavailable(f"{what} timed out after {timeout_s:g}s") from None
    except BackPressureError:
        queue_rejections().inc(1, tags={"call": what})
        raise Overloaded(
            f"{what} is at capacity; retry shortly", headers={"Retry-After": "1"}
        ) from None
    except DeploymentUnavailableError:
        raise ServiceUnavailable(f"{what} is not available right now") from None
    except RayActorError:
        raise ServiceUnavailable(
            f"{what} failed: the replica died and is restarting", headers={"Retry-After": "5"}
        ) from None
    except Exception as exc:  # every other failure is mapped below
        known = find_api_error(exc)
        if known is not None:
            raise known from None
        logger.exception("%s failed", what)
        raise ModelFailed(f"{what} failed") from None


async def _resolve(response: Any, watch: Awaitable[None] | None = None) -> Any:
    if watch is None:
        return await response
    guard = asyncio.ensure_future(watch)
    call = asyncio.ensure_future(_resolve(response))
    try:
        await asyncio.wait((call, guard), return_when=asyncio.FIRST_COMPLETED)
        failed = None if call.done() else guard.exception()
        if failed is not None:  # the module failed first: give the call up with its 503
            response.cancel()
            raise failed
        return await call
    finally:
        guard.cancel()
        call.cancel()
        call.add_done_callback(_retrieve)  # a call given up ends in RequestCancelledError


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()

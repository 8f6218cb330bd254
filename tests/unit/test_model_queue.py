"""ModelQueue: one call at a time, first come first served; a waiter cancelled never runs.
And the builder's replica sizing that relies on it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from deployments.serial import ModelQueue
from serve_app.app import gateway_config, model_max_ongoing
from serve_app.settings import load_settings


def test_calls_run_one_at_a_time_in_arrival_order() -> None:
    queue = ModelQueue("test")
    order: list[int] = []
    running = 0
    most = 0
    guard = threading.Lock()

    def work(i: int) -> int:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        order.append(i)
        with guard:
            running -= 1
        return i * i

    async def main() -> list[int]:
        tasks = []
        for i in range(8):
            tasks.append(asyncio.create_task(queue.run(work, i)))
            await asyncio.sleep(0)  # arrive in order
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == [i * i for i in range(8)]
    assert order == list(range(8))
    assert most == 1
    assert queue.call(work, 9) == 81  # the synchronous form (warm-up) uses the same thread
    queue.shutdown()


def test_a_cancelled_waiter_never_runs_and_errors_propagate() -> None:
    queue = ModelQueue("test")
    ran: list[str] = []
    release = threading.Event()

    def blocker() -> None:
        release.wait(5)
        ran.append("blocker")

    def waiter() -> None:
        ran.append("waiter")

    def broken() -> None:
        raise ValueError("bad input")

    async def main() -> None:
        first = asyncio.create_task(queue.run(blocker))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(queue.run(waiter))
        await asyncio.sleep(0.05)
        second.cancel()  # the client went away while it waited
        await asyncio.sleep(0.05)  # the cancellation reaches the executor's queue
        release.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await second
        with pytest.raises(ValueError, match="bad input"):
            await queue.run(broken)

    asyncio.run(main())
    assert ran == ["blocker"]
    queue.shutdown()


def test_model_replica_sizing() -> None:
    default = load_settings(None, {"IMAGE_MAX_QUEUED_REQUESTS": 8})
    assert model_max_ongoing(default, default.image_max_queued_requests) == 1
    assert gateway_config(default).image_max_in_flight == 9  # 1 running + 8 in Serve's queue
    queued_in_replica = load_settings(
        None, {"IMAGE_MAX_QUEUED_REQUESTS": 8, "MODEL_MAX_ONGOING_REQUESTS": 9}
    )
    assert model_max_ongoing(queued_in_replica, 8) == 9
    assert gateway_config(queued_in_replica).image_max_in_flight == 9

"""ModelQueue: one call at a time, first come first served; a waiter cancelled never runs.
And the builder's replica sizing that relies on it."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from core.errors import (
    ApiError,
    Conflict,
    InvalidInput,
    ModelFailed,
    ModelInputError,
    ServiceUnavailable,
    UnreadableImage,
)
from deployments.model_queue import ModelQueue
from serve_app.deploy_configs import gateway_config
from serve_app.placement import model_max_ongoing
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
            tasks.append(asyncio.create_task(queue.run("work", work, i)))
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

    def refused() -> None:
        raise ModelInputError("text 0 is empty")

    async def main() -> None:
        first = asyncio.create_task(queue.run("blocker", blocker))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(queue.run("waiter", waiter))
        await asyncio.sleep(0.05)
        second.cancel()  # the client went away while it waited
        await asyncio.sleep(0.05)  # the cancellation reaches the executor's queue
        release.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await second
        with pytest.raises(InvalidInput, match="text 0 is empty") as refusal:
            await queue.run("refused", refused)
        assert refusal.value.status_code == 422

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


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (UnreadableImage("image 0 could not be decoded"), 415, "unsupported_media_type"),
        (Conflict("already there"), 409, "conflict"),
    ],
)
def test_errors_the_client_should_see_keep_their_status(
    error: Exception, status: int, code: str
) -> None:
    queue = ModelQueue("test")

    def fails() -> None:
        raise error

    with pytest.raises(ApiError) as caught:
        asyncio.run(queue.run("work", fails))
    assert (caught.value.status_code, caught.value.code) == (status, code)
    queue.shutdown()


@pytest.mark.parametrize(
    "error",
    [ValueError("/secret/path: shape mismatch"), RuntimeError("CUDA error at /secret/path")],
)
def test_a_model_failure_is_masked_and_logged(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """A ValueError from inside torch is not the client's fault, and no internal text leaks."""
    queue = ModelQueue("test")

    def fails() -> None:
        raise error

    with caplog.at_level(logging.ERROR, logger="ray.serve"), pytest.raises(ModelFailed) as caught:
        asyncio.run(queue.run("image generation", fails))
    body = caught.value.to_body()
    assert caught.value.status_code == 503
    assert body == {"error": {"code": "model_error", "message": "image generation failed"}}
    assert "/secret/path" in caplog.text  # the detail is in the log
    queue.shutdown()


def test_out_of_gpu_memory_answers_503_and_the_queue_keeps_serving() -> None:
    import torch

    queue = ModelQueue("test")

    def too_big() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(ServiceUnavailable, match="ran out of GPU memory") as caught:
        asyncio.run(queue.run("image generation", too_big))
    assert caught.value.status_code == 503 and caught.value.headers["Retry-After"] == "1"
    assert "20.00 GiB" not in caught.value.message
    assert asyncio.run(queue.run("work", lambda: 42)) == 42  # the replica goes on
    queue.shutdown()


def test_a_model_that_does_not_fit_its_share_says_how_to_give_it_more() -> None:
    import torch

    from deployments.gpu_budget import ModelDoesNotFit, loading_within_budget

    with (
        pytest.raises(ModelDoesNotFit, match=r"37% of the card.*\*_NUM_GPUS"),
        loading_within_budget("the image model", torch.device("cpu"), 0.37),
    ):
        raise torch.OutOfMemoryError("CUDA out of memory")


def test_a_running_call_sees_its_callers_cancellation_and_the_next_call_runs() -> None:
    """Cancelling the awaiting coroutine sets the running call's cancel flag; a call that
    checks it stops, and the queue runs the next call right after."""
    from deployments.model_queue import CallCancelled, cancel_flag

    queue = ModelQueue("test")
    started = threading.Event()
    seen: dict[str, object] = {}

    def long_work() -> None:
        flag = cancel_flag()
        seen["flag"] = flag
        started.set()
        for _ in range(500):  # 10 s unless cancelled
            if flag is not None and flag.is_set():
                seen["stopped_at"] = time.perf_counter()
                raise CallCancelled("stopped")
            time.sleep(0.02)

    async def main() -> float:
        long = asyncio.create_task(queue.run("long work", long_work))
        await asyncio.to_thread(started.wait, 5)
        cancelled_at = time.perf_counter()
        long.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long
        ran_at = await queue.run("next", time.perf_counter)
        return ran_at - cancelled_at

    waited = asyncio.run(main())
    assert isinstance(seen["flag"], threading.Event) and seen["flag"].is_set()
    assert "stopped_at" in seen
    assert waited < 2.0  # one 20 ms check away, with room for a loaded machine
    assert cancel_flag() is None  # outside a queued call there is none
    assert queue.call(cancel_flag) is None  # nor in the synchronous form (warm-up)
    assert asyncio.run(queue.run("flag", cancel_flag)) is not None
    queue.shutdown()

"""The Gateway's call batcher (serve_app/call_batching.py): concurrent calls gathered into
one model request at a time, results and errors delivered to the right caller."""

from __future__ import annotations

import asyncio

import pytest

from core.errors import InvalidInput, ModelFailed
from serve_app.call_batching import CallBatcher, run_gathered


class RecordingModel:
    """An async 'deployment call' that doubles numbers, records each request it gets and
    how many ran at once, and refuses negative numbers as the client's fault."""

    def __init__(self, delay_s: float = 0.01, fail_with: Exception | None = None) -> None:
        self.requests: list[list[int]] = []
        self.running = 0
        self.most_running = 0
        self.delay_s = delay_s
        self.fail_with = fail_with

    async def __call__(self, items: list[int]) -> list[int]:
        self.requests.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delay_s)
            if self.fail_with is not None:
                raise self.fail_with
            if any(item < 0 for item in items):
                raise InvalidInput("negative numbers are not accepted")
            return [2 * item for item in items]
        finally:
            self.running -= 1


def test_concurrent_calls_share_requests_one_at_a_time() -> None:
    model = RecordingModel()
    sent: list[int] = []

    async def main() -> list[list[int]]:
        batcher = CallBatcher(model, max_batch_size=32, on_send=sent.append)
        return await asyncio.gather(*(batcher([i, 100 + i]) for i in range(20)))

    results = asyncio.run(main())
    assert results == [[2 * i, 200 + 2 * i] for i in range(20)]
    assert model.most_running == 1
    # The first call goes alone (nobody waits for company); the other 19 arrived while it
    # ran and go together, within the size bound (16 calls of 2 items = 32).
    assert [len(r) for r in model.requests] == [2, 32, 6] == sent
    assert sorted(x for r in model.requests for x in r) == sorted(
        [i for i in range(20)] + [100 + i for i in range(20)]
    )


def test_a_call_longer_than_the_batch_is_split_and_reassembled_in_order() -> None:
    model = RecordingModel(delay_s=0)

    async def main() -> list[int]:
        return await CallBatcher(model, max_batch_size=4)(list(range(10)))

    assert asyncio.run(main()) == [2 * i for i in range(10)]
    assert [len(r) for r in model.requests] == [4, 4, 2]
    assert model.most_running == 1


def test_a_client_error_reaches_only_the_call_at_fault() -> None:
    model = RecordingModel()

    async def main() -> list[object]:
        batcher = CallBatcher(model, max_batch_size=32)
        first = asyncio.ensure_future(batcher([1]))  # goes alone
        await asyncio.sleep(0)
        rest = [batcher([2]), batcher([-3]), batcher([4])]  # gathered into the next request
        return await asyncio.gather(first, *rest, return_exceptions=True)

    first, two, bad, four = asyncio.run(main())
    assert (first, two, four) == ([2], [4], [8])
    assert isinstance(bad, InvalidInput)
    # The gathered request was refused, then each call of it was retried alone, in turn.
    assert model.requests == [[1], [2, -3, 4], [2], [-3], [4]]
    assert model.most_running == 1


def test_a_server_error_reaches_every_call_of_the_batch_without_retries() -> None:
    model = RecordingModel(fail_with=ModelFailed("text embedding failed"))

    async def main() -> list[object]:
        batcher = CallBatcher(model, max_batch_size=32)
        return await asyncio.gather(*(batcher([i]) for i in range(5)), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, ModelFailed) for o in outcomes)
    assert len(model.requests) == 2  # the lone first call, then the other four together


def test_a_caller_that_leaves_before_its_batch_is_sent_is_dropped() -> None:
    model = RecordingModel()

    async def main() -> list[int]:
        batcher = CallBatcher(model, max_batch_size=32)
        first = asyncio.ensure_future(batcher([1]))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(batcher([2]))
        stays = asyncio.ensure_future(batcher([3]))
        await asyncio.sleep(0)
        gone.cancel()
        await first
        return await stays

    assert asyncio.run(main()) == [6]
    assert model.requests == [[1], [3]]


def test_unexpected_errors_reach_the_callers_and_the_batcher_goes_on() -> None:
    model = RecordingModel(fail_with=RuntimeError("boom"))

    async def main() -> tuple[object, list[int]]:
        batcher = CallBatcher(model, max_batch_size=8)
        failed = await asyncio.gather(batcher([1]), return_exceptions=True)
        model.fail_with = None
        return failed[0], await batcher([5])

    failed, after = asyncio.run(main())
    assert isinstance(failed, RuntimeError)
    assert after == [10]


def test_run_gathered_checks_the_number_of_results() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    with pytest.raises(RuntimeError, match="3 items answered 2"):
        asyncio.run(run_gathered(short, [[1], [2, 3]]))


def test_the_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CallBatcher(RecordingModel(), max_batch_size=0)

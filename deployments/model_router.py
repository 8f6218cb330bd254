"""How callers route requests to a model replica that runs one request at a time.

With `max_ongoing_requests=1`, a request that finds the model replica busy waits in its
caller's Serve router, which asks the replica again after a backoff (Serve's default: 25 ms,
doubling up to 0.5 s). Meanwhile the model may have finished and sit idle: on a GPU, where a
CLIP call takes milliseconds and an image a fraction of a second, that gap can be most of a
request's latency under load.

`WakeOnFreeRouter` keeps Serve's routing (FIFO per caller, two random candidates, the least
loaded first) and its backoff as an upper bound, but a request waiting in backoff is woken
the moment a request this caller sent to the deployment completes: the replica has a free
slot, and the next request in line asks for it at once. Requests from other callers still
find it on their next backoff (MODEL_ROUTER_INITIAL/MAX_BACKOFF_S, 2 ms doubling to 20 ms).

Serve builds one router per caller process (a Gateway replica, the HTTP proxy, a driver with
a handle) from the class path in the deployment's `request_router_config`, so this module is
imported there: it depends on Ray alone. The wake-up overrides Serve's `_backoff` (Ray 2.60;
tests/unit/test_model_router.py checks the hooks it relies on exist).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from ray.serve.request_router import (
    FIFOMixin,
    LocalityMixin,
    MultiplexMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

CLASS_PATH = "deployments.model_router:WakeOnFreeRouter"


class WakeOnFreeRouter(FIFOMixin, LocalityMixin, MultiplexMixin, RequestRouter):
    """Serve's power-of-two-choices routing; a waiting request retries as soon as one of this
    caller's requests to the deployment completes, not only when its backoff runs out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._freed: asyncio.Future[None] | None = None

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """Two random candidates (all of them when there are two or fewer), tried least
        loaded first by Serve; the deployments this routes to have one replica."""
        if len(candidate_replicas) <= 2:
            return [candidate_replicas]
        return [random.sample(candidate_replicas, 2)]

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        """A slot is free on `replica_id`: wake the requests waiting in backoff."""
        super().on_request_completed(replica_id, internal_request_id)
        loop: asyncio.AbstractEventLoop | None = getattr(self, "_lazily_fetched_loop", None)
        if loop is None or loop.is_closed():  # nothing was ever routed: nobody waits
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        else:  # completions may be reported from another thread than the router's loop
            loop.call_soon_threadsafe(self._wake)

    async def _backoff(self, attempt: int) -> None:
        """Serve's backoff, cut short by a completion."""
        if self._freed is None or self._freed.done():
            self._freed = asyncio.get_running_loop().create_future()
        freed = self._freed
        try:
            await asyncio.wait_for(asyncio.shield(freed), self._compute_backoff_s(attempt))
        except TimeoutError:
            pass

    def _wake(self) -> None:
        if self._freed is not None and not self._freed.done():
            self._freed.set_result(None)

"""The model deployments' router (deployments/model_router.py) on a real Serve: a request
waiting for a one-at-a-time replica goes the moment its caller's previous request is done,
not when its backoff runs out; and the model deployments are bound with it."""

from __future__ import annotations

import asyncio
import time

from ray import serve

from deployments.model_router import CLASS_PATH, WakeOnFreeRouter
from serve_app.placement import model_router_config
from serve_app.settings import load_settings

CALL_S = 0.1
LONG_BACKOFF_S = 30.0  # what a queued request would wait without the wake-up


@serve.deployment(
    ray_actor_options={"num_cpus": 0},  # the session's Ray has its CPUs taken by other apps
    max_ongoing_requests=1,
    request_router_config={
        "request_router_class": CLASS_PATH,
        "initial_backoff_s": LONG_BACKOFF_S,
        "max_backoff_s": LONG_BACKOFF_S,
    },
)
class OneAtATime:
    def __init__(self) -> None:
        self.running = 0
        self.most_running = 0

    async def work(self, i: int) -> int:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        await asyncio.sleep(CALL_S)
        self.running -= 1
        return i

    def peak(self) -> int:
        return self.most_running


def test_a_queued_request_starts_when_the_replica_frees(serve_url: str) -> None:
    del serve_url  # the session's Serve
    handle = serve.run(OneAtATime.bind(), name="router-wake", route_prefix=None)
    try:
        handle.work.remote(-1).result()  # routed once: the router and its loop exist
        started = time.monotonic()
        responses = [handle.work.remote(i) for i in range(4)]
        assert [r.result(timeout_s=120) for r in responses] == [0, 1, 2, 3]
        took = time.monotonic() - started
        # Three of the four found the replica busy; each would have slept out a 30 s backoff.
        assert took < LONG_BACKOFF_S, f"took {took:.1f} s: the waiting requests were not woken"
        assert handle.peak.remote().result() == 1  # still one request at a time
    finally:
        serve.delete("router-wake")


def test_model_deployments_are_bound_with_the_router() -> None:
    config = model_router_config(load_settings(None))
    assert config["request_router_class"] == CLASS_PATH
    module, name = CLASS_PATH.split(":")
    assert (module, name) == (WakeOnFreeRouter.__module__, WakeOnFreeRouter.__name__)
    assert 0 < config["initial_backoff_s"] <= config["max_backoff_s"]

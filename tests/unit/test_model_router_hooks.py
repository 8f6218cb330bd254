"""deployments/model_router.py overrides one private hook of Serve's RequestRouter and reads
one private attribute (Ray 2.60). A Ray upgrade that renames them fails here, not silently
(the router would fall back to Serve's plain backoff)."""

from __future__ import annotations

import inspect

from ray.serve.request_router import RequestRouter


def test_serve_router_hooks_the_model_router_relies_on_exist() -> None:
    backoff = RequestRouter._backoff  # type: ignore[attr-defined]
    assert inspect.iscoroutinefunction(backoff)
    assert list(inspect.signature(backoff).parameters) == ["self", "attempt"]
    assert list(inspect.signature(RequestRouter._compute_backoff_s).parameters) == [  # type: ignore[attr-defined]
        "self",
        "attempt",
    ]
    assert "_lazily_fetched_loop" in inspect.getsource(RequestRouter.__init__)
    assert list(inspect.signature(RequestRouter.on_request_completed).parameters) == [
        "self",
        "replica_id",
        "internal_request_id",
    ]

"""Waiting for /readyz to say a state.

A Gateway replica computes its /readyz answer at most once per READINESS_CACHE_S
(serve_app/routes/health.py) and serves that answer until then, so right after a fault (or
its end) one probe may still show the state before. A test that wants to see the change
polls for it, within a bound.
"""

from __future__ import annotations

import time

import httpx

from serve_app.routes.health import READINESS_CACHE_S

# The cache, plus the storage check's own 5 s timeout, with room for a loaded machine.
READYZ_CHANGE_S = READINESS_CACHE_S + 30.0


def readyz_when(url: str, status: int, timeout_s: float = READYZ_CHANGE_S) -> httpx.Response:
    """The first /readyz answer of `url` with this status, or the last one at the deadline
    (for the caller's assert to show)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(f"{url}/readyz", timeout=30)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.25)

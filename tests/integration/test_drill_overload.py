"""Drill: 64 image generations at once against one ImageGenerator replica with a bounded queue.

The `app` fixture's generator runs one request at a time and holds at most
IMAGE_MAX_QUEUED_REQUESTS=2 more.
The excess is refused with a JSON 503 `overloaded` and `Retry-After`, by the gateway before
the prompt step (each request it admits makes one call to the loopback OpenAI server, so the
calls tell how many refusals came later, from Serve's own queue). The admitted ones produce
their PNGs, and `/healthz`, polled from another thread during the burst, answers every time.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time

import httpx
from PIL import Image

from tests.integration.conftest import DeployedApp
from tests.support.drills import (
    DrillReport,
    Timer,
    drill_report,  # noqa: F401 - fixture
    error_of,
    summary,
)

BURST = 64
BODY = {"title": "overload drill", "width": 64, "height": 64, "steps": 2}
# What shows refusals come before the prompt step and the queue is the OpenAI call count
# below; the time bound only catches a refusal that hangs. Refusals take under a second
# (docs/reliability.md), but a loaded two-core CI machine stretched one past 1.0 s.
REFUSAL_BOUND_S = float(os.environ.get("DRILL_REFUSAL_BOUND_S", "10.0"))
HEALTHZ_BOUND_S = 5.0  # /healthz took at most 0.17 s in the recorded run; room for load
HEALTHZ_POLL_S = 0.05


async def burst(url: str) -> list[tuple[httpx.Response | Exception, float]]:
    limits = httpx.Limits(max_connections=BURST + 4, max_keepalive_connections=BURST)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one(seed: int) -> tuple[httpx.Response | Exception, float]:
            timer = Timer()
            try:
                response = await client.post(
                    f"{url}/v1/images/generate", json={**BODY, "seed": seed}
                )
            except httpx.HTTPError as exc:
                return exc, timer()
            return response, timer()

        return await asyncio.gather(*(one(seed) for seed in range(BURST)))


def test_overload_refuses_the_excess_fast_and_stays_healthy(
    app: DeployedApp,
    drill_report: DrillReport,  # noqa: F811
) -> None:
    polls: list[tuple[int | str, float]] = []
    done = threading.Event()

    def poll_healthz() -> None:
        with httpx.Client(timeout=10) as client:
            for _ in range(1200):  # at most 2 minutes
                if done.is_set():
                    return
                timer = Timer()
                try:
                    polls.append((client.get(f"{app.url}/healthz").status_code, timer()))
                except httpx.HTTPError as exc:
                    polls.append((type(exc).__name__, timer()))
                time.sleep(HEALTHZ_POLL_S)

    poller = threading.Thread(target=poll_healthz, name="healthz-poller", daemon=True)
    poller.start()
    try:
        results = asyncio.run(burst(app.url))
    finally:
        done.set()
        poller.join(timeout=15)
    openai_calls = app.openai.call_count  # `app` reset the server: only the burst's calls
    burst_over = Timer()
    after = httpx.post(f"{app.url}/v1/images/generate", json={**BODY, "seed": 999}, timeout=60)
    recovery_s = burst_over()

    served = [(r, t) for r, t in results if isinstance(r, httpx.Response) and r.status_code == 200]
    refused = [(r, t) for r, t in results if isinstance(r, httpx.Response) and r.status_code == 503]
    others = [(r, t) for r, t in results if (r, t) not in served and (r, t) not in refused]
    broken = []
    for response, _ in served:
        try:
            Image.open(io.BytesIO(response.content), formats=["PNG"]).load()
        except Exception:  # noqa: BLE001 - any decoding problem is a lost answer
            broken.append(response)
    # One OpenAI call per request the gateway admitted: the admitted ones not served were
    # refused after the prompt step (by Serve's own queue), the other refusals before it.
    refused_after_prompt = openai_calls - len(served)
    drill_report.add(
        drill="Overload",
        injected=f"{BURST} concurrent generations against one ImageGenerator replica "
        "(one at a time, IMAGE_MAX_QUEUED_REQUESTS=2); /healthz polled every 0.05 s",
        sent=BURST,
        acknowledged=len(served),
        lost=len(broken) + len(others),
        orphans=None,
        recovery_s=recovery_s,
        notes=f"refused: {len(refused)} x 503 overloaded ({summary(t for _, t in refused)}), "
        f"{refused_after_prompt} of them after the prompt step; "
        f"served {summary(t for _, t in served)}; /healthz {len(polls)} polls, "
        f"{summary(t for _, t in polls)}",
    )

    assert not others, [(getattr(r, "status_code", r), t) for r, t in others]
    assert served and refused, (len(served), len(refused))
    assert not broken
    # Without the gateway's count every refusal would come after an OpenAI call.
    assert 0 <= refused_after_prompt < len(refused), (openai_calls, len(served), len(refused))
    for response, elapsed in refused:
        assert response.headers.get("retry-after") == "1", response.headers
        assert error_of(response)["code"] == "overloaded"
        assert elapsed < REFUSAL_BOUND_S, f"refused after {elapsed:.2f}s"
    assert polls, "the poller made no request"
    assert all(status == 200 for status, _ in polls), polls
    assert max(t for _, t in polls) < HEALTHZ_BOUND_S, summary(t for _, t in polls)
    assert after.status_code == 200, after.text

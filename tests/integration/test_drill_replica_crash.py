"""Drill: the VectorIndex, then the ClipEmbedder, is SIGKILLed during a burst of uploads.

Serve restarts each replica. Afterwards uploads work again, every upload that was
acknowledged (2xx, some of them before the first kill) is listed
and is its own top hit when searched by its bytes, every upload that was refused got a JSON
503 (never a 500, never a hang), and the bucket and the catalog agree: each object under the
drill's projects has its row and each row its object.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.integration.conftest import SearchApp
from tests.integration.test_image_search import make_image
from tests.support.drills import (
    DrillReport,
    Timer,
    drill_report,  # noqa: F401 - fixture
    error_of,
    lost_uploads,
    reconcile,
    refusal_codes,
    sigkill_replica,
    summary,
    wait_ready,
    wait_replaced,
)

UPLOADS = 30
PROJECTS = 6  # IMAGE_SEARCH_MAX_ELEMENTS=8 in the search app: 5 uploads per project
WORKERS = 4
SPACING_S = 0.1  # 30 uploads over about 3 s
KILL_INDEX_AT, KILL_EMBEDDER_AT = 10, 20  # after this many uploads were submitted
MIN_ACKED_BEFORE_KILL = 3
REQUEST_TIMEOUT_S = 120  # a replica restart (CLIP model load) takes 10-20 s on a busy CPU


def test_replica_crashes_mid_burst_lose_nothing(
    search_app: SearchApp,
    drill_report: DrillReport,  # noqa: F811
) -> None:
    run = uuid.uuid4().hex[:8]
    projects = [f"crash-{run}-{n}" for n in range(PROJECTS)]
    images = {i: (projects[i % PROJECTS], make_image(20_000 + i)) for i in range(UPLOADS + 1)}
    responses: dict[int, httpx.Response | Exception] = {}
    elapsed: dict[int, float] = {}

    def upload(i: int) -> None:
        project_id, data = images[i]
        timer = Timer()
        try:
            responses[i] = httpx.post(
                f"{search_app.url}/v1/projects/{project_id}/images",
                files={"file": (f"{i}.png", data)},
                timeout=REQUEST_TIMEOUT_S,
            )
        except httpx.HTTPError as exc:
            responses[i] = exc
        elapsed[i] = timer()

    def acked_so_far() -> int:
        return sum(
            1
            for r in list(responses.values())
            if isinstance(r, httpx.Response) and r.status_code in (200, 201)
        )

    killed: dict[str, str] = {}
    with ThreadPoolExecutor(WORKERS) as pool:
        for i in range(UPLOADS):
            pool.submit(upload, i)
            time.sleep(SPACING_S)
            if i + 1 == KILL_INDEX_AT:
                # Something acknowledged must be at stake: on a slow machine, wait (bounded)
                # for the first acknowledgements before pulling the plug.
                for _ in range(600):  # at most a minute
                    if acked_so_far() >= MIN_ACKED_BEFORE_KILL:
                        break
                    time.sleep(0.1)
                acked_before_kill = acked_so_far()
                killed["VectorIndex"] = sigkill_replica(search_app.app_name, "VectorIndex")
                since_first_kill = Timer()
            elif i + 1 == KILL_EMBEDDER_AT:
                killed["ClipEmbedder"] = sigkill_replica(search_app.app_name, "ClipEmbedder")
    for deployment, dead in killed.items():
        wait_replaced(search_app.app_name, deployment, dead)
    wait_ready(search_app.url)
    recovery_s = since_first_kill()
    upload(UPLOADS)  # and uploads work again

    acked = [
        i
        for i, response in responses.items()
        if isinstance(response, httpx.Response) and response.status_code in (200, 201)
    ]
    acknowledged = {responses[i].json()["id"]: images[i] for i in acked}  # type: ignore[union-attr]
    refused = {i: response for i, response in responses.items() if i not in acked}
    lost = lost_uploads(search_app, acknowledged)
    books = reconcile(search_app, projects)
    statuses = sorted(
        r.status_code if isinstance(r, httpx.Response) else type(r).__name__
        for r in responses.values()
    )
    drill_report.add(
        drill="Replica crash",
        injected="SIGKILL of the VectorIndex replica, then of the ClipEmbedder replica, "
        f"during {UPLOADS} uploads from {WORKERS} threads (then one upload after the restarts)",
        sent=len(responses),
        acknowledged=len(acknowledged),
        lost=len(lost),
        orphans=books.orphans,
        recovery_s=recovery_s,
        notes=f"acknowledged before the first kill: {acked_before_kill}; "
        f"refused: {refusal_codes(refused.values())}; "
        f"upload latency {summary(elapsed.values())}",
    )

    assert len(responses) == UPLOADS + 1
    for i, response in refused.items():
        assert isinstance(response, httpx.Response), f"upload {i}: {response!r}"
        assert response.status_code == 503, (i, response.status_code, response.text)
        error_of(response)
    assert acked_before_kill >= MIN_ACKED_BEFORE_KILL, statuses
    assert UPLOADS in acked, f"no upload works after the restarts: {responses[UPLOADS]!r}"
    assert lost == [], f"acknowledged uploads lost: {lost}"
    assert not books.objects_without_rows, sorted(books.objects_without_rows)
    assert not books.rows_without_objects, sorted(books.rows_without_objects)

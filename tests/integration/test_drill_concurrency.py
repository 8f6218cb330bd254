"""Drill: searches run while uploads and deletes go on in the same project.

One thread uploads, one deletes what was uploaded, two search (by text and by image), for a
few seconds. No request gets a 5xx, and no search returns an image whose delete was
acknowledged before that search started. Afterwards the project holds exactly the uploads
that were not deleted, each its own top hit, and the bucket matches the rows.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque

import httpx

from tests.integration.conftest import SearchApp
from tests.integration.test_image_search import make_image
from tests.support.drills import (
    DrillReport,
    Timer,
    drill_report,  # noqa: F401 - fixture
    listed_ids,
    lost_uploads,
    reconcile,
    refusal_codes,
)

DURATION_S = 6.0
MAX_LIVE = 6  # IMAGE_SEARCH_MAX_ELEMENTS=8 in the search app
MAX_REQUESTS_PER_THREAD = 60
REQUEST_TIMEOUT_S = 60  # requests take well under a second; room for a loaded machine


def test_searches_during_uploads_and_deletes(
    search_app: SearchApp,
    drill_report: DrillReport,  # noqa: F811
) -> None:
    project_id = f"race-{uuid.uuid4().hex[:8]}"
    base = f"{search_app.url}/v1/projects/{project_id}/images"
    lock = threading.Lock()
    live: deque[str] = deque()  # acknowledged uploads not yet deleted, oldest first
    uploaded: dict[str, bytes] = {}
    deleted_at: dict[str, float] = {}  # image id -> when its delete was acknowledged
    responses: list[tuple[str, httpx.Response | Exception]] = []
    stale: list[tuple[str, str]] = []  # (search kind, deleted id it returned)
    stop_at = time.monotonic() + DURATION_S

    def record(kind: str, call) -> httpx.Response | None:
        try:
            response = call()
        except httpx.HTTPError as exc:
            with lock:
                responses.append((kind, exc))
            return None
        with lock:
            responses.append((kind, response))
        return response

    # A first image, so that the project exists before the searchers start.
    first = make_image(50_000)
    response = httpx.post(base, files={"file": ("0.png", first)}, timeout=REQUEST_TIMEOUT_S)
    assert response.status_code == 201, response.text
    uploaded[response.json()["id"]] = first
    live.append(response.json()["id"])

    def uploader() -> None:
        for n in range(1, MAX_REQUESTS_PER_THREAD):
            if time.monotonic() > stop_at:
                return
            with lock:
                full = len(live) >= MAX_LIVE
            if full:
                time.sleep(0.05)
                continue
            data = make_image(50_000 + n)
            response = record(
                "upload",
                lambda n=n, data=data: httpx.post(
                    base, files={"file": (f"{n}.png", data)}, timeout=REQUEST_TIMEOUT_S
                ),
            )
            if response is not None and response.status_code == 201:
                with lock:
                    uploaded[response.json()["id"]] = data
                    live.append(response.json()["id"])

    def deleter() -> None:
        for _ in range(MAX_REQUESTS_PER_THREAD):
            if time.monotonic() > stop_at:
                return
            with lock:
                victim = live.popleft() if len(live) > 2 else None
            if victim is None:
                time.sleep(0.05)
                continue
            response = record(
                "delete",
                lambda victim=victim: httpx.delete(f"{base}/{victim}", timeout=REQUEST_TIMEOUT_S),
            )
            if response is not None and response.status_code == 200:
                with lock:
                    deleted_at[victim] = time.monotonic()
            else:
                with lock:
                    live.appendleft(victim)  # not acknowledged: still ours to delete

    def searcher(kind: str) -> None:
        for n in range(MAX_REQUESTS_PER_THREAD):
            if time.monotonic() > stop_at:
                return
            started = time.monotonic()
            with lock:
                gone_before = {i for i, at in deleted_at.items() if at < started}
                query_image = uploaded[list(uploaded)[n % len(uploaded)]]
            if kind == "text":
                call = lambda n=n: httpx.post(  # noqa: E731
                    f"{base}/search",
                    json={"query": f"picture {n}", "limit": 8},
                    timeout=REQUEST_TIMEOUT_S,
                )
            else:
                call = lambda query_image=query_image: httpx.post(  # noqa: E731
                    f"{base}/search/by-image",
                    params={"limit": 8},
                    files={"file": ("q.png", query_image)},
                    timeout=REQUEST_TIMEOUT_S,
                )
            response = record(f"search {kind}", call)
            if response is not None and response.status_code == 200:
                for hit in response.json()["results"]:
                    if hit["id"] in gone_before:
                        with lock:
                            stale.append((kind, hit["id"]))

    threads = [
        threading.Thread(target=uploader, name="uploader"),
        threading.Thread(target=deleter, name="deleter"),
        threading.Thread(target=searcher, args=("text",), name="search-text"),
        threading.Thread(target=searcher, args=("image",), name="search-image"),
    ]
    timer = Timer()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DURATION_S + 4 * REQUEST_TIMEOUT_S)
    took = timer()
    assert not any(thread.is_alive() for thread in threads)

    kept = {
        image_id: (project_id, data)
        for image_id, data in uploaded.items()
        if image_id not in deleted_at
    }
    listed = listed_ids(search_app, project_id)
    lost = lost_uploads(search_app, kept)
    resurrected = sorted(set(deleted_at) & listed)
    books = reconcile(search_app, [project_id])
    failed = [
        (kind, r)
        for kind, r in responses
        if not isinstance(r, httpx.Response) or r.status_code >= 500
    ]
    acknowledged = [
        r for _, r in responses if isinstance(r, httpx.Response) and 200 <= r.status_code < 300
    ]
    counts = {
        kind: sum(1 for k, _ in responses if k == kind)
        for kind in ("upload", "delete", "search text", "search image")
    }
    drill_report.add(
        drill="Concurrency",
        injected=f"uploads, deletes and searches (text, image) in one project from 4 threads "
        f"for {took:.1f} s",
        sent=len(responses),
        acknowledged=len(acknowledged),
        lost=len(lost) + len(resurrected) + len(stale),
        orphans=books.orphans,
        recovery_s=None,
        notes=", ".join(f"{kind} {n}" for kind, n in counts.items())
        + f"; deletes acknowledged {len(deleted_at)}; deleted images returned by later "
        f"searches {len(stale)}; 5xx/errors: {refusal_codes(r for _, r in failed)}",
    )

    assert not failed, [(kind, getattr(r, "status_code", r)) for kind, r in failed]
    assert all(counts.values()), counts
    assert deleted_at, "no delete was acknowledged"
    assert not stale, f"searches returned images deleted before they started: {stale}"
    assert listed == set(kept), (sorted(listed), sorted(kept))
    assert not resurrected
    assert lost == []
    assert books.orphans == 0, books

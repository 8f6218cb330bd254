"""Drills: object storage goes down mid-burst; the OpenAI endpoint is slow, failing or gone.

Storage: the search app's S3 server is stopped while uploads are coming in. Uploads during
the outage get a JSON 503 `storage_unavailable` quickly (every request is time-bounded),
searches, which do not touch storage, keep answering, and `/readyz` says storage failed.
Once S3 is back uploads work again, every acknowledged upload is there, and no row points at
a missing object.

OpenAI: with the loopback OpenAI server slow, answering 500 or stopped, image generation
goes on with the template prompt after at most OPENAI_MAX_RETRIES + 1 calls, and the prompt
step adds at most OPENAI_TIMEOUT_SECONDS x (OPENAI_MAX_RETRIES + 1) + slack, far less than the
30 s the slow server takes to answer.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.integration.conftest import DeployedApp, SearchApp
from tests.integration.test_image_search import make_image
from tests.support.drills import (
    DrillReport,
    Timer,
    drill_report,  # noqa: F401 - fixture
    error_of,
    lost_uploads,
    reconcile,
    refusal_codes,
    restart_fake_openai,
    summary,
    wait_ready,
)
from tests.support.readiness import readyz_when

UPLOADS = 20
PROJECTS = 4  # IMAGE_SEARCH_MAX_ELEMENTS=8 in the search app
WORKERS = 3
SPACING_S = 0.15
STOP_AT, START_AT = 6, 14  # S3 is down between these submissions
# R2_TIMEOUT_SECONDS=3 in the search app and three attempts per S3 call (botocore's
# max_attempts=2 counts retries) with backoffs under 1 s and 2 s: at most 12 s per call, and an
# upload makes at most three (the put, then a head and a delete to clean up). Refusals took
# 1.2 s at most in the recorded run; the bound only catches a request that is not time-bounded.
REQUEST_BOUND_S = 45.0


def test_storage_outage_mid_burst(
    search_app: SearchApp,
    drill_report: DrillReport,  # noqa: F811
) -> None:
    run = uuid.uuid4().hex[:8]
    base = f"outage-{run}-base"
    projects = [f"outage-{run}-{n}" for n in range(PROJECTS)]
    acknowledged: dict[str, tuple[str, bytes]] = {}
    for seed in (30_000, 30_001):
        data = make_image(seed)
        response = httpx.post(
            f"{search_app.url}/v1/projects/{base}/images",
            files={"file": ("b.png", data)},
            timeout=60,
        )
        assert response.status_code == 201, response.text
        acknowledged[response.json()["id"]] = (base, data)

    images = {i: (projects[i % PROJECTS], make_image(30_100 + i)) for i in range(UPLOADS)}
    sent: dict[int, tuple[str, bytes]] = {}
    responses: dict[int, httpx.Response | Exception] = {}
    elapsed: dict[int, float] = {}

    def upload(key: int, project_id: str, data: bytes) -> httpx.Response | Exception:
        sent[key] = (project_id, data)
        timer = Timer()
        try:
            response: httpx.Response | Exception = httpx.post(
                f"{search_app.url}/v1/projects/{project_id}/images",
                files={"file": (f"{key}.png", data)},
                timeout=REQUEST_BOUND_S + 10,
            )
        except httpx.HTTPError as exc:
            response = exc
        responses[key], elapsed[key] = response, timer()
        return response

    during: dict[str, httpx.Response] = {}
    with ThreadPoolExecutor(WORKERS) as pool:
        for i in range(UPLOADS):
            pool.submit(upload, i, *images[i])
            time.sleep(SPACING_S)
            if i + 1 == STOP_AT:
                search_app.s3.stop()
                # One request of each kind made surely inside the outage.
                inside = upload(-1, projects[0], make_image(30_099))
                assert isinstance(inside, httpx.Response), inside
                during["upload"] = inside
                during["search"] = httpx.post(
                    f"{search_app.url}/v1/projects/{base}/images/search",
                    json={"query": "a cat", "limit": 2},
                    timeout=REQUEST_BOUND_S,
                )
                during["readyz"] = readyz_when(search_app.url, 503)  # S3 stays down meanwhile
            elif i + 1 == START_AT:
                search_app.s3.start()
                back = Timer()
    # Recovery: the first upload that lands after S3 came back.
    recovery_s = None
    for attempt in range(60):
        probe = upload(100 + attempt, projects[-1], make_image(30_200 + attempt))
        if isinstance(probe, httpx.Response) and probe.status_code == 201:
            recovery_s = back()
            break
        time.sleep(0.25)
    wait_ready(search_app.url, timeout_s=60)

    acked = [
        key
        for key, response in responses.items()
        if isinstance(response, httpx.Response) and response.status_code in (200, 201)
    ]
    for key in acked:
        acknowledged[responses[key].json()["id"]] = sent[key]  # type: ignore[union-attr]
    refused = [response for key, response in responses.items() if key not in acked]
    lost = lost_uploads(search_app, acknowledged)
    books = reconcile(search_app, [base, *projects])
    drill_report.add(
        drill="Storage outage",
        injected="S3 server stopped for about 2 s during 20 uploads from 3 threads "
        "(plus one upload, one search and /readyz made inside the outage)",
        sent=len(responses) + 1,  # the uploads, and the search made inside the outage
        acknowledged=len(acked) + (during["search"].status_code == 200),
        lost=len(lost),
        orphans=books.orphans,
        recovery_s=recovery_s,
        notes=f"refused: {refusal_codes(refused)}; request latency {summary(elapsed.values())}; "
        f"objects without rows {len(books.objects_without_rows)}, "
        f"rows without objects {len(books.rows_without_objects)}",
    )

    assert during["upload"].status_code == 503, during["upload"].text
    assert error_of(during["upload"])["code"] == "storage_unavailable"
    assert during["search"].status_code == 200, during["search"].text
    assert during["readyz"].status_code == 503
    assert during["readyz"].json()["storage"]["state"] == "failed"
    assert during["readyz"].json()["storage"]["reason"]
    for response in refused:
        assert isinstance(response, httpx.Response), repr(response)
        assert response.status_code == 503, response.text
        assert error_of(response)["code"] in ("storage_unavailable", "service_unavailable")
    assert max(elapsed.values()) < REQUEST_BOUND_S, summary(elapsed.values())
    assert recovery_s is not None, "uploads did not work again after S3 came back"
    assert lost == [], f"acknowledged uploads lost: {lost}"
    assert not books.rows_without_objects, sorted(books.rows_without_objects)


OPENAI_TIMEOUT_S, OPENAI_RETRIES = 2, 1  # OPENAI_TIMEOUT_SECONDS, OPENAI_MAX_RETRIES of `app`
# The prompt step took 4.5 s at most in the recorded run (bound 4 s + slack); the slack leaves
# a loaded machine room and keeps the bound (12 s) far below the slow server's 30 s.
SLACK_S = 8.0
PROMPT_BOUND_MS = (OPENAI_TIMEOUT_S * (OPENAI_RETRIES + 1) + SLACK_S) * 1000
BODY = {"title": "햄릿", "description": "복수와 광기의 비극"}


def generate(app: DeployedApp, seed: int) -> httpx.Response:
    return httpx.post(f"{app.url}/v1/r2/images/generate", json={**BODY, "seed": seed}, timeout=120)


def test_openai_outage_falls_back_within_the_bound(
    app: DeployedApp,
    drill_report: DrillReport,  # noqa: F811
) -> None:
    baseline = generate(app, 1)
    assert baseline.status_code == 200, baseline.text
    assert baseline.json()["prompt_source"] == "openai"
    responses: list[tuple[str, httpx.Response]] = []
    calls: dict[str, int] = {}  # OpenAI calls the server received, per mode
    port = app.openai.port
    for mode in ("slow", "http_500", "stopped"):
        if mode == "stopped":
            # Like a dead process: kept-alive connections are dropped, new ones refused.
            app.openai.mode = "drop"
            app.openai.stop()
        else:
            app.openai.mode = mode  # "slow": answers after 30 s, far past the client timeout
        before = app.openai.call_count
        try:
            for seed in (2, 3):
                responses.append((mode, generate(app, seed)))
        finally:
            calls[mode] = app.openai.call_count - before
            if mode == "stopped":
                restart_fake_openai(app.openai, port)
            app.openai.reset()

    back = Timer()
    recovery_s = None
    for seed in range(10, 20):
        again = generate(app, seed)
        if again.status_code == 200 and again.json()["prompt_source"] == "openai":
            recovery_s = back()
            break
    ok = [(mode, r) for mode, r in responses if r.status_code == 200]
    lost = [
        r.json()["key"]
        for _, r in ok
        if not (app.storage_dir / r.json()["key"]).is_file()
        or (app.storage_dir / r.json()["key"]).stat().st_size != r.json()["bytes"]
    ]
    prompt_ms = {mode: [] for mode, _ in responses}
    for mode, response in ok:
        prompt_ms[mode].append(response.json()["timings"]["prompt_ms"])
    added = ", ".join(
        f"{mode} {max(values) / 1000:.2f} s" for mode, values in prompt_ms.items() if values
    )
    drill_report.add(
        drill="OpenAI outage",
        injected="the OpenAI endpoint slow (30 s), answering HTTP 500, then stopped; "
        "2 stored generations each",
        sent=len(responses),
        acknowledged=len(ok),
        lost=len(lost),
        orphans=None,
        recovery_s=recovery_s,
        notes=f"prompt step with fallback (max): {added}; bound "
        f"{PROMPT_BOUND_MS / 1000:.0f} s; baseline "
        f"{baseline.json()['timings']['prompt_ms'] / 1000:.2f} s",
    )

    for mode, response in responses:
        assert response.status_code == 200, (mode, response.text)
        body = response.json()
        assert body["prompt_source"] == "fallback", (mode, body)
        assert body["prompt_fallback_reason"], (mode, body)
        assert "햄릿" in body["prompt"]
        assert body["timings"]["prompt_ms"] < PROMPT_BOUND_MS, (mode, body["timings"])
    for mode in ("slow", "http_500"):  # two generations each, retries bounded
        assert 2 <= calls[mode] <= 2 * (OPENAI_RETRIES + 1), calls
    assert lost == []
    assert recovery_s is not None, "prompts did not come from OpenAI again after it recovered"

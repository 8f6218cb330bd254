"""Asynchronous jobs, over HTTP (httpx) and through the JobRunner's Serve handle.

Start the server with jobs on (`JOBS_ENABLED=1 bin/serve-offline`), then, from the
repository root in another shell:

    RAY_AUTH_MODE=disabled .venv/bin/python examples/jobs.py

Over HTTP: submit an image job with an Idempotency-Key, submit it again (the same job,
200), poll it to the end and download the PNG. Through the handle (a driver joined to the
local Ray cluster): submit another, read it back, cancel one that is still queued.
Set SERVER_URL for another address, API_KEY when the server has keys, SERVE_APP for an
application other than "ai".
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

import httpx

SERVER = os.environ.get("SERVER_URL", "http://127.0.0.1:8000")
HEADERS = {"Authorization": f"Bearer {os.environ['API_KEY']}"} if "API_KEY" in os.environ else {}
FINISHED = ("succeeded", "failed", "cancelled")


def over_http(client: httpx.Client) -> None:
    body = {"kind": "image", "input": {"title": "햄릿", "description": "복수와 광기의 비극"}}
    key = {"Idempotency-Key": f"example-{uuid.uuid4().hex}"}
    first = client.post("/v1/jobs", json=body, headers=key)
    first.raise_for_status()
    job = first.json()
    print(f"http: {first.status_code} {job['id']} {job['state']}")
    again = client.post("/v1/jobs", json=body, headers=key)  # a retried submit: same job
    print(f"http: resubmitted -> {again.status_code} {again.json()['id'] == job['id']}")

    deadline = time.monotonic() + 300
    while job["state"] not in FINISHED and time.monotonic() < deadline:
        time.sleep(0.5)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    print(f"http: {job['state']} after {job['attempts']} attempt(s); key {job['result_key']}")
    if job["state"] == "succeeded":
        url = job["result_url"]  # the store's URL: this server's route for the local store
        png = client.get(url.lstrip("/")).content if url.startswith("/") else httpx.get(url).content
        out = Path(tempfile.gettempdir()) / "jobs-example.png"
        out.write_bytes(png)
        print(f"http: {len(png)} bytes -> {out}")
    else:
        print(f"http: error {job['error']}")


def through_a_handle() -> None:
    import ray
    from ray import serve

    from deployments.api import APP_NAME, JOB_RUNNER, JobSubmitted, JobView, api_error

    # RAY_ADDRESS, when set, wins over "auto" (e.g. several Ray instances on one machine).
    ray.init(address="auto", log_to_driver=False, configure_logging=False)
    runner = serve.get_deployment_handle(JOB_RUNNER, app_name=os.environ.get("SERVE_APP", APP_NAME))
    body = {"title": "a lighthouse at dusk", "width": 128, "height": 128, "seed": 7}
    submitted: JobSubmitted = runner.submit.remote("image", body, owner="examples").result()
    waiting: JobSubmitted = runner.submit.remote("image", body, owner="examples").result()
    print(f"handle: {submitted.job.id} {submitted.job.state} (new: {submitted.created})")
    cancelled: JobView = runner.cancel.remote(waiting.job.id, owner="examples").result()
    print(f"handle: cancelled {cancelled.id}: {cancelled.state}")
    job: JobView = submitted.job
    deadline = time.monotonic() + 300
    while not job.finished and time.monotonic() < deadline:
        time.sleep(0.5)
        job = runner.get.remote(job.id, owner="examples").result()
    print(f"handle: {job.state}, result {job.result_key}, seed {(job.result or {}).get('seed')}")
    try:
        runner.cancel.remote(job.id, owner="examples").result()
    except Exception as exc:  # noqa: BLE001 - shown, not handled
        error = api_error(exc)
        print(f"handle: cancel again -> {error.status_code if error else exc}")


def main() -> None:
    with httpx.Client(base_url=SERVER, headers=HEADERS, timeout=60) as client:
        over_http(client)
    through_a_handle()


if __name__ == "__main__":
    main()

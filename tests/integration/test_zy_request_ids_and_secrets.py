"""Request ids reach responses and Serve's logs; no configured secret reaches a log line, an
error body or the deployment details the dashboard shows.

Named to run after the other integration modules, so the logs it scans hold their traffic.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import ray
from ray import serve

from tests.integration.conftest import DeployedApp, SearchApp
from tests.integration.test_api_keys import ENV_KEY, FILE_KEY
from tests.storage_fixtures import DUMMY_SECRET_ACCESS_KEY

OPENAI_KEY = "sk-test-not-a-real-key"  # the image app's OPENAI_API_KEY (tests/integration/conftest.py)


def session_logs() -> Path:
    return Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"


def test_request_id_is_echoed_and_logged(app: DeployedApp) -> None:
    request_id = f"req-{uuid.uuid4().hex}"
    response = httpx.post(
        f"{app.url}/v1/images/generate", json={"title": ""}, headers={"X-Request-ID": request_id}
    )
    assert response.status_code == 422
    assert response.headers["x-request-id"] == request_id
    generated = httpx.get(f"{app.url}/healthz")
    assert len(generated.headers["x-request-id"]) >= 16  # one is made up when none is given
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        logged = [
            path for path in (session_logs() / "serve").glob("*.log")
            if request_id in path.read_text(errors="replace")
        ]
        if logged:
            return
        time.sleep(0.5)
    raise AssertionError("the request id never reached Serve's logs")


def test_error_bodies_hold_no_secret(app: DeployedApp, search_app: SearchApp) -> None:
    app.openai.mode = "http_401"
    bodies = [
        httpx.post(f"{app.url}/v1/r2/images/generate", json={"title": "x"}, timeout=60).text,
        httpx.post(f"{app.url}/v1/images/generate", content=b"{", timeout=60).text,
    ]
    search_app.s3.stop()
    try:
        bodies.append(httpx.post(
            f"{search_app.url}/v1/projects/secret-scan/images",
            files={"file": ("a.png", _png())}, timeout=60,
        ).text)
        bodies.append(httpx.get(f"{search_app.url}/readyz", timeout=60).text)
    finally:
        search_app.s3.start()
    for body in bodies:
        for secret in (OPENAI_KEY, DUMMY_SECRET_ACCESS_KEY, ENV_KEY, FILE_KEY):
            assert secret not in body


def test_no_secret_in_logs_or_deployment_details(app: DeployedApp, search_app: SearchApp) -> None:
    details = json.dumps(serve.context._get_global_client().get_serve_details(), default=str)
    status = str(serve.status())
    secrets = (OPENAI_KEY, DUMMY_SECRET_ACCESS_KEY, ENV_KEY, FILE_KEY)
    for secret in secrets:
        assert secret not in details
        assert secret not in status
    leaks = []
    for path in session_logs().rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            leaks += [f"{path.name}: {secret[:6]}…" for secret in secrets if secret in text]
    assert not leaks, leaks


def _png() -> bytes:
    from tests.integration.test_image_search import make_image

    return make_image(900)

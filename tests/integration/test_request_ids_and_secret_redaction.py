"""Request ids reach responses and Serve's logs; no configured secret reaches a log line, an
error body or the deployment details the dashboard shows.

The module makes the traffic whose traces it scans (`secret_traffic`): an app of its own with
API keys (listed in a setting and in a key file), called with the right keys and wrong ones;
generations whose prompt comes from the loopback OpenAI server (sent the OpenAI key), once
with OpenAI refusing the key; uploads signed with the S3 secret key, and one while S3 is down.
Every request carries a request id, and the log scan starts only once each id is in Serve's
logs, so the logs it reads hold this traffic whatever ran before.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from serve_app.app import build_app
from tests.integration.conftest import DeployedApp, SearchApp, wait_until_ready
from tests.integration.test_image_search import make_image
from tests.storage_fixtures import DUMMY_SECRET_ACCESS_KEY
from tests.support.readiness import READYZ_CHANGE_S

OPENAI_KEY = "sk-test-not-a-real-key"  # OPENAI_API_KEY of `image_app` (integration/conftest.py)
ENV_KEY = "scan-env-key-3c9d1e"  # API_KEYS of this module's app
FILE_KEY = "scan-file-key-8f04a2"  # its API_KEYS_FILE
SECRETS = (OPENAI_KEY, DUMMY_SECRET_ACCESS_KEY, ENV_KEY, FILE_KEY)
LOG_WAIT_S = 60  # Serve's file handlers flush within a second or two; room for a loaded machine


def session_logs() -> Path:
    return Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"


def serve_log_text() -> str:
    return "\n".join(
        path.read_text(errors="replace") for path in (session_logs() / "serve").glob("*.log")
    )


@pytest.fixture(scope="module")
def secured_url(serve_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An app of this module with API keys, under /secret-scan."""
    folder = tmp_path_factory.mktemp("secret-scan")
    key_file = folder / "keys.txt"
    key_file.write_text(f"# team keys\n{FILE_KEY}\n")
    settings = {
        "IMAGE_ENABLED": False,
        "IMAGE_SEARCH_ENABLED": False,
        "VOICE_ENABLED": False,
        "LOCAL_STORAGE_DIR": str(folder / "storage"),
        "API_KEYS": f"{ENV_KEY}, scan-another-key-5b7e21",
        "API_KEYS_FILE": str(key_file),
    }
    serve.run(
        build_app({"env_files": [], "settings": settings}),
        name="secret-scan",
        route_prefix="/secret-scan",
    )
    url = f"{serve_url}/secret-scan"
    wait_until_ready(url)
    try:
        yield url
    finally:
        serve.delete("secret-scan")


@dataclass(frozen=True)
class Traffic:
    bodies: list[str]  # every response body
    request_ids: list[str]


@pytest.fixture(scope="module")
def secret_traffic(image_app: DeployedApp, search_app: SearchApp, secured_url: str) -> Traffic:
    """Requests that hand each secret to the server, the failing paths included."""
    run = uuid.uuid4().hex[:12]
    request_ids: list[str] = []
    bodies: list[str] = []

    def send(method: str, url: str, expected: int, **kwargs: object) -> httpx.Response:
        request_id = f"scan-{run}-{len(request_ids)}"
        headers = {**kwargs.pop("headers", {}), "X-Request-ID": request_id}  # type: ignore[dict-item]
        deadline = time.monotonic() + READYZ_CHANGE_S
        response = httpx.request(method, url, headers=headers, timeout=120, **kwargs)  # type: ignore[arg-type]
        # /readyz may show the state before the outage for a moment (its cache): ask again.
        while url.endswith("/readyz") and response.status_code != expected:
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)
            response = httpx.request(method, url, headers=headers, timeout=120, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == expected, (method, url, response.text)
        request_ids.append(request_id)
        bodies.append(response.text)
        return response

    # API keys: accepted (the module is off, which is the next thing said), and refused.
    generate = f"{secured_url}/v1/images/generate"
    for key in (ENV_KEY, FILE_KEY):
        send("POST", generate, 503, json={"title": "t"}, headers={"Authorization": f"Bearer {key}"})
    for header in (f"Basic {ENV_KEY}", FILE_KEY, f"Bearer {ENV_KEY}x"):
        send("POST", generate, 401, json={"title": "t"}, headers={"Authorization": header})

    # OpenAI: the key goes to the loopback server; then the server refuses it.
    openai = image_app.openai
    openai.reset()
    try:
        ok = send("POST", f"{image_app.url}/v1/r2/images/generate", 200, json={"title": "x"})
        assert ok.json()["prompt_source"] == "openai", ok.text
        assert openai.requests[-1].authorization == f"Bearer {OPENAI_KEY}"
        openai.mode = "http_401"
        refused = send("POST", f"{image_app.url}/v1/r2/images/generate", 200, json={"title": "x"})
        assert refused.json()["prompt_source"] == "fallback", refused.text
        send("POST", f"{image_app.url}/v1/images/generate", 422, content=b"{")
    finally:
        openai.reset()

    # S3: a signed upload, then one and /readyz while the server is down.
    base = f"{search_app.url}/v1/projects/secret-scan-{run}/images"
    send("POST", base, 201, files={"file": ("a.png", make_image(900))})
    search_app.s3.stop()
    try:
        send("POST", base, 503, files={"file": ("b.png", make_image(901))})
        send("GET", f"{search_app.url}/readyz", 503)
    finally:
        search_app.s3.start()
    wait_until_ready(search_app.url)
    return Traffic(bodies=bodies, request_ids=request_ids)


def test_request_id_is_echoed_and_logged(app: DeployedApp) -> None:
    request_id = f"req-{uuid.uuid4().hex}"
    response = httpx.post(
        f"{app.url}/v1/images/generate", json={"title": ""}, headers={"X-Request-ID": request_id}
    )
    assert response.status_code == 422
    assert response.headers["x-request-id"] == request_id
    generated = httpx.get(f"{app.url}/healthz")
    assert len(generated.headers["x-request-id"]) >= 16  # one is made up when none is given
    deadline = time.monotonic() + LOG_WAIT_S
    while time.monotonic() < deadline:
        if request_id in serve_log_text():
            return
        time.sleep(0.5)
    raise AssertionError("the request id never reached Serve's logs")


def test_error_bodies_hold_no_secret(secret_traffic: Traffic) -> None:
    assert len(secret_traffic.bodies) == 11
    for body in secret_traffic.bodies:
        for secret in SECRETS:
            assert secret not in body


def test_no_secret_in_logs_or_deployment_details(secret_traffic: Traffic) -> None:
    details = json.dumps(serve.context._get_global_client().get_serve_details(), default=str)
    status = str(serve.status())
    for secret in SECRETS:
        assert secret not in details
        assert secret not in status
    # Scan only once the logs hold the traffic above.
    deadline = time.monotonic() + LOG_WAIT_S
    missing = list(secret_traffic.request_ids)
    while missing and time.monotonic() < deadline:
        text = serve_log_text()
        missing = [request_id for request_id in missing if request_id not in text]
        time.sleep(0.5)
    assert not missing, f"requests never logged: {missing}"
    leaks = []
    for path in session_logs().rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            leaks += [f"{path.name}: {secret[:6]}…" for secret in SECRETS if secret in text]
    assert not leaks, leaks

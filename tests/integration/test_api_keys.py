"""API keys in a running Serve: every route but the health probes needs
`Authorization: Bearer <key>`; scoped keys (a YAML key file) get 403 outside their modules,
projects and voices and when read-only, 429 with Retry-After past their limits; mutating
requests leave one audit line in Serve's log; /readyz says only ready/not-ready without a key.
On a non-loopback bind without keys the server refuses to start (a Ray of its own on
0.0.0.0, tests/support/exposed_serve.py), unless AUTH_DISABLED=1, which logs a warning."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import ray
from ray import serve

from serve_app.app import build_app
from tests.integration.conftest import CLIP_ID, offline_settings, wait_until_ready
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.ports import free_port

ENV_KEY = "env-key-5a1f9c"
FILE_KEY = "file-key-77b2e0"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def secured_url(serve_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("secured")
    key_file = folder / "keys.txt"
    key_file.write_text(f"# team keys\n\n{FILE_KEY}\n")
    settings = {
        "IMAGE_ENABLED": False,
        "IMAGE_SEARCH_ENABLED": False,
        "VOICE_ENABLED": False,
        "LOCAL_STORAGE_DIR": str(folder / "storage"),
        "API_KEYS": f"{ENV_KEY}, other-key",
        "API_KEYS_FILE": str(key_file),
    }
    serve.run(
        build_app({"env_files": [], "settings": settings}), name="secured", route_prefix="/secured"
    )
    url = f"{serve_url}/secured"
    wait_until_ready(url)
    yield url
    serve.delete("secured")


def test_health_probes_stay_open(secured_url: str) -> None:
    assert httpx.get(f"{secured_url}/healthz").status_code == 200
    readyz = httpx.get(f"{secured_url}/readyz")
    assert readyz.status_code == 200 and readyz.json() == {"ready": True}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {ENV_KEY}"},
        {"Authorization": "Bearer  x"},
        {"Authorization": ENV_KEY},
    ],
)
def test_missing_or_wrong_key_is_401(secured_url: str, headers: dict[str, str]) -> None:
    for method, path in (
        ("POST", "/v1/images/generate"),
        ("GET", "/openapi.json"),
        ("GET", "/v1/projects/p/images"),
        ("GET", "/v1/nothing"),
    ):
        response = httpx.request(method, f"{secured_url}{path}", headers=headers, json={})
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert ENV_KEY not in response.text and FILE_KEY not in response.text


@pytest.mark.parametrize("key", [ENV_KEY, "other-key", FILE_KEY])
def test_known_keys_pass(secured_url: str, key: str) -> None:
    response = httpx.post(
        f"{secured_url}/v1/images/generate",
        headers={"Authorization": f"Bearer {key}"},
        json={"title": "t"},
    )
    # Past the key check: the module is off in this app, which is the next thing said.
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "module_disabled"


def test_invalid_key_file_stops_start_up(tmp_path: Path) -> None:
    from serve_app.settings import SettingsError

    empty = tmp_path / "empty.txt"
    empty.write_text("# no keys yet\n\n")
    bad_entry = tmp_path / "keys.yaml"
    bad_entry.write_text(f"- {{name: ops, key: {FILE_KEY}-long-enough, access: admin}}\n")
    for path, says in [
        (tmp_path / "missing", "does not exist"),
        (empty, "holds no key"),
        (tmp_path, "cannot be read"),  # a directory
        (bad_entry, "entry 1 ('ops'): access"),
    ]:
        with pytest.raises(SettingsError, match="API_KEYS_FILE") as caught:
            build_app({"env_files": [], "settings": {"API_KEYS_FILE": str(path)}})
        assert says in str(caught.value) and FILE_KEY not in str(caught.value)


# --- scoped keys ---------------------------------------------------------------------------

READER = "reader-key-3f9a1c77d2"
WRITER = "writer-key-81be04c5a9"
LIMITED = "limited-key-6d20e9b4f1"
SINGLE = "single-key-0c7f3a5e82"
OPS = "ops-key-4a8c2e6f10b3"  # given as its SHA-256 only
ALL_KEYS = (READER, WRITER, LIMITED, SINGLE, OPS)
KEY_FILE = f"""
# Scoped keys (serve_app/api_keys.py)
- name: reader
  key: {READER}
  modules: [image, image_search, voice]
  projects: ["team-a-*"]
  voices: [alice, "shared-*"]
  access: read
- name: writer
  key: {WRITER}
  projects: ["team-a-*"]
  voices: ["alice*"]
  access: read-write
- name: limited
  key: {LIMITED}
  requests_per_minute: 3
- name: single
  key: {SINGLE}
  modules: [image]
  max_concurrent: 1
- name: ops
  key_sha256: {hashlib.sha256(OPS.encode()).hexdigest()}
"""
LOG_WAIT_S = 60  # Serve's file handlers flush within a second or two; room for a loaded machine


@dataclass(frozen=True)
class ScopedApp:
    url: str
    openai: FakeOpenAIServer


@pytest.fixture(scope="module")
def scoped_app(
    serve_url: str, tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScopedApp]:
    """The image module (tiny model, prompts from an OpenAI stand-in of its own) with the
    scoped key file, under /scoped; image search and voice are off."""
    folder = tmp_path_factory.mktemp("scoped")
    key_file = folder / "keys.yaml"
    key_file.write_text(KEY_FILE)
    with FakeOpenAIServer() as fake_openai:
        settings = offline_settings(
            tiny_models_dir,
            folder / "storage",
            OPENAI_API_KEY="sk-test-not-a-real-key",
            OPENAI_BASE_URL=fake_openai.base_url,
            IMAGE_NUM_CPUS=0.25,  # beside the session's other apps on four logical CPUs
            API_KEYS_FILE=str(key_file),
        )
        serve.run(
            build_app({"env_files": [], "settings": settings}),
            name="scoped",
            route_prefix="/scoped",
        )
        url = f"{serve_url}/scoped"
        wait_until_ready(url)  # /readyz answers 200 to anyone: no detail without a key
        try:
            yield ScopedApp(url=url, openai=fake_openai)
        finally:
            serve.delete("scoped")


def bearer(key: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **headers}


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["message"], error
    assert not any(key in response.text for key in ALL_KEYS)
    return error


def test_403_outside_the_scope_names_the_reason(scoped_app: ScopedApp) -> None:
    url = scoped_app.url
    for key, method, path, scope, says in [
        (READER, "GET", "/v1/projects/team-b/images", "project", "may not touch project 'team-b'"),
        (READER, "GET", "/v1/voices/bob", "voice", "may not touch voice 'bob'"),
        (READER, "DELETE", "/v1/voices/alice", "access", "is read-only"),
        (READER, "DELETE", "/v1/projects/team-a-1/images/x1", "access", "is read-only"),
        (WRITER, "DELETE", "/v1/voices/bob", "voice", "may not touch voice 'bob'"),
        (WRITER, "GET", "/v1/projects/team-b/images", "project", "may not touch project"),
        (SINGLE, "GET", "/v1/voices/alice", "module", "may not use the voice module"),
        (SINGLE, "GET", "/v1/projects", "module", "may not use the image_search module"),
    ]:
        error = error_of(
            httpx.request(method, f"{url}{path}", headers=bearer(key), timeout=30), 403, "forbidden"
        )
        assert error["scope"] == scope and says in error["message"], (key, path, error)
    speech = httpx.post(
        f"{url}/v1/audio/speech",
        headers=bearer(READER),
        timeout=30,
        json={"model": "tts-1", "input": "hello", "voice": "bob"},
    )
    assert error_of(speech, 403, "forbidden")["scope"] == "voice"


def test_inside_the_scope_reads_and_writes_go_through(scoped_app: ScopedApp) -> None:
    url = scoped_app.url
    # exact id and prefix: past the key check, the route answers (the voice is not there)
    for key, method, path in [
        (READER, "GET", "/v1/voices/alice"),
        (READER, "GET", "/v1/voices/shared-7"),
        (WRITER, "DELETE", "/v1/voices/alice-2"),  # read-write
        (OPS, "DELETE", "/v1/voices/anyone"),  # no scope: everything
    ]:
        response = httpx.request(method, f"{url}{path}", headers=bearer(key), timeout=30)
        error_of(response, 404, "object_not_found")
    # a module that is off answers 503 only once the key may use it
    listing = httpx.get(f"{url}/v1/projects/team-a-1/images", headers=bearer(READER), timeout=30)
    error_of(listing, 503, "module_disabled")
    projects = httpx.get(f"{url}/v1/projects", headers=bearer(READER), timeout=30)
    error_of(projects, 503, "module_disabled")


def test_429_with_retry_after_past_requests_per_minute(scoped_app: ScopedApp) -> None:
    url = scoped_app.url
    client = openai.OpenAI(api_key=LIMITED, base_url=f"{url}/v1", max_retries=0, timeout=30)
    answers = [
        httpx.get(f"{url}/v1/voices/x{i}", headers=bearer(LIMITED), timeout=30) for i in range(3)
    ]
    assert [answer.status_code for answer in answers] == [404, 404, 404]
    refused = httpx.get(f"{url}/v1/voices/x4", headers=bearer(LIMITED), timeout=30)
    error = error_of(refused, 429, "rate_limited")
    assert error["limit"] == "requests_per_minute" and error["key_name"] == "limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 20  # 3/min: one every 20 s
    with pytest.raises(openai.RateLimitError) as caught:  # what an OpenAI client sees
        client.embeddings.create(model=CLIP_ID, input=["a fox"])
    assert caught.value.status_code == 429 and caught.value.response.headers["retry-after"]
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "rate_limited"
    # other keys keep their own budget; the probes are not counted
    other = httpx.get(f"{url}/v1/voices/alice", headers=bearer(READER), timeout=30)
    assert other.status_code == 404
    assert httpx.get(f"{url}/readyz", headers=bearer(LIMITED), timeout=30).status_code == 200


@pytest.mark.timeout(900)
def test_429_past_the_concurrent_model_work(scoped_app: ScopedApp) -> None:
    """`single` may run one model request at a time: a second one while the first waits on
    the (slow) prompt step is refused at once; once it is done, the next one goes."""
    url, fake_openai = scoped_app.url, scoped_app.openai
    fake_openai.reset()
    fake_openai.mode, fake_openai.delay_s = "slow", 3.0
    first: dict[str, httpx.Response] = {}

    def generate() -> None:
        first["response"] = httpx.post(
            f"{url}/v1/images/generate", headers=bearer(SINGLE), json={"title": "fox"}, timeout=600
        )

    worker = threading.Thread(target=generate)
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while fake_openai.call_count == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # the first request is inside its route, at the prompt step
        assert fake_openai.call_count > 0, "the first generation never reached the prompt step"
        second = httpx.post(
            f"{url}/v1/images/generate", headers=bearer(SINGLE), json={"title": "fox"}, timeout=60
        )
        error = error_of(second, 429, "rate_limited")
        assert error["limit"] == "max_concurrent" and second.headers["retry-after"] == "1"
    finally:
        worker.join(timeout=600)
        fake_openai.reset()
    assert first["response"].status_code == 200, first["response"].text
    third = httpx.post(
        f"{url}/v1/images/generate", headers=bearer(SINGLE), json={"title": "fox"}, timeout=600
    )
    assert third.status_code == 200 and third.headers["content-type"] == "image/png"


def serve_log_text() -> str:
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    return "\n".join(path.read_text(errors="replace") for path in logs.glob("*.log"))


def test_one_audit_line_per_mutating_request(scoped_app: ScopedApp) -> None:
    url, run = scoped_app.url, uuid.uuid4().hex[:8]
    sent = {
        f"audit-{run}-1": ("DELETE", "/v1/voices/alice-3", WRITER, "writer", 404),
        f"audit-{run}-2": ("DELETE", "/v1/voices/alice", READER, "reader", 403),
        f"audit-{run}-3": ("POST", "/v1/images/generate", "not-a-key", "-", 401),
    }
    for request_id, (method, path, key, _, status) in sent.items():
        response = httpx.request(
            method,
            f"{url}{path}",
            json={"title": "t"},
            timeout=30,
            headers=bearer(key, **{"X-Request-ID": request_id}),
        )
        assert response.status_code == status, response.text
    read_id = f"audit-{run}-read"
    httpx.get(f"{url}/v1/voices/alice", headers=bearer(READER, **{"X-Request-ID": read_id}))
    deadline = time.monotonic() + LOG_WAIT_S
    text = serve_log_text()
    while time.monotonic() < deadline and not all(f"request_id={rid}" in text for rid in sent):
        time.sleep(1)
        text = serve_log_text()
    lines = [line for line in text.splitlines() if " audit key=" in line and run in line]
    for request_id, (method, path, _, name, status) in sent.items():
        (line,) = [line for line in lines if f"request_id={request_id}" in line]
        assert f"audit key={name} method={method} " in line, line
        assert f" status={status} " in line, line
        route = "route=/v1/voices/{voice_id}" if status != 401 else f"path='{path}'"
        assert route in line, line
    assert not any(read_id in line for line in lines), "a GET is not audited"
    assert not any(key in line for line in lines for key in ALL_KEYS)


def test_readyz_says_ready_only_without_a_key(scoped_app: ScopedApp) -> None:
    url = scoped_app.url
    for headers in ({}, bearer("wrong-key")):
        answer = httpx.get(f"{url}/readyz", headers=headers, timeout=30)
        assert answer.status_code == 200 and answer.json() == {"ready": True}
    detailed = httpx.get(f"{url}/readyz", headers=bearer(READER), timeout=30)
    assert detailed.status_code == 200
    body = detailed.json()
    assert body["ready"] is True and body["modules"]["image"]["state"] == "ready"
    assert body["storage"]["backend"] == "local" and "image" in body["placement"]


# --- a non-loopback bind -------------------------------------------------------------------


@pytest.mark.timeout(900)
def test_a_non_loopback_bind_needs_keys_or_auth_disabled(tmp_path: Path) -> None:
    """Serve on 0.0.0.0 (a Ray of its own, in a subprocess): without keys the builder refuses
    (DEPLOY_FAILED with the reason) and so does the Gateway when the builder's check is
    skipped; AUTH_DISABLED=1 starts with a warning in the Gateway's log; keys start too."""
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.exposed_serve", str(port), str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["http_host"] == "0.0.0.0"
    reason = "refusing to start without API keys: Serve listens on 0.0.0.0"
    assert seen["refused"]["status"] == "DEPLOY_FAILED", seen["refused"]
    assert reason in seen["refused"]["message"] and "AUTH_DISABLED=1" in seen["refused"]["message"]
    assert seen["backstop"]["status"] == "DEPLOY_FAILED", seen["backstop"]
    assert reason in seen["backstop"]["message"], seen["backstop"]
    assert seen["open"]["status"] == "RUNNING" and seen["open"]["healthz"] == 200
    assert any("open_Gateway" in line for line in seen["warnings"]), seen["warnings"]
    assert seen["keyed"]["status"] == "RUNNING"
    assert (seen["keyed"]["without_key"], seen["keyed"]["with_key"]) == (401, 200)

"""The README's first command, for real: `bin/serve-offline` in its own process.

It starts the offline CPU profile (tiny local models, no GPU, no network), here on a free
loopback port (`SERVE_HTTP_PORT`; 8000 when unset, as the README says) so that whatever else
listens on 8000 does not matter. Its storage is pointed at an S3 server on loopback (moto)
through the environment, the way a user points it at R2, so the stored variant and a storage
outage can be checked. Every test runs twice: on Serve's default path and on its fast path
(`SERVE_FAST_PATH=1`, configs/fast-path.env: HAProxy in front, gRPC between replicas).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.storage_fixtures import DUMMY_ACCESS_KEY_ID, DUMMY_SECRET_ACCESS_KEY, r2_style_client
from tests.support.ports import free_port, port_in_use
from tests.support.readiness import readyz_when
from tests.support.s3 import RestartableS3

# Setting up, building the tiny models and starting Ray with three model replicas, for each
# serve mode, on a loaded two-core machine: more than the suite's default per-test timeout.
pytestmark = pytest.mark.timeout(1200)

REPO = Path(__file__).resolve().parents[2]
BUCKET = "offline-e2e"
READY_TIMEOUT_S = 420
GRACEFUL_STOP_TIMEOUT_S = 180  # took 37 s on a loaded two-core machine
STORAGE_OUTAGE_BOUND_S = 90
PORT_RELEASE_TIMEOUT_S = 120
SEED_BODY = {"title": "햄릿", "description": "복수와 광기의 비극"}


@pytest.fixture(scope="module")
def s3() -> Iterator[RestartableS3]:
    server = RestartableS3()
    server.start()
    r2_style_client(server.endpoint).create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "auto"}
    )
    yield server
    server.stop()


SERVER_PIDS: dict[str, int] = {}  # serve mode -> the bin/serve-offline process


@pytest.fixture(scope="module", params=["default", "fast-path"])
def serve_mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def offline_server(
    serve_mode: str, s3: RestartableS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("offline") / "serve.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")},
        "R2_ENABLED": "1",
        "R2_ENDPOINT_URL": s3.endpoint,
        "R2_ACCESS_KEY_ID": DUMMY_ACCESS_KEY_ID,
        "R2_SECRET_ACCESS_KEY": DUMMY_SECRET_ACCESS_KEY,
        "R2_BUCKET_NAME": BUCKET,
        "R2_TIMEOUT_SECONDS": "3",
        "SERVE_FAST_PATH": "1" if serve_mode == "fast-path" else "0",
        "SERVE_HTTP_PORT": str(port),
        # HAProxy's stats and metrics ports (fast path), fixed at 8404 and 9101 by default
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }
    env.pop("OPENAI_API_KEY", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(REPO / "bin" / "serve-offline")],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Ctrl-C must reach it even when this pytest was started in the background by a
            # non-interactive shell, which leaves SIGINT ignored for every child it starts.
            preexec_fn=_default_sigint,
        )
    SERVER_PIDS[serve_mode] = process.pid
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"bin/serve-offline exited:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"not ready after {READY_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
        yield url
    finally:
        stop_server(process)
        # Ray's workers leave their own process groups: wait until they let go of the port.
        deadline = time.monotonic() + PORT_RELEASE_TIMEOUT_S
        while port_in_use(port) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not port_in_use(port), (
            f"port {port} still taken {PORT_RELEASE_TIMEOUT_S} s after stop"
        )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as the README says: `serve run` shuts Serve down (HAProxy on the fast path
    included) and then Ray. Only if that hangs, the server's processes are killed: its process
    group, then whatever else still runs in its session (HAProxy has a group of its own)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
    try:
        process.wait(timeout=GRACEFUL_STOP_TIMEOUT_S)
        return
    except subprocess.TimeoutExpired:
        pass
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for pid in session_pids(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pytest.fail(f"bin/serve-offline did not stop within {GRACEFUL_STOP_TIMEOUT_S} s of Ctrl-C")


def session_pids(session_id: int) -> list[int]:
    """Processes of a session (the server's: it was started in a new one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session_id:
                    found.append(int(entry.name))
            except (OSError, ProcessLookupError):
                continue
    return found


def test_readyz_reports_ready_with_s3(offline_server: str) -> None:
    body = httpx.get(f"{offline_server}/readyz").json()
    assert body["ready"] is True
    assert body["modules"]["image"]["state"] == "ready"
    assert body["modules"]["image_search"]["state"] == "ready"
    assert body["modules"]["voice"]["state"] == "ready"
    assert body["storage"] == {
        "state": "ready",
        "enabled_by": "R2_ENABLED",
        "reason": None,
        "backend": "s3",
        "deployments": {},
    }


def haproxy_pids(session_id: int) -> list[int]:
    """HAProxy processes among those the server started (its own session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")[0]
            if Path(command.decode(errors="replace")).name == "haproxy" and (
                os.getsid(int(entry.name)) == session_id
            ):
                found.append(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return found


def test_haproxy_fronts_the_fast_path_only(offline_server: str, serve_mode: str) -> None:
    pids = haproxy_pids(SERVER_PIDS[serve_mode])
    if serve_mode == "fast-path":
        assert pids, "SERVE_FAST_PATH=1 but no HAProxy process was started"
    else:
        assert pids == []
    assert httpx.get(f"{offline_server}/healthz", timeout=10).status_code == 200


def test_seed_curl_writes_a_png(offline_server: str, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    subprocess.run(
        [
            "curl",
            "-sf",
            f"{offline_server}/v1/images/generate",
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"title": "햄릿", "description": "복수와 광기의 비극"}',
            "--output",
            str(out),
        ],
        check=True,
        timeout=120,
    )
    image = Image.open(out, formats=["PNG"])
    assert image.size == (128, 128)  # the profile's IMAGE_DEFAULT_WIDTH/HEIGHT


def test_stored_variant_lands_in_the_bucket(offline_server: str, s3: RestartableS3) -> None:
    response = httpx.post(f"{offline_server}/v1/r2/images/generate", json=SEED_BODY, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["storage"] == "s3"
    assert body["prompt_source"] == "fallback"  # no OPENAI_API_KEY in the offline profile
    head = r2_style_client(s3.endpoint).head_object(Bucket=BUCKET, Key=body["key"])
    assert head["ContentLength"] == body["bytes"]
    assert head["ContentType"] == "image/png"
    fetched = httpx.get(body["url"], timeout=30)  # a presigned GET URL
    assert fetched.status_code == 200
    Image.open(io.BytesIO(fetched.content), formats=["PNG"]).load()


def test_storage_outage_answers_503_and_recovers(offline_server: str, s3: RestartableS3) -> None:
    s3.stop()
    try:
        started = time.monotonic()
        response = httpx.post(
            f"{offline_server}/v1/r2/images/generate", json=SEED_BODY, timeout=120
        )
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "storage_unavailable"
        assert DUMMY_SECRET_ACCESS_KEY not in response.text
        # The generation, then at most three S3 attempts (R2_TIMEOUT_SECONDS=3) and backoffs;
        # well under a minute. The bound catches a request that waits without end.
        assert time.monotonic() - started < STORAGE_OUTAGE_BOUND_S
        ready = readyz_when(offline_server, 503)
        assert ready.status_code == 503, ready.text
        assert ready.json()["storage"]["state"] == "failed"
        assert httpx.get(f"{offline_server}/healthz").status_code == 200
        # Generation that does not touch storage goes on.
        plain = httpx.post(f"{offline_server}/v1/images/generate", json=SEED_BODY, timeout=120)
        assert plain.status_code == 200
    finally:
        s3.start()
    recovered = httpx.post(f"{offline_server}/v1/r2/images/generate", json=SEED_BODY, timeout=120)
    assert recovered.status_code == 200, recovered.text
    ready = readyz_when(offline_server, 200)
    assert ready.status_code == 200, ready.text


def curl(*args: str) -> str:
    done = subprocess.run(["curl", "-sf", *args], check=True, timeout=120, capture_output=True)
    return done.stdout.decode()


def test_seed_search_curls(offline_server: str, s3: RestartableS3, tmp_path: Path) -> None:
    """The seed's section 5.2 curls, as written, against the offline profile on S3."""
    image = tmp_path / "test.jpg"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image, format="JPEG")
    project = f"my_project_{time.monotonic_ns()}"
    base = f"{offline_server}/v1/projects/{project}/images"

    uploaded = json.loads(curl("-F", f"file=@{image}", base))
    assert uploaded["filename"] == "test.jpg" and uploaded["content_type"] == "image/jpeg"
    key = f"AI/SEARCH/{project}/{uploaded['id']}.jpg"
    assert r2_style_client(s3.endpoint).head_object(Bucket=BUCKET, Key=key)["ContentLength"] > 0

    listing = json.loads(curl(base))
    assert [item["id"] for item in listing["items"]] == [uploaded["id"]]
    found = json.loads(
        curl(
            "-X",
            "POST",
            f"{base}/search",
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"query": "고양이", "limit": 5}',
        )
    )
    assert [hit["id"] for hit in found["results"]] == [uploaded["id"]]

    down = tmp_path / "down.jpg"
    curl("-L", f"{base}/{uploaded['id']}/file", "--output", str(down))
    assert down.read_bytes() == image.read_bytes()

    curl("-X", "DELETE", f"{base}/{uploaded['id']}")
    assert json.loads(curl(base))["total"] == 0


def test_seed_voice_curls(offline_server: str, s3: RestartableS3, tmp_path: Path) -> None:
    """The seed's section 5.3 curls, as written, against the offline profile on S3."""
    import soundfile as sf

    from tests.integration.test_voice_routes import reference_audio

    ref = tmp_path / "ref.mp3"
    ref.write_bytes(reference_audio())
    out = tmp_path / "voice.mp3"
    curl(
        "-F",
        f"ref_audio=@{ref}",
        "-F",
        "ref_text=안녕",
        "-F",
        "text=반가워",
        f"{offline_server}/v1/voice/generate",
        "--output",
        str(out),
    )
    info = sf.info(str(out))
    assert info.format == "MP3" and info.samplerate == 24_000 and info.duration > 0

    r2_style_client(s3.endpoint).put_object(
        Bucket=BUCKET, Key="AI/VOICE/user1.mp3", Body=ref.read_bytes()
    )
    body = json.loads(
        curl(
            "-X",
            "POST",
            f"{offline_server}/v1/r2/voice/generate",
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"user_id": "user1", "text": "반가워"}',
        )
    )
    head = r2_style_client(s3.endpoint).head_object(Bucket=BUCKET, Key=body["key"])
    assert head["ContentLength"] == body["bytes"] and body["duration_s"] > 0

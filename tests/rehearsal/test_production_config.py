"""Rehearsal: `serve_config.yaml` as shipped, on a Ray head with one logical GPU.

Only `.env` differs from a production start: the models are the stand-ins of a hub cache
under the default ids (HF_HUB_OFFLINE=1), R2 is moto on loopback, OpenAI is the fake. Ray
schedules by the one GPU; torch, finding no CUDA, runs on the CPU. The seed's curl examples
are run as written (host and port as shipped: localhost:8000), so port 8000 must be free:
serve_config.yaml says 8000, and Serve has no variable that overrides a config's port.

- `serve run serve_config.yaml`: every module ready, the three models sharing the one GPU,
  every seed example passes (the R2 ones checked in the bucket, their URLs fetched), and
  `serve status` healthy;
- `serve deploy serve_config.yaml` onto the running cluster: ready, one example per module,
  `serve status` healthy.
"""

from __future__ import annotations

import filecmp
import json
import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.rehearsal.stage import SERVE_CONFIG, Rehearsal, cluster_env
from tests.support.seed_curls import (
    SEED_TITLE,
    check_mp3,
    check_png,
    json_body,
    seed_curls,
    write_seed_inputs,
)

logger = logging.getLogger(__name__)
SERVE_PORT = 8000  # serve_config.yaml's http_options.port
URL = f"http://127.0.0.1:{SERVE_PORT}"
READY_TIMEOUT_S = 600  # full-size CLIP and F5-TTS load (and warm up) on two CPU cores
SERVE_RUN_STOP_TIMEOUT_S = 90
GPU_MODELS = {"image": "ImageGenerator", "image_search": "ClipEmbedder", "voice": "VoiceCloner"}
DEPLOYMENTS = {
    "Gateway",
    "PromptOptimizer",
    "ImageGenerator",
    "ClipEmbedder",
    "VectorIndex",
    "VoiceCloner",
}
PROJECT = "my_project"  # the seed's
VOICE_USER = "user1"  # the seed's


# --- helpers ---------------------------------------------------------------------------------


def require_tools() -> None:
    """The seed's examples need curl and jq, as a user's shell would."""
    missing = [tool for tool in ("curl", "jq") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the seed's curl examples need {missing} on PATH (apt-get install curl jq)")


def require_port_8000() -> None:
    """Fail (not skip) when something holds 8000: the config as shipped needs it."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", SERVE_PORT))  # what http_options.host says
        except OSError as exc:
            pytest.fail(
                f"port {SERVE_PORT} is taken on this machine ({exc}); serve_config.yaml as "
                f"shipped serves on {SERVE_PORT} and the seed's curls call localhost:"
                f"{SERVE_PORT}. Stop whatever listens there (e.g. a bin/serve-offline) and "
                "rerun; the rehearsal does not run a modified config."
            )


def assert_config_as_shipped(rehearsal: Rehearsal) -> None:
    """The config run is the repository's, byte for byte; only .env is the user's."""
    copy = rehearsal.workdir / "serve_config.yaml"
    assert filecmp.cmp(copy, SERVE_CONFIG, shallow=False), "serve_config.yaml copy differs"
    written = "".join(f"{name}={value}\n" for name, value in rehearsal.env_file.items())
    assert (rehearsal.workdir / ".env").read_text("utf-8") == written


def applications(rehearsal: Rehearsal) -> dict[str, Any]:
    response = httpx.get(f"{rehearsal.head.dashboard_url}/api/serve/applications/", timeout=30)
    response.raise_for_status()
    return dict(response.json().get("applications") or {})


def shutdown_serve(rehearsal: Rehearsal) -> None:
    """`serve shutdown -y`, then wait until no application is left and 8000 is let go."""
    done = rehearsal.head.serve("shutdown", "-y")
    assert done.returncode == 0, done.stdout + done.stderr
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not applications(rehearsal) and not _port_taken():
            return
        time.sleep(1)
    pytest.fail(f"Serve still running 120 s after `serve shutdown -y`: {applications(rehearsal)}")


def _port_taken() -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", SERVE_PORT)) == 0


def wait_ready(
    rehearsal: Rehearsal, process: subprocess.Popen[bytes] | None, log: Path | None
) -> dict[str, Any]:
    """Poll /readyz until 200; fail with what the server and Ray said when it does not come."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: str = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"`serve run` exited {process.returncode}:\n{_tail(log)}")
        try:
            response = httpx.get(f"{URL}/readyz", timeout=10)
            if response.status_code == 200:
                logger.info("ready in %.0f s", READY_TIMEOUT_S - (deadline - time.monotonic()))
                return dict(response.json())
            last = f"{response.status_code} {response.text[:3000]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(2)
    pytest.fail(
        f"/readyz not 200 after {READY_TIMEOUT_S} s; last answer: {last}\n"
        f"serve: {_tail(log)}\nserve logs:\n{rehearsal.head.session_logs('serve/*.log')}"
    )


def _tail(path: Path | None, limit: int = 4000) -> str:
    return path.read_text(errors="replace")[-limit:] if path and path.exists() else ""


def gpu_shares(readyz: dict[str, Any]) -> dict[str, float]:
    """The GPUs /readyz says each model reserves ("0.52 GPU, memory capped ... (auto: ...)")."""
    shares = {}
    for module in GPU_MODELS:
        described = readyz["placement"][module]
        found = re.match(r"^([0-9.]+) GPU\b", described)
        assert found, f"{module} is not on the GPU: {described!r}"
        shares[module] = float(found.group(1))
    return shares


def assert_one_gpu_shared(rehearsal: Rehearsal, readyz: dict[str, Any]) -> None:
    """Every module ready with storage on S3, and the three models on the one GPU, each with
    a fraction below 1, together at most 1, as /readyz and Serve's own config both say."""
    assert readyz["ready"] is True
    assert {name: module["state"] for name, module in readyz["modules"].items()} == {
        "image": "ready",
        "image_search": "ready",
        "voice": "ready",
        "jobs": "disabled",  # JOBS_ENABLED=0 as shipped: it needs a lasting disk for its file
    }
    assert readyz["storage"]["state"] == "ready" and readyz["storage"]["backend"] == "s3"
    shares = gpu_shares(readyz)
    assert all(0 < share < 1 for share in shares.values()), shares
    assert sum(shares.values()) <= 1 + 1e-9, shares
    deployments = applications(rehearsal)["ai"]["deployments"]
    for module, name in GPU_MODELS.items():
        options = deployments[name]["deployment_config"]["ray_actor_options"]
        assert options.get("num_gpus") == pytest.approx(shares[module]), (name, options)


def assert_serve_status_healthy(rehearsal: Rehearsal) -> dict[str, Any]:
    """`serve status`: the proxy and every deployment HEALTHY, the application RUNNING."""
    done = rehearsal.head.serve("status")
    assert done.returncode == 0, done.stdout + done.stderr
    status = yaml.safe_load(done.stdout)
    assert status["proxies"] and set(status["proxies"].values()) == {"HEALTHY"}, status
    app = status["applications"]["ai"]
    deployments = {name: d["status"] for name, d in app["deployments"].items()}
    assert app["status"] == "RUNNING", status
    assert deployments == dict.fromkeys(DEPLOYMENTS, "HEALTHY"), deployments
    return dict(status)


def put_voice_reference(rehearsal: Rehearsal, ref: Path) -> None:
    """What the R2 voice example expects to find: `{VOICE_REMOTE_PREFIX}{user_id}.mp3`."""
    rehearsal.s3_client().put_object(
        Bucket=rehearsal.bucket,
        Key=f"AI/VOICE/{VOICE_USER}.mp3",
        Body=ref.read_bytes(),
        ContentType="audio/mpeg",
    )


def bucket_object(rehearsal: Rehearsal, key: str) -> bytes:
    found = rehearsal.s3_client().get_object(Bucket=rehearsal.bucket, Key=key)
    return bytes(found["Body"].read())


def bucket_has(rehearsal: Rehearsal, key: str) -> bool:
    listed = rehearsal.s3_client().list_objects_v2(Bucket=rehearsal.bucket, Prefix=key)
    return any(item["Key"] == key for item in listed.get("Contents", ()))


def upload_and_delete(rehearsal: Rehearsal, curls: dict[str, Any], cwd: Path, search: bool) -> None:
    """Seed 5.2: upload, (list, search, download,) delete; each checked in the bucket."""
    upload = json_body(curls["POST /v1/projects/{project_id}/images"].run(cwd), "upload")
    assert "id" in upload, upload
    image_id = upload["id"]
    assert upload["filename"] == "test.jpg" and upload["content_type"] == "image/jpeg", upload
    key = f"AI/SEARCH/{PROJECT}/{image_id}.jpg"
    assert bucket_object(rehearsal, key) == (cwd / "test.jpg").read_bytes()
    if search:
        listing = json_body(curls["GET /v1/projects/{project_id}/images"].run(cwd), "list")
        assert image_id in [item["id"] for item in listing["items"]], listing
        found = json_body(curls["POST /v1/projects/{project_id}/images/search"].run(cwd), "search")
        hits = found["results"]
        assert image_id in [hit["id"] for hit in hits] and len(hits) <= 5, found
        curls["GET /v1/projects/{project_id}/images/{id}/file"].run(cwd, image_id=image_id)
        assert (cwd / "down.jpg").read_bytes() == (cwd / "test.jpg").read_bytes()
    curls["DELETE /v1/projects/{project_id}/images/{id}"].run(cwd, image_id=image_id)
    assert not bucket_has(rehearsal, key)
    listing = json_body(curls["GET /v1/projects/{project_id}/images"].run(cwd), "list")
    assert image_id not in [item["id"] for item in listing["items"]], listing


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def no_app(rehearsal: Rehearsal) -> Iterator[Rehearsal]:
    """A cluster with no Serve application before and after the test."""
    assert_config_as_shipped(rehearsal)
    require_tools()
    if applications(rehearsal):
        shutdown_serve(rehearsal)
    require_port_8000()
    yield rehearsal
    shutdown_serve(rehearsal)


@pytest.fixture
def curl_dir(tmp_path: Path) -> Path:
    """Where a user runs the examples from: the files they upload are there."""
    write_seed_inputs(tmp_path)
    return tmp_path


# --- tests -----------------------------------------------------------------------------------


@pytest.mark.timeout(900)
def test_every_stand_in_loads_through_the_production_loaders(hf_home: Path, tmp_path: Path) -> None:
    """Each default model id, loaded with the production code from the hub cache alone (no
    model settings), comes from the hub cache and has the real architecture's size."""
    report_path = tmp_path / "loaded.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.rehearsal.load_stand_ins", str(report_path)],
        cwd=tmp_path,
        env=cluster_env(hf_home),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    loaded = json.loads(report_path.read_text("utf-8"))
    logger.info("loaded: %s", json.dumps(loaded, ensure_ascii=False))
    image, clip, voice = loaded["image"], loaded["clip"], loaded["voice"]
    assert (image["model"], image["source"]) == ("stabilityai/sd-turbo", "hub")
    assert image["scheduler"] == "EulerDiscreteScheduler" and image["tokenizer_vocab"] == 49408
    assert (clip["model"], clip["pretrained"], clip["dim"]) == (
        "xlm-roberta-base-ViT-B-32",
        "laion5b_s13b_b90k",
        "512",
    )
    # open_clip's ViT-B-32 image tower (87,849,216), logit_scale (1) and the tiny XLM-R text
    # tower of the xlm-roberta-base stand-in with its projection (556,352, for its 11,711-token
    # vocabulary: serve_app/tiny/clip_multilingual.py; a changed corpus changes this)
    assert clip["parameters"] == 88_405_569
    assert clip["text_vectors"] == [2, 512]
    assert voice["checkpoint_source"] == voice["vocoder_source"] == voice["asr_source"] == "hub"
    assert voice["asr_loaded"] == "true" and voice["duration_s"] > 0
    assert voice["parameters"] == 337_096_804  # F5TTS_v1_Base for f5-tts's vocabulary


@pytest.mark.timeout(1500)
def test_serve_run_as_shipped_passes_every_seed_example(no_app: Rehearsal, curl_dir: Path) -> None:
    rehearsal = no_app
    log = rehearsal.logs / "serve-run.log"
    process = rehearsal.head.popen_serve("run", "serve_config.yaml", log_path=log)
    try:
        readyz = wait_ready(rehearsal, process, log)
        assert_one_gpu_shared(rehearsal, readyz)
        curls = seed_curls()
        assert len(curls) == 9, sorted(curls)

        # 5.1: the PNG, and the stored PNG with a prompt the (fake) OpenAI model wrote.
        curls["POST /v1/images/generate"].run(curl_dir)
        assert check_png((curl_dir / "out.png").read_bytes()) == (512, 512)
        stored = json_body(curls["POST /v1/r2/images/generate"].run(curl_dir), "r2 image")
        assert stored["storage"] == "s3" and stored["key"].startswith("AI/POSTER/"), stored
        assert stored["prompt_source"] == "openai", stored
        assert rehearsal.openai.chat_requests, "the fake OpenAI server was never called"
        assert SEED_TITLE in str(rehearsal.openai.chat_requests[-1].body)
        png = bucket_object(rehearsal, stored["key"])
        assert len(png) == stored["bytes"] and check_png(png) == (512, 512)
        fetched = httpx.get(stored["url"], timeout=30)
        assert fetched.status_code == 200 and fetched.content == png, stored["url"]

        # 5.2: upload, list, search, download (a redirect to a presigned URL), delete.
        upload_and_delete(rehearsal, curls, curl_dir, search=True)

        # 5.3: multipart voice, then the stored reference's voice, result in the bucket.
        curls["POST /v1/voice/generate"].run(curl_dir)
        assert check_mp3((curl_dir / "voice.mp3").read_bytes()) > 0
        put_voice_reference(rehearsal, curl_dir / "ref.mp3")
        spoken = json_body(curls["POST /v1/r2/voice/generate"].run(curl_dir), "r2 voice")
        assert spoken["key"].startswith(f"AI/VOICE/generated/{VOICE_USER}/"), spoken
        assert spoken["storage"] == "s3", spoken
        assert spoken["ref_text_source"] in ("asr", "cached"), spoken  # no transcript stored
        mp3 = bucket_object(rehearsal, spoken["key"])
        assert len(mp3) == spoken["bytes"] and check_mp3(mp3) > 0
        fetched = httpx.get(spoken["url"], timeout=30)  # presigned: it must work
        assert fetched.status_code == 200 and fetched.content == mp3, spoken["url"]

        assert_serve_status_healthy(rehearsal)
        # The relative IMAGE_SEARCH_DB_PATH of .env lands where the cluster was started.
        assert (rehearsal.workdir / "app" / "image_search.db").is_file()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # serve run: KeyboardInterrupt, serve.shutdown()
            try:
                process.wait(timeout=SERVE_RUN_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.terminate()
                process.wait(timeout=30)


@pytest.mark.timeout(1200)
def test_serve_deploy_as_shipped_onto_the_running_cluster(
    no_app: Rehearsal, curl_dir: Path
) -> None:
    rehearsal = no_app
    done = rehearsal.head.serve("deploy", "serve_config.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    readyz = wait_ready(rehearsal, None, None)
    assert_one_gpu_shared(rehearsal, readyz)
    curls = seed_curls()

    curls["POST /v1/images/generate"].run(curl_dir)
    assert check_png((curl_dir / "out.png").read_bytes()) == (512, 512)
    upload_and_delete(rehearsal, curls, curl_dir, search=False)
    curls["POST /v1/voice/generate"].run(curl_dir)
    assert check_mp3((curl_dir / "voice.mp3").read_bytes()) > 0

    assert_serve_status_healthy(rehearsal)

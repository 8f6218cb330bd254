"""A real local Ray instance with Serve, and our application deployed on it (once per session).

Traffic goes over HTTP to 127.0.0.1 through Serve's proxy. The main app uses the tiny
diffusion checkpoint, the local store and the loopback OpenAI-compatible server; a second,
image-less app checks what a disabled module answers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from serve_app.app import build_app
from serve_app.tiny import model_settings
from tests.storage_fixtures import DUMMY_ACCESS_KEY_ID, DUMMY_SECRET_ACCESS_KEY, r2_style_client
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.ports import free_port
from tests.support.s3 import RestartableS3

# The tiny multilingual CLIP's directory under tiny_models_dir, and so its /v1/models id.
CLIP_ID = "clip-multilingual"


def wait_until_ready(url: str, timeout_s: float = 300.0) -> httpx.Response:
    """Poll /readyz until it answers 200; fail with its last body. The default gives a loaded
    two-core machine room to load the tiny models; a ready app answers in well under it."""
    deadline = time.monotonic() + timeout_s
    last: httpx.Response | None = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{url}/readyz", timeout=10)
            if last.status_code == 200:
                return last
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready: {last.text if last is not None else 'no answer'}")


@dataclass(frozen=True)
class LocalRay:
    serve_url: str
    metrics_url: str


@pytest.fixture(scope="session")
def local_ray() -> Iterator[LocalRay]:
    """Start Ray and Serve once per session; Serve's proxy and Ray's metrics endpoint listen on
    free loopback ports. Metrics are reported every second instead of every ten."""
    # Ray reads this exact, lower-case name; Ray's processes inherit it.
    os.environ["RAY_metrics_report_interval_ms"] = "1000"  # noqa: SIM112
    http_port, metrics_port = free_port(), free_port()
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        object_store_memory=256 * 1024**2,
        configure_logging=False,
        _metrics_export_port=metrics_port,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    try:
        yield LocalRay(
            serve_url=f"http://127.0.0.1:{http_port}",
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        )
    finally:
        # With no Ray left (a test shut it down), serve.shutdown() would ray.init() again and
        # attach to any Ray on the machine.
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()


@pytest.fixture(scope="session")
def serve_url(local_ray: LocalRay) -> str:
    return local_ray.serve_url


def offline_settings(models: Path, storage: Path, **extra: object) -> dict[str, object]:
    """The settings of a test app: tiny models, no GPU, local storage."""
    return {
        "IMAGE_ENABLED": True,
        "IMAGE_SEARCH_ENABLED": False,
        "VOICE_ENABLED": False,
        "R2_ENABLED": False,
        "LOCAL_STORAGE_DIR": str(storage),
        "IMAGE_MODEL": str(models / "diffusion"),
        "IMAGE_DEVICE": "cpu",
        "IMAGE_NUM_CPUS": 1,
        "TORCH_CPU_THREADS": 1,
        "IMAGE_DEFAULT_WIDTH": 64,
        "IMAGE_DEFAULT_HEIGHT": 64,
        "IMAGE_DEFAULT_STEPS": 2,
        "IMAGE_MAX_PIXELS": 256 * 256,
        "OPENAI_TIMEOUT_SECONDS": 2,
        "OPENAI_MAX_RETRIES": 1,
        "IMAGE_MAX_QUEUED_REQUESTS": 2,
        **extra,
    }


@dataclass(frozen=True)
class DeployedApp:
    url: str
    storage_dir: Path
    openai: FakeOpenAIServer


@pytest.fixture(scope="session")
def image_app(
    serve_url: str,
    tiny_models_dir: Path,
    fake_openai: FakeOpenAIServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> DeployedApp:
    """The image module with the local store, prompts from the loopback OpenAI server."""
    storage = tmp_path_factory.mktemp("storage")
    settings = offline_settings(
        tiny_models_dir,
        storage,
        OPENAI_API_KEY="sk-test-not-a-real-key",
        OPENAI_BASE_URL=fake_openai.base_url,
    )
    serve.run(build_app({"env_files": [], "settings": settings}), name="ai", route_prefix="/")
    wait_until_ready(serve_url)
    return DeployedApp(url=serve_url, storage_dir=storage, openai=fake_openai)


@pytest.fixture
def app(image_app: DeployedApp) -> Iterator[DeployedApp]:
    """The image app with the loopback OpenAI server reset to answer normally."""
    image_app.openai.reset()
    yield image_app
    image_app.openai.reset()


@pytest.fixture(scope="session")
def imageless_app_url(serve_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second app with every module off (only the gateway runs), under /noimage."""
    storage = tmp_path_factory.mktemp("storage-imageless")
    settings = {
        "IMAGE_ENABLED": False,
        "IMAGE_SEARCH_ENABLED": False,
        "VOICE_ENABLED": False,
        "LOCAL_STORAGE_DIR": str(storage),
    }
    serve.run(
        build_app({"env_files": [], "settings": settings}),
        name="imageless",
        route_prefix="/noimage",
    )
    url = f"{serve_url}/noimage"
    wait_until_ready(url)
    return url


@dataclass(frozen=True)
class SearchApp:
    url: str
    app_name: str
    bucket: str
    s3: RestartableS3
    db_path: Path

    def s3_client(self):  # -> boto3 S3 client
        return r2_style_client(self.s3.endpoint)

    def object_keys(self, prefix: str = "AI/SEARCH/") -> set[str]:
        pages = (
            self.s3_client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return {item["Key"] for page in pages for item in page.get("Contents", ())}


@pytest.fixture(scope="session")
def search_s3() -> Iterator[RestartableS3]:
    """The search app's own S3 server, so a test can take it down without hurting others."""
    server = RestartableS3()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def search_app(
    serve_url: str,
    tiny_models_dir: Path,
    search_s3: RestartableS3,
    tmp_path_factory: pytest.TempPathFactory,
) -> SearchApp:
    """The search module alone, under /search, with the tiny CLIP model and S3 on loopback."""
    bucket = "search-it"
    r2_style_client(search_s3.endpoint).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "auto"}
    )
    db_path = tmp_path_factory.mktemp("search-db") / "image_search.db"
    settings = {
        "IMAGE_ENABLED": False,
        "IMAGE_SEARCH_ENABLED": True,
        "VOICE_ENABLED": False,
        "R2_ENABLED": True,
        "R2_ENDPOINT_URL": search_s3.endpoint,
        "R2_ACCESS_KEY_ID": DUMMY_ACCESS_KEY_ID,
        "R2_SECRET_ACCESS_KEY": DUMMY_SECRET_ACCESS_KEY,
        "R2_BUCKET_NAME": bucket,
        "R2_TIMEOUT_SECONDS": 3,
        "CLIP_MODEL": f"local-dir:{tiny_models_dir / CLIP_ID}",
        "CLIP_DEVICE": "cpu",
        "CLIP_NUM_CPUS": 1,
        "TORCH_CPU_THREADS": 1,
        "IMAGE_SEARCH_DB_PATH": str(db_path),
        "IMAGE_SEARCH_DB_BACKUP_ENABLED": True,
        "IMAGE_SEARCH_DB_BACKUP_INTERVAL_SECONDS": 3600,
        "IMAGE_SEARCH_MAX_BYTES": 256 * 1024,
        "IMAGE_SEARCH_MAX_PIXELS": 4_000_000,
        "IMAGE_SEARCH_MAX_ELEMENTS": 8,
        "IMAGE_SEARCH_MAX_BATCH_FILES": 8,
    }
    serve.run(
        build_app({"env_files": [], "settings": settings}), name="search", route_prefix="/search"
    )
    url = f"{serve_url}/search"
    wait_until_ready(url)
    return SearchApp(url=url, app_name="search", bucket=bucket, s3=search_s3, db_path=db_path)


@dataclass(frozen=True)
class VoiceApp:
    url: str
    bucket: str
    s3_endpoint: str

    def s3_client(self):  # -> boto3 S3 client
        return r2_style_client(self.s3_endpoint)


def voice_settings(models: Path) -> dict[str, object]:
    """The voice module with the tiny F5-TTS, vocos and Whisper checkpoints, on the CPU."""
    return {
        "VOICE_ENABLED": True,
        **{k: v for k, v in model_settings(models).items() if k.startswith("VOICE_")},
        "VOICE_DEVICE": "cpu",
        "VOICE_NUM_CPUS": 0.5,
        "VOICE_DEFAULT_NFE_STEPS": 4,
        "VOICE_MAX_REF_BYTES": 2 * 1024 * 1024,
        "VOICE_MAX_REF_SECONDS": 30,
        "VOICE_MAX_TEXT_CHARS": 500,
        # Small, so that a test can push a saved voice out of the replica's memory
        "VOICE_PREPARED_CACHE_SIZE": 2,
    }


@pytest.fixture(scope="session")
def voice_app(serve_url: str, tiny_models_dir: Path, moto_server: str) -> VoiceApp:
    """The voice module alone, under /voice, with tiny models and S3 on loopback."""
    bucket = "voice-it"
    r2_style_client(moto_server).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "auto"}
    )
    settings = {
        "IMAGE_ENABLED": False,
        "IMAGE_SEARCH_ENABLED": False,
        "R2_ENABLED": True,
        "R2_ENDPOINT_URL": moto_server,
        "R2_ACCESS_KEY_ID": DUMMY_ACCESS_KEY_ID,
        "R2_SECRET_ACCESS_KEY": DUMMY_SECRET_ACCESS_KEY,
        "R2_BUCKET_NAME": bucket,
        "TORCH_CPU_THREADS": 1,
        **voice_settings(tiny_models_dir),
    }
    serve.run(
        build_app({"env_files": [], "settings": settings}), name="voice", route_prefix="/voice"
    )
    url = f"{serve_url}/voice"
    wait_until_ready(url)
    return VoiceApp(url=url, bucket=bucket, s3_endpoint=moto_server)

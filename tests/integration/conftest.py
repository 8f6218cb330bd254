"""A real local Ray instance with Serve, and our application deployed on it (once per session).

Traffic goes over HTTP to 127.0.0.1 through Serve's proxy. The main app uses the tiny
diffusion checkpoint, the local store and the loopback OpenAI-compatible server; a second,
image-less app checks what a disabled module answers.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from serve_app.app import build_app
from tests.support.fake_openai import FakeOpenAIServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, timeout_s: float = 180.0) -> httpx.Response:
    """Poll /readyz until it answers 200; fail with its last body."""
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


@pytest.fixture(scope="session")
def serve_url() -> Iterator[str]:
    """Start Ray and Serve once per session; Serve's proxy listens on a free loopback port."""
    port = free_port()
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        object_store_memory=256 * 1024**2,
        configure_logging=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


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

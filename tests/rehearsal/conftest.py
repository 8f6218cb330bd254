"""The rehearsal tier: the production config as shipped, on a one-GPU Ray head.

Pieces built once for this package (and torn down when its tests are done, not at the end
of a whole-suite session): a Hugging Face hub cache holding stand-ins under the default
model ids (`serve_app.tiny.hub_cache`), moto's S3 on loopback with a bucket, a fake
OpenAI-compatible server, a working directory holding `.env` (only settings a user would
write there) beside a byte-identical copy of `serve_config.yaml`, and a Ray head started in
that directory with `ray start --head --num-gpus 1` (HF_HOME and HF_HUB_OFFLINE=1 in its
environment). Every test here is `slow` and `rehearsal`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rehearsal.ray_head import RayHead
from tests.rehearsal.stage import (
    BUCKET,
    HERE,
    OPENAI_KEY,
    SERVE_CONFIG,
    Rehearsal,
    cluster_env,
    env_file_settings,
)
from tests.storage_fixtures import r2_style_client
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.s3 import RestartableS3

MARKERS = ("slow", "rehearsal")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark this folder's tests `slow` and `rehearsal` (the hook sees every collected item)."""
    for item in items:
        if HERE in Path(str(item.path)).parents:
            for marker in MARKERS:
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="package")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hub cache with every stand-in (the full-size CLIP and F5-TTS: built once)."""
    from serve_app.tiny.hub_cache import build_hub_cache

    home = tmp_path_factory.mktemp("hf_home")
    build_hub_cache(home)
    return home


@pytest.fixture(scope="package")
def rehearsal_s3() -> Iterator[RestartableS3]:
    server = RestartableS3()
    server.start()
    r2_style_client(server.endpoint).create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "auto"}
    )
    yield server
    server.stop()


@pytest.fixture(scope="package")
def rehearsal_openai() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        server.expected_api_key = OPENAI_KEY  # another key would be a 401 and the fallback
        yield server


@pytest.fixture(scope="package")
def rehearsal(
    tmp_path_factory: pytest.TempPathFactory,
    hf_home: Path,
    rehearsal_s3: RestartableS3,
    rehearsal_openai: FakeOpenAIServer,
) -> Iterator[Rehearsal]:
    """The working directory (`.env` + serve_config.yaml) and the one-GPU Ray head in it."""
    from serve_app.settings import Settings

    root = tmp_path_factory.mktemp("rehearsal")
    workdir = root / "work"
    workdir.mkdir()
    shutil.copyfile(SERVE_CONFIG, workdir / "serve_config.yaml")
    settings = env_file_settings(rehearsal_s3.endpoint, rehearsal_openai.base_url)
    undocumented = sorted(name for name in settings if name.lower() not in Settings.model_fields)
    assert not undocumented, f"not settings of serve_app/settings.py: {undocumented}"
    (workdir / ".env").write_text(
        "".join(f"{name}={value}\n" for name, value in settings.items()), "utf-8"
    )

    env = cluster_env(hf_home)
    head = RayHead(workdir=workdir, env=env)
    head.start()
    try:
        yield Rehearsal(head, workdir, root, rehearsal_s3, BUCKET, rehearsal_openai, settings)
    finally:
        head.serve("shutdown", "-y")
        head.stop()

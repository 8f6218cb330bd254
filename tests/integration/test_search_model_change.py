"""A CLIP model change on a running catalog, through Serve and HTTP (issue 15, item 2).

The app starts with the English tiny CLIP and takes 160 uploads (originals in S3 on
loopback), then is redeployed with the multilingual one while S3 is down: the re-embedding
waits, and searches must answer from the old model meanwhile. S3 comes back, the
VectorIndex is killed with SIGKILL midway through the re-embedding and its replacement
resumes. Searches run all along: every answer must be exactly the old model's ranking
(scores included) or exactly the new one's, never a mixture, and once the new one has
answered the old one never answers again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from ray import serve

from deployments.clip_model import ClipModel
from deployments.configs import ClipEmbedderConfig
from serve_app.app import build_app
from tests.integration.conftest import CLIP_ID, wait_until_ready
from tests.integration.test_image_search import make_image
from tests.storage_fixtures import DUMMY_ACCESS_KEY_ID, DUMMY_SECRET_ACCESS_KEY, r2_style_client
from tests.support.drills import sigkill_replica, wait_replaced
from tests.support.s3 import RestartableS3

pytestmark = pytest.mark.slow

APP, ROUTE, BUCKET = "switch", "/switch", "switch-it"
PROJECT = "model-change"
IMAGES = 160
QUERIES = ("고양이", "a photo of a cat", "猫の写真")
TOP = 5


@dataclass
class Rankings:
    """What each model answers for each query: [(id, score)] best first."""

    old: dict[str, list[tuple[str, float]]]
    new: dict[str, list[tuple[str, float]]]


@dataclass
class Observed:
    """What the searching thread saw: which model answered, in order, and failures."""

    answers: list[tuple[float, str]] = field(default_factory=list)  # (when, "old" | "new")
    mixed: list[dict[str, Any]] = field(default_factory=list)
    unavailable: int = 0


def settings(models: Path, s3: RestartableS3, db: Path, clip: str) -> dict[str, object]:
    return {
        "IMAGE_ENABLED": False,
        "IMAGE_SEARCH_ENABLED": True,
        "VOICE_ENABLED": False,
        "R2_ENABLED": True,
        "R2_ENDPOINT_URL": s3.endpoint,
        "R2_ACCESS_KEY_ID": DUMMY_ACCESS_KEY_ID,
        "R2_SECRET_ACCESS_KEY": DUMMY_SECRET_ACCESS_KEY,
        "R2_BUCKET_NAME": BUCKET,
        "R2_TIMEOUT_SECONDS": 2,
        "CLIP_MODEL": f"local-dir:{models / clip}",
        "CLIP_DEVICE": "cpu",
        "CLIP_NUM_CPUS": 0.01,  # the session Ray's CPUs are taken by the other apps
        "TORCH_CPU_THREADS": 1,
        "IMAGE_SEARCH_DB_PATH": str(db),
        "IMAGE_SEARCH_DB_BACKUP_ENABLED": False,
        "IMAGE_SEARCH_MAX_ELEMENTS": 1000,
        "IMAGE_SEARCH_MAX_BATCH_FILES": 32,
        "IMAGE_SEARCH_REEMBED_BATCH": 1,  # one image per request: slow enough to interrupt
    }


def deploy(config: dict[str, object], url: str | None = None) -> None:
    """Run the app (serve.run returns once its replicas are up); with `url`, also wait for
    /readyz, which needs the object store."""
    serve.run(build_app({"env_files": [], "settings": config}), name=APP, route_prefix=ROUTE)
    if url is not None:
        wait_until_ready(url)


def ranking(model: ClipModel, images: dict[str, bytes]) -> dict[str, list[tuple[str, float]]]:
    ids = list(images)
    vectors = model.embed_images([images[i] for i in ids])
    found = {}
    for query, q in zip(QUERIES, model.embed_texts(list(QUERIES)), strict=True):
        scores = vectors @ q
        order = np.argsort(-scores)[:TOP]
        found[query] = [(ids[i], float(scores[i])) for i in order]
    return found


def which(answer: list[tuple[str, float]], query: str, rankings: Rankings) -> str | None:
    for name, expected in (("old", rankings.old[query]), ("new", rankings.new[query])):
        if [i for i, _ in answer] == [i for i, _ in expected] and np.allclose(
            [s for _, s in answer], [s for _, s in expected], atol=2e-3
        ):
            return name
    return None


def search_continuously(url: str, rankings: Rankings, stop: threading.Event) -> Observed:
    observed = Observed()
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            for query in QUERIES:
                try:
                    response = client.post(
                        f"{url}/v1/projects/{PROJECT}/images/search",
                        json={"query": query, "limit": TOP},
                    )
                except httpx.TransportError:  # a Gateway replica being replaced
                    response = None
                if response is None or response.status_code == 503:  # or the index
                    observed.unavailable += 1
                    time.sleep(0.05)
                    continue
                assert response.status_code == 200, response.text
                answer = [(r["id"], r["score"]) for r in response.json()["results"]]
                name = which(answer, query, rankings)
                if name is None:
                    observed.mixed.append({"query": query, "answer": answer})
                else:
                    observed.answers.append((time.monotonic(), name))
    return observed


def embedding_status() -> dict[str, Any]:
    handle = serve.get_deployment_handle("VectorIndex", app_name=APP)
    return handle.embedding_status.remote().result(timeout_s=30)


@pytest.fixture
def switch_s3() -> Iterator[RestartableS3]:
    server = RestartableS3()
    server.start()
    r2_style_client(server.endpoint).create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "auto"}
    )
    yield server
    server.stop()


@pytest.fixture
def switch_app(serve_url: str) -> Iterator[str]:
    yield f"{serve_url}{ROUTE}"
    serve.delete(APP)


def search_once(url: str, query: str) -> list[tuple[str, float]]:
    """One search. Serve replaces a one-replica deployment by stopping the old replica
    before the new one has loaded, so a 503 model_not_ready in that window is waited out."""
    deadline = time.monotonic() + 120
    while True:
        response = httpx.post(
            f"{url}/v1/projects/{PROJECT}/images/search",
            json={"query": query, "limit": TOP},
            timeout=60,
        )
        if response.status_code != 503 or time.monotonic() > deadline:
            break
        assert response.json()["error"]["code"] == "model_not_ready", response.text
        time.sleep(0.1)
    assert response.status_code == 200, response.text
    return [(r["id"], r["score"]) for r in response.json()["results"]]


def test_model_change_re_embeds_in_the_background_without_mixing(
    switch_app: str, switch_s3: RestartableS3, tiny_models_dir: Path, tmp_path: Path
) -> None:
    url, s3, db = switch_app, switch_s3, tmp_path / "image_search.db"
    deploy(settings(tiny_models_dir, s3, db, "clip"), url)
    images = {}
    for start in range(0, IMAGES, 32):
        files = [("files", (f"{n}.png", make_image(10_000 + n))) for n in range(start, start + 32)]
        response = httpx.post(f"{url}/v1/projects/{PROJECT}/images/batch", files=files, timeout=120)
        assert response.status_code == 201, response.text[:300]
        for item, (_, (_, data)) in zip(response.json()["items"], files, strict=True):
            images[item["id"]] = data
    rankings = Rankings(
        old=ranking(ClipModel(clip_config(tiny_models_dir / "clip")), images),
        new=ranking(ClipModel(clip_config(tiny_models_dir / CLIP_ID)), images),
    )
    assert rankings.old != rankings.new

    stop = threading.Event()
    result: list[Observed] = []
    searcher = threading.Thread(
        target=lambda: result.append(search_continuously(url, rankings, stop))
    )
    searcher.start()
    try:
        s3.stop()  # the originals are out of reach: the re-embedding has to wait
        deploy(settings(tiny_models_dir, s3, db, CLIP_ID))
        deadline = time.monotonic() + 120
        while (status := embedding_status()["reembedding"]) is None or not status["last_error"]:
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status["state"] == "waiting" and status["done"] == 0, status
        # Search answers meanwhile (once the new ClipEmbedder is up), from the old model's
        # vectors with the old model's queries.
        for query in QUERIES:
            assert which(search_once(url, query), query, rankings) == "old"
        s3.start()
        # Kill the index while it re-embeds, once some of the work is committed.
        while (status := embedding_status()["reembedding"])["done"] < 8:
            assert status["state"] != "done", "finished before the kill"
            assert time.monotonic() < deadline + 60, status
            time.sleep(0.02)
        assert status["done"] < IMAGES, status
        dead = sigkill_replica(APP, "VectorIndex")
        wait_replaced(APP, "VectorIndex", dead)
        resumed = embedding_status()
        assert resumed["configured"].startswith(f"local-dir:{tiny_models_dir / CLIP_ID}")
        # the replacement starts from what was committed, not from zero
        assert resumed["reembedding"]["done"] >= 8
        deadline = time.monotonic() + 180
        while embedding_status()["reembedding"]["state"] != "done":
            assert time.monotonic() < deadline, embedding_status()
            time.sleep(0.2)
        time.sleep(1.0)  # a few searches after the switch
    finally:
        stop.set()
        searcher.join(timeout=60)
    (observed,) = result
    assert observed.mixed == []
    names = [name for _, name in observed.answers]
    assert "new" in names
    assert "old" not in names[names.index("new") :]

    ready = httpx.get(f"{url}/readyz", timeout=30).json()
    embedding = ready["modules"]["image_search"]["detail"]["vector_index"]["embedding"]
    assert embedding["active"] == embedding["configured"]
    assert embedding["reembedding"]["done"] == IMAGES


def clip_config(path: Path) -> ClipEmbedderConfig:
    return ClipEmbedderConfig(model=f"local-dir:{path}", device="cpu", warm_up=False)

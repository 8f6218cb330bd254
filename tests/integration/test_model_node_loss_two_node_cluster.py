"""A simulated two-node cluster: a CPU head and a "GPU" model node that is lost and replaced.

`ray.cluster_utils.Cluster` runs both nodes as separate raylets on this machine. The head
holds the custom resource `head` and runs Serve's proxy; the worker holds `gpu_node`, which
the model deployments require (MODEL_NODE_RESOURCE=gpu_node).

The cluster is driven by a process of its own (tests/support/cluster.py), so the session's
single-node Ray (`local_ray`) is left alone and this module can run before, between or after
the others. Each test starts from a cluster with a model node (`cluster_app` adds one when
an earlier test left it without) and uploads into a project of its own.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import CLIP_ID, offline_settings, wait_until_ready
from tests.support.cluster import ClusterProcess, ClusterSpec
from tests.support.ports import free_port

# Starting two raylets and loading the models, then losing and replacing a node, on a loaded
# two-core machine: several minutes, more than the suite's default per-test timeout.
pytestmark = pytest.mark.timeout(1200)

# REQUEST_TIMEOUT_SECONDS, the longest the gateway waits for a model, is long on purpose: a
# call to a lost model must end when Serve reports the deployment failed, not by timing out.
REQUEST_TIMEOUT_S = 120
PROXY_TIMEOUT_S = 180  # Serve's own request_timeout_s (HTTP 408 beyond it)
CLIENT_TIMEOUT_S = PROXY_TIMEOUT_S + 30
# A request that did not wait for REQUEST_TIMEOUT_S ends well before it: half of it leaves
# the loaded machine a minute for Serve to notice the lost node.
NOT_THE_TIMEOUT_S = REQUEST_TIMEOUT_S / 2
# Once Serve reports the models failed, the gateway refuses at once; this bound only has to
# tell "at once" from "waited for a model" (REQUEST_TIMEOUT_S), with room for a loaded machine.
REFUSED_AT_ONCE_S = 20
READY_TIMEOUT_S = 300
MODEL_DEPLOYMENTS = {"ImageGenerator", "ClipEmbedder"}
HEAD_DEPLOYMENTS = {"Gateway", "PromptOptimizer", "VectorIndex"}
GENERATE = {"title": "햄릿", "description": "복수와 광기의 비극", "seed": 7}


@dataclass(frozen=True)
class ClusterApp:
    url: str
    cluster: ClusterProcess


@dataclass
class Project:
    """A project of one test, and what it uploaded (image id -> bytes)."""

    app: ClusterApp
    name: str
    images: dict[str, bytes]


def make_image(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def running_cluster(
    tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterApp]:
    """A head (2 CPUs, resource `head`, dashboard) and a model node, the app `ai` on them."""
    tmp = tmp_path_factory.mktemp("cluster")
    settings = offline_settings(
        tiny_models_dir,
        tmp / "storage",
        IMAGE_SEARCH_ENABLED=True,
        CLIP_MODEL=f"local-dir:{tiny_models_dir / CLIP_ID}",
        CLIP_DEVICE="cpu",
        IMAGE_SEARCH_DB_PATH=str(tmp / "db" / "image_search.db"),
        IMAGE_SEARCH_DB_BACKUP_ENABLED=False,
        MODEL_NODE_RESOURCE="gpu_node",
        REQUEST_TIMEOUT_SECONDS=REQUEST_TIMEOUT_S,
        IMAGE_NUM_CPUS=0.5,
        CLIP_NUM_CPUS=0.5,
    )
    http_port = free_port()
    cluster = ClusterProcess(
        ClusterSpec(
            dashboard_port=free_port(),
            http_port=http_port,
            proxy_timeout_s=PROXY_TIMEOUT_S,
            settings=settings,
        )
    )
    try:
        url = f"http://127.0.0.1:{http_port}"
        wait_until_ready(url, timeout_s=READY_TIMEOUT_S)
        yield ClusterApp(url=url, cluster=cluster)
    finally:
        cluster.close()


@pytest.fixture
def cluster_app(running_cluster: ClusterApp) -> ClusterApp:
    """The cluster with a model node and every module ready, whatever ran before."""
    if not running_cluster.cluster.has_model_node():
        running_cluster.cluster.add_model_node()
    wait_until_ready(running_cluster.url, timeout_s=READY_TIMEOUT_S)
    return running_cluster


@pytest.fixture
def project(cluster_app: ClusterApp) -> Project:
    return Project(app=cluster_app, name=f"cluster-{uuid.uuid4().hex[:8]}", images={})


def generate(app: ClusterApp) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(f"{app.url}/v1/images/generate", json=GENERATE, timeout=CLIENT_TIMEOUT_S)
    return response, time.monotonic() - started


def upload(project: Project, seed: int) -> str:
    data = make_image(seed)
    response = httpx.post(
        f"{project.app.url}/v1/projects/{project.name}/images",
        files={"file": (f"img-{seed}.png", data)},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    project.images[response.json()["id"]] = data
    return response.json()["id"]


def listed(project: Project) -> set[str]:
    response = httpx.get(
        f"{project.app.url}/v1/projects/{project.name}/images", params={"limit": 200}, timeout=30
    )
    assert response.status_code == 200, response.text
    return {item["id"] for item in response.json()["items"]}


def best_match(project: Project, data: bytes) -> str:
    response = httpx.post(
        f"{project.app.url}/v1/projects/{project.name}/images/search/by-image",
        params={"limit": 3},
        files={"file": ("q.png", data)},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["id"]


def text_search(project: Project) -> httpx.Response:
    return httpx.post(
        f"{project.app.url}/v1/projects/{project.name}/images/search",
        json={"query": "a poster", "limit": 10},
        timeout=60,
    )


def test_models_run_on_the_model_node_and_the_rest_on_the_head(cluster_app: ClusterApp) -> None:
    cluster = cluster_app.cluster
    nodes = cluster.replica_nodes()
    assert {name: nodes.get(name) for name in MODEL_DEPLOYMENTS} == {
        name: {cluster.worker_node_id} for name in MODEL_DEPLOYMENTS
    }
    assert {name: nodes.get(name) for name in HEAD_DEPLOYMENTS} == {
        name: {cluster.head_node_id} for name in HEAD_DEPLOYMENTS
    }


def test_generation_upload_and_search_work_across_nodes(
    cluster_app: ClusterApp, project: Project
) -> None:
    response, _ = generate(cluster_app)
    assert response.status_code == 200, response.text
    assert response.content.startswith(b"\x89PNG")
    uploaded = {upload(project, seed) for seed in (1, 2, 3)}
    for image_id in uploaded:
        assert best_match(project, project.images[image_id]) == image_id
    found = text_search(project)
    assert found.status_code == 200, found.text
    assert {hit["id"] for hit in found.json()["results"]} == uploaded


def test_losing_the_model_node_keeps_the_head_serving_and_a_new_one_brings_the_models_back(
    cluster_app: ClusterApp, project: Project
) -> None:
    for seed in (11, 12, 13):
        upload(project, seed)
    cluster_app.cluster.remove_model_node()  # a crash

    # A request sent at once may still reach the dying replica, or wait for one that is gone,
    # until Serve reports the deployment failed: then a 503, long before the timeout.
    response, elapsed = generate(cluster_app)
    assert response.status_code in (200, 503), response.text
    if response.status_code == 503:
        assert response.json()["error"]["code"] in ("model_not_ready", "service_unavailable")
    assert elapsed < NOT_THE_TIMEOUT_S, f"{elapsed:.1f}s: waited for the timeout"

    # Serve notices each lost replica on its own health check: wait for both models.
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        readyz = httpx.get(f"{cluster_app.url}/readyz", timeout=30)
        modules = readyz.json()["modules"]
        lost = all(modules[name]["state"] != "ready" for name in ("image", "image_search"))
        if lost or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert readyz.status_code == 503, readyz.text
    assert modules["image"]["state"] in ("failed", "loading"), modules
    assert modules["image"]["deployments"]["PromptOptimizer"] == "HEALTHY"
    assert modules["image_search"]["state"] in ("failed", "loading"), modules
    assert modules["image_search"]["deployments"]["VectorIndex"] == "HEALTHY"

    assert httpx.get(f"{cluster_app.url}/healthz", timeout=30).status_code == 200
    # The index lives on the head: what was uploaded is still listed and served.
    assert listed(project) == set(project.images)
    image_id, data = next(iter(project.images.items()))
    file = httpx.get(
        f"{cluster_app.url}/v1/projects/{project.name}/images/{image_id}/file", timeout=30
    )
    assert (file.status_code, file.content) == (200, data)
    gone = next(reversed(project.images))
    deleted = httpx.delete(
        f"{cluster_app.url}/v1/projects/{project.name}/images/{gone}", timeout=30
    )
    assert deleted.status_code == 200, deleted.text
    del project.images[gone]
    assert listed(project) == set(project.images)
    # Anything that needs a model answers 503 at once, neither hanging nor a 500.
    response, elapsed = generate(cluster_app)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "model_not_ready"
    assert elapsed < REFUSED_AT_ONCE_S, f"{elapsed:.1f}s"
    found = text_search(project)
    assert found.status_code == 503, found.text
    refused = httpx.post(
        f"{cluster_app.url}/v1/projects/{project.name}/images",
        files={"file": ("new.png", make_image(99))},
        timeout=30,
    )
    assert refused.status_code == 503, refused.text

    # A new model node: the models come back on it, with the index as it was.
    new_node = cluster_app.cluster.add_model_node()
    wait_until_ready(cluster_app.url, timeout_s=READY_TIMEOUT_S)
    assert cluster_app.cluster.replica_nodes()["ImageGenerator"] == {new_node}

    response, _ = generate(cluster_app)
    assert response.status_code == 200, response.text
    before = set(project.images)
    assert listed(project) == before
    for image_id in before:
        assert best_match(project, project.images[image_id]) == image_id
    found = text_search(project)
    assert found.status_code == 200, found.text
    assert {hit["id"] for hit in found.json()["results"]} == before
    new = upload(project, 14)
    assert listed(project) == before | {new}

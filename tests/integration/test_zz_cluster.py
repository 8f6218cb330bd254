"""A simulated two-node cluster: a CPU head and a "GPU" model node that is lost and replaced.

`ray.cluster_utils.Cluster` runs both nodes as separate raylets on this machine. The head
holds the custom resource `head` and runs Serve's proxy; the worker holds `gpu_node`, which
the model deployments require (MODEL_NODE_RESOURCE=gpu_node). The tests of this module are
one ordered scenario: placement, normal service, losing the model node, a new model node.

This module needs a Ray of its own, so its fixture shuts down the session's single-node Ray
(`local_ray` in tests/integration/conftest.py, whose teardown then finds no Ray and leaves it)
and restores nothing. It must run after every other module of this folder: its name sorts
last, and pytest runs files in name order. Keep new integration modules sorting before it.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
from PIL import Image
from ray import serve
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from serve_app.app import build_app
from tests.integration.conftest import offline_settings, wait_until_ready
from tests.support.ports import free_port

# REQUEST_TIMEOUT_SECONDS, the longest the gateway waits for a model, is long on purpose: a
# call to a lost model must end when Serve reports the deployment failed, not by timing out.
REQUEST_TIMEOUT_S = 60
PROXY_TIMEOUT_S = 90  # Serve's own request_timeout_s (HTTP 408 beyond it)
MODEL_NODE = {"num_cpus": 2, "resources": {"gpu_node": 1}, "object_store_memory": 96 * 1024**2}
MODEL_DEPLOYMENTS = {"ImageGenerator", "ClipEmbedder"}
HEAD_DEPLOYMENTS = {"Gateway", "PromptOptimizer", "VectorIndex"}
GENERATE = {"title": "햄릿", "description": "복수와 광기의 비극", "seed": 7}


@dataclass
class ClusterApp:
    url: str
    cluster: Cluster
    worker: object  # ray._private.node.Node: the current model node
    dashboard_url: str
    images: dict[str, bytes] = field(default_factory=dict)  # uploaded image id -> bytes
    project: str = "cluster"


def make_image(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def start_cluster(dashboard_port: int, attempts: int = 3) -> tuple[Cluster, Any]:
    """Head + model node. Ray gives a raylet 30 s to register; on a machine loaded by other
    work that can run out, so a start that timed out is torn down and tried again."""
    for attempt in range(1, attempts + 1):
        cluster = None
        try:
            cluster = Cluster(
                initialize_head=True,
                head_node_args={
                    "num_cpus": 2,
                    "resources": {"head": 1},
                    "include_dashboard": True,  # the state API (list_actors) is served by it
                    "dashboard_host": "127.0.0.1",
                    "dashboard_port": dashboard_port,
                    "object_store_memory": 128 * 1024**2,
                },
            )
            return cluster, cluster.add_node(**MODEL_NODE)
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this
            if cluster is not None:
                cluster.shutdown()
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def cluster_app(
    tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterApp]:
    """A head (2 CPUs, resource `head`, dashboard) and a model node, the app `ai` on them."""
    if ray.is_initialized():  # the session's single-node Ray: not ours to keep
        serve.shutdown()
        ray.shutdown()
    tmp = tmp_path_factory.mktemp("cluster")
    dashboard_port, http_port = free_port(), free_port()
    cluster, worker = start_cluster(dashboard_port)
    try:
        ray.init(address=cluster.address, configure_logging=False)
        serve.start(
            proxy_location="HeadOnly",  # the nodes share 127.0.0.1
            http_options={
                "host": "127.0.0.1",
                "port": http_port,
                "request_timeout_s": PROXY_TIMEOUT_S,
            },
        )
        settings = offline_settings(
            tiny_models_dir,
            tmp / "storage",
            IMAGE_SEARCH_ENABLED=True,
            CLIP_MODEL=f"local-dir:{tiny_models_dir / 'clip'}",
            CLIP_DEVICE="cpu",
            IMAGE_SEARCH_DB_PATH=str(tmp / "db" / "image_search.db"),
            IMAGE_SEARCH_DB_BACKUP_ENABLED=False,
            MODEL_NODE_RESOURCE="gpu_node",
            REQUEST_TIMEOUT_SECONDS=REQUEST_TIMEOUT_S,
            IMAGE_NUM_CPUS=0.5,
            CLIP_NUM_CPUS=0.5,
        )
        serve.run(build_app({"env_files": [], "settings": settings}), name="ai", route_prefix="/")
        url = f"http://127.0.0.1:{http_port}"
        wait_until_ready(url)
        yield ClusterApp(
            url=url,
            cluster=cluster,
            worker=worker,
            dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        )
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        cluster.shutdown()


def replica_nodes(app: ClusterApp) -> dict[str, set[str]]:
    """Deployment name -> ids of the nodes its live replicas run on."""
    actors = list_actors(
        address=app.dashboard_url,
        filters=[("state", "=", "ALIVE")],
        detail=True,
        raise_on_missing_output=False,
    )
    nodes: dict[str, set[str]] = {}
    for actor in actors:
        if actor.class_name.startswith("ServeReplica:ai:"):
            nodes.setdefault(actor.class_name.rsplit(":", 1)[1], set()).add(actor.node_id)
    return nodes


def generate(app: ClusterApp) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(f"{app.url}/v1/images/generate", json=GENERATE, timeout=60)
    return response, time.monotonic() - started


def upload(app: ClusterApp, seed: int) -> str:
    data = make_image(seed)
    response = httpx.post(
        f"{app.url}/v1/projects/{app.project}/images",
        files={"file": (f"img-{seed}.png", data)},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    app.images[response.json()["id"]] = data
    return response.json()["id"]


def listed(app: ClusterApp) -> set[str]:
    response = httpx.get(
        f"{app.url}/v1/projects/{app.project}/images", params={"limit": 200}, timeout=30
    )
    assert response.status_code == 200, response.text
    return {item["id"] for item in response.json()["items"]}


def best_match(app: ClusterApp, data: bytes) -> str:
    response = httpx.post(
        f"{app.url}/v1/projects/{app.project}/images/search/by-image",
        params={"limit": 3},
        files={"file": ("q.png", data)},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["id"]


def text_search(app: ClusterApp) -> httpx.Response:
    return httpx.post(
        f"{app.url}/v1/projects/{app.project}/images/search",
        json={"query": "a poster", "limit": 10},
        timeout=60,
    )


def test_models_run_on_the_model_node_and_the_rest_on_the_head(cluster_app: ClusterApp) -> None:
    head, worker = cluster_app.cluster.head_node.node_id, cluster_app.worker.node_id
    nodes = replica_nodes(cluster_app)
    assert {name: nodes.get(name) for name in MODEL_DEPLOYMENTS} == {
        name: {worker} for name in MODEL_DEPLOYMENTS
    }
    assert {name: nodes.get(name) for name in HEAD_DEPLOYMENTS} == {
        name: {head} for name in HEAD_DEPLOYMENTS
    }


def test_generation_upload_and_search_work_across_nodes(cluster_app: ClusterApp) -> None:
    response, _ = generate(cluster_app)
    assert response.status_code == 200, response.text
    assert response.content.startswith(b"\x89PNG")
    uploaded = {upload(cluster_app, seed) for seed in (1, 2, 3)}
    for image_id in uploaded:
        assert best_match(cluster_app, cluster_app.images[image_id]) == image_id
    found = text_search(cluster_app)
    assert found.status_code == 200, found.text
    assert {hit["id"] for hit in found.json()["results"]} == uploaded


def test_losing_the_model_node_keeps_the_head_serving(cluster_app: ClusterApp) -> None:
    assert cluster_app.images, "runs after the upload test"
    cluster_app.cluster.remove_node(cluster_app.worker, allow_graceful=False)  # a crash

    # A request sent at once may still reach the dying replica, or wait for one that is gone,
    # until Serve reports the deployment failed: then a 503, long before the timeout.
    response, elapsed = generate(cluster_app)
    assert response.status_code in (200, 503), response.text
    if response.status_code == 503:
        assert response.json()["error"]["code"] in ("model_not_ready", "service_unavailable")
    assert elapsed < REQUEST_TIMEOUT_S - 20, f"{elapsed:.1f}s: waited for the timeout"

    # Serve notices each lost replica on its own health check: wait for both models.
    deadline = time.monotonic() + 60
    while True:
        readyz = httpx.get(f"{cluster_app.url}/readyz", timeout=10)
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

    assert httpx.get(f"{cluster_app.url}/healthz", timeout=5).status_code == 200
    # The index lives on the head: what was uploaded is still listed and served.
    assert listed(cluster_app) == set(cluster_app.images)
    image_id, data = next(iter(cluster_app.images.items()))
    file = httpx.get(
        f"{cluster_app.url}/v1/projects/{cluster_app.project}/images/{image_id}/file", timeout=30
    )
    assert (file.status_code, file.content) == (200, data)
    gone = next(reversed(cluster_app.images))
    deleted = httpx.delete(
        f"{cluster_app.url}/v1/projects/{cluster_app.project}/images/{gone}", timeout=30
    )
    assert deleted.status_code == 200, deleted.text
    del cluster_app.images[gone]
    assert listed(cluster_app) == set(cluster_app.images)
    # Anything that needs a model answers 503 at once, neither hanging nor a 500.
    response, elapsed = generate(cluster_app)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "model_not_ready"
    assert elapsed < 5
    found = text_search(cluster_app)
    assert found.status_code == 503, found.text
    refused = httpx.post(
        f"{cluster_app.url}/v1/projects/{cluster_app.project}/images",
        files={"file": ("new.png", make_image(99))},
        timeout=30,
    )
    assert refused.status_code == 503, refused.text


def test_a_new_model_node_brings_the_models_back(cluster_app: ClusterApp) -> None:
    cluster_app.worker = cluster_app.cluster.add_node(**MODEL_NODE)
    wait_until_ready(cluster_app.url, timeout_s=90)
    assert replica_nodes(cluster_app)["ImageGenerator"] == {cluster_app.worker.node_id}

    response, _ = generate(cluster_app)
    assert response.status_code == 200, response.text
    before = set(cluster_app.images)
    assert listed(cluster_app) == before
    for image_id in before:
        assert best_match(cluster_app, cluster_app.images[image_id]) == image_id
    found = text_search(cluster_app)
    assert found.status_code == 200, found.text
    assert {hit["id"] for hit in found.json()["results"]} == before
    new = upload(cluster_app, 4)
    assert listed(cluster_app) == before | {new}

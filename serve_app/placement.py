"""Where each deployment runs: GPUs or the CPU fallback, CPUs, torch threads, head pinning.

The app builder asks this module how to place every deployment; nothing here builds a config.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from ray.serve import Deployment

from core.types import Device
from serve_app.settings import Settings

logger = logging.getLogger("ray.serve")


class ModelPlacement(NamedTuple):
    """A model deployment's resource settings (its module's *_NUM_GPUS, *_NUM_CPUS,
    *_DEVICE and *_MAX_QUEUED_REQUESTS)."""

    num_gpus: float
    num_cpus: float
    device: Device
    max_queued_requests: int


def model_actor_options(settings: Settings, num_cpus: float, num_gpus: float) -> dict[str, Any]:
    """Ray actor options of a model replica: its CPUs, GPUs and the model-node resource."""
    options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    if settings.model_node_resource:
        options["resources"] = {settings.model_node_resource: 0.01}
    return options


# Ray gives the head node this resource (1 unit) by itself; Ray's own libraries use it the
# same way to keep their state actors on the head.
HEAD_NODE_RESOURCE = "node:__internal_head__"


def on_head_node(deployment: Any, settings: Settings) -> Deployment:
    """Pin a CPU deployment to the head node when the models have nodes of their own.

    With MODEL_NODE_RESOURCE set, the cluster has dedicated (GPU) model nodes that may come
    and go. Left to Serve's spreading scheduler, the gateway, the prompt optimizer or the
    vector index could land on one and die with it; the vector index, the single writer of
    a SQLite file on the head's disk, would even come back elsewhere without its data.
    """
    if not settings.model_node_resource:
        return deployment
    options = dict(deployment.ray_actor_options or {})
    options["resources"] = {**(options.get("resources") or {}), HEAD_NODE_RESOURCE: 0.001}
    return deployment.options(ray_actor_options=options)


def gpu_placement(
    requested_gpus: float, device: Device, settings: Settings
) -> tuple[float, Device]:
    """GPUs to reserve and the torch device for a model deployment.

    A deployment asking for GPUs on a cluster that has none would stay pending forever; with
    CPU_FALLBACK=1 (the default) it is placed on the CPU instead, with a warning.
    """
    if device == "cpu" or requested_gpus <= 0:
        return 0.0, "cpu"
    available = cluster_gpu_count()
    if available == 0 and settings.cpu_fallback:
        logger.warning(
            "the Ray cluster has no GPU: deploying on the CPU (set CPU_FALLBACK=0 to wait for one)"
        )
        return 0.0, "cpu"
    return requested_gpus, device


def cluster_gpu_count() -> float | None:
    """GPUs in the connected Ray cluster, or None when Ray is not initialised here."""
    import ray

    if not ray.is_initialized():
        return None
    resources: dict[str, float] = ray.cluster_resources()
    return float(resources.get("GPU", 0))


def model_max_ongoing(settings: Settings, max_queued: int) -> int:
    """Requests a model replica holds: MODEL_MAX_ONGOING_REQUESTS (1 by default).

    Only one runs at a time either way (the deployment's ModelQueue); with more than one the
    others wait in the replica in arrival order instead of in Serve's queue.
    """
    del max_queued  # the queue bound stays Serve's max_queued_requests
    return settings.model_max_ongoing_requests


def torch_threads(settings: Settings, num_cpus: float) -> int:
    """Threads for torch in a replica: TORCH_CPU_THREADS, else the CPUs it reserves."""
    return settings.torch_cpu_threads or max(1, int(num_cpus))

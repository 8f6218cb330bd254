"""Where each deployment runs besides its GPUs (`serve_app.gpu_plan`): CPUs, torch threads,
the model-node resource, head pinning. Nothing here builds a config.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ray.serve import Deployment

from deployments import model_router
from serve_app.settings import Settings


class ModelResources(NamedTuple):
    """A model deployment's CPU and queue settings (*_NUM_CPUS, *_MAX_QUEUED_REQUESTS); its
    GPUs come from `serve_app.gpu_plan`."""

    num_cpus: float
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


def model_max_ongoing(settings: Settings, max_queued: int) -> int:
    """Requests a model replica holds: MODEL_MAX_ONGOING_REQUESTS (1 by default).

    Only one runs at a time either way (the deployment's ModelQueue); with more than one the
    others wait in the replica in arrival order instead of in Serve's queue.
    """
    del max_queued  # the queue bound stays Serve's max_queued_requests
    return settings.model_max_ongoing_requests


def model_router_config(settings: Settings) -> dict[str, Any]:
    """How callers route to a model replica (deployments/model_router.py): a request that
    finds it busy retries when one of its caller's requests completes, or at the latest
    after MODEL_ROUTER_INITIAL_BACKOFF_S, doubling up to MODEL_ROUTER_MAX_BACKOFF_S."""
    initial = settings.model_router_initial_backoff_s
    return {  # a RequestRouterConfig's fields (Serve takes the dict)
        "request_router_class": model_router.CLASS_PATH,
        "initial_backoff_s": initial,
        "backoff_multiplier": 2.0,
        "max_backoff_s": max(initial, settings.model_router_max_backoff_s),
    }


def torch_threads(settings: Settings, num_cpus: float) -> int:
    """Threads for torch in a replica: TORCH_CPU_THREADS, else the CPUs it reserves."""
    return settings.torch_cpu_threads or max(1, int(num_cpus))

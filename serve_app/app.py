"""The application builder: settings -> typed configs -> the bound deployment graph.

`serve_app.app:build_app` is the `import_path` of every Serve config in this repository. It
reads the settings once, includes only the enabled modules and binds each deployment with its
config (`serve_app.deploy_configs`), its GPUs (`serve_app.gpu_plan`) and its other resources
(`serve_app.placement`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from core.types import Device
from serve_app import deploy_configs
from serve_app.exposure import AuthRequired, check_auth, serve_http_bind
from serve_app.gateway import Gateway
from serve_app.gpu_plan import GpuPlan, describe, log_plans, plan_gpus, read_node_gpus
from serve_app.placement import (
    ModelResources,
    model_actor_options,
    model_max_ongoing,
    model_router_config,
    on_head_node,
    torch_threads,
)
from serve_app.settings import Settings, load_settings

logger = logging.getLogger("ray.serve")


class AppArgs(BaseModel):
    """The `args` of a Serve config's application entry."""

    model_config = ConfigDict(extra="forbid")

    env_files: list[str] = Field(
        default_factory=lambda: [".env"],
        description="dotenv files read in order (later wins; the environment wins over all)",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict, description="Setting overrides by variable name; win over all"
    )


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Read settings once and bind the graph of the enabled modules (Serve's app builder)."""
    app_args = AppArgs.model_validate(args or {})
    settings = load_settings(app_args.env_files, app_args.settings)
    return build_graph(settings)


def build_graph(settings: Settings) -> Application:
    """Bind the Gateway and the deployments of every enabled module."""
    check_exposure(settings)
    plans = plan_gpus(settings, read_node_gpus(settings.model_node_resource))
    log_plans(plans)
    handles: dict[str, Any] = {}
    if settings.image_enabled:
        from deployments.image_generator import ImageGenerator
        from deployments.prompt_optimizer import PromptOptimizer

        handles["prompt_optimizer"] = on_head_node(PromptOptimizer, settings).bind(
            deploy_configs.prompt_optimizer_config(settings)
        )
        handles["image_generator"] = bind_model(
            ImageGenerator,
            settings,
            plans["image"],
            ModelResources(settings.image_num_cpus, settings.image_max_queued_requests),
            lambda device, threads, memory: deploy_configs.image_generator_config(
                settings, device, threads, memory
            ),
        )
    if settings.image_search_enabled:
        from deployments.clip_embedder import ClipEmbedder
        from deployments.vector_index import VectorIndex

        handles["clip_embedder"] = bind_model(
            ClipEmbedder,
            settings,
            plans["image_search"],
            ModelResources(settings.clip_num_cpus, settings.clip_max_queued_requests),
            lambda device, threads, memory: deploy_configs.clip_embedder_config(
                settings, device, threads, memory
            ),
        )
        handles["vector_index"] = on_head_node(VectorIndex, settings).bind(
            deploy_configs.vector_index_config(settings),
            clip_embedder=handles["clip_embedder"],  # re-embedding after a model change
        )
    if settings.voice_enabled:
        from deployments.voice_cloner import VoiceCloner

        handles["voice_cloner"] = bind_model(
            VoiceCloner,
            settings,
            plans["voice"],
            ModelResources(settings.voice_num_cpus, settings.voice_max_queued_requests),
            lambda device, threads, memory: deploy_configs.voice_cloner_config(
                settings, device, threads, memory
            ),
        )
    placement: dict[str, str] = {module: describe(plan) for module, plan in plans.items()}
    gateway_config = deploy_configs.gateway_config(settings, placement)
    model_handles = dict(handles)
    if settings.jobs_enabled:
        from serve_app.job_runner import JobRunner

        # One replica: the single writer of the jobs' SQLite file, on the head's disk.
        handles["job_runner"] = (
            on_head_node(JobRunner, settings)
            .options(num_replicas=1)
            .bind(deploy_configs.job_runner_config(settings, gateway_config), **model_handles)
        )
    return on_head_node(Gateway, settings).bind(gateway_config, **handles)


def check_exposure(settings: Settings) -> None:
    """Before anything is bound: refuse (AuthRequired, a SettingsError) to serve a
    non-loopback address without API keys unless AUTH_DISABLED=1 (serve_app/exposure.py).

    A Serve config's builder runs in the cluster once Serve has started with the config's
    http_options, so Serve can say where it listens; a builder run before Serve starts
    (`serve run module:builder`, a unit test) cannot ask, and the Gateway checks at start.
    """
    try:
        bind = serve_http_bind()
    except Exception as exc:  # noqa: BLE001 - any failure to ask leaves it to the Gateway
        logger.info("cannot ask Serve where it listens (%s); the Gateway checks at start", exc)
        return
    try:
        check_auth(
            bind,
            has_keys=bool(settings.api_key_scopes()),
            auth_disabled=settings.auth_disabled,
            where="builder",
        )
    except AuthRequired as exc:
        logger.error("%s", exc)  # in `serve run`'s output too, not only the app's status
        raise


def bind_model(
    deployment: Any,  # a @serve.deployment class (Ray's stubs type it as the bare class)
    settings: Settings,
    plan: GpuPlan,
    resources: ModelResources,
    make_config: Callable[[Device, int, float | None], Any],
) -> Application:
    """Bind a model deployment where `plan` put it, with its CPUs and queue bounds, and the
    config `make_config(device, torch_threads, gpu_memory_fraction)`."""
    return deployment.options(
        max_ongoing_requests=model_max_ongoing(settings, resources.max_queued_requests),
        max_queued_requests=resources.max_queued_requests,
        ray_actor_options=model_actor_options(settings, resources.num_cpus, plan.num_gpus),
        request_router_config=model_router_config(settings),
    ).bind(
        make_config(plan.device, torch_threads(settings, resources.num_cpus), plan.memory_fraction)
    )

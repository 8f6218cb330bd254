"""The application builder: settings -> typed configs -> the bound deployment graph.

`serve_app.app:build_app` is the `import_path` of every Serve config in this repository.
It is the only place where settings become objects; it includes only the enabled modules.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application, Deployment

from deployments.configs import (
    ClipEmbedderConfig,
    ImageGeneratorConfig,
    PromptOptimizerConfig,
    VectorIndexConfig,
    VoiceClonerConfig,
)
from deployments.types import ImageParams
from serve_app.auth import digest
from serve_app.gateway import Gateway
from serve_app.services import GatewayConfig
from serve_app.settings import Settings, SettingsError, load_settings
from serve_app.storage import StorageConfig

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
    handles: dict[str, Any] = {}
    if settings.image_enabled:
        from deployments.image_generator import ImageGenerator
        from deployments.prompt_optimizer import PromptOptimizer

        handles["prompt_optimizer"] = on_head_node(PromptOptimizer, settings).bind(
            prompt_optimizer_config(settings)
        )
        handles["image_generator"] = bind_model(
            ImageGenerator, settings, ModelPlacement(
                settings.image_num_gpus, settings.image_num_cpus, settings.image_device,
                settings.image_max_queued_requests),
            lambda device, threads: ImageGeneratorConfig(
                model=settings.image_model,
                device=device,
                dtype=settings.image_dtype,
                torch_threads=threads,
                warm_up=settings.model_warm_up,
                warm_up_width=settings.image_default_width,
                warm_up_height=settings.image_default_height,
            ),
        )
    if settings.image_search_enabled:
        from deployments.clip_embedder import ClipEmbedder
        from deployments.vector_index import VectorIndex

        handles["clip_embedder"] = bind_model(
            ClipEmbedder, settings, ModelPlacement(
                settings.clip_num_gpus, settings.clip_num_cpus, settings.clip_device,
                settings.clip_max_queued_requests),
            lambda device, threads: ClipEmbedderConfig(
                model=settings.clip_model,
                pretrained=settings.clip_pretrained,
                device=device,
                dtype=settings.clip_dtype,
                torch_threads=threads,
                max_batch_size=settings.clip_max_batch_size,
                max_image_pixels=settings.image_search_max_pixels,
                warm_up=settings.model_warm_up,
            ),
        )
        handles["vector_index"] = on_head_node(VectorIndex, settings).bind(
            vector_index_config(settings)
        )
    if settings.voice_enabled:
        from deployments.voice_cloner import VoiceCloner

        handles["voice_cloner"] = bind_model(
            VoiceCloner, settings, ModelPlacement(
                settings.voice_num_gpus, settings.voice_num_cpus, settings.voice_device,
                settings.voice_max_queued_requests),
            lambda device, threads: VoiceClonerConfig(
                model_config_name=settings.voice_model_config,
                checkpoint=settings.voice_checkpoint,
                vocab=settings.voice_vocab,
                vocoder=settings.voice_vocoder,
                asr_model=settings.voice_asr_model,
                device=device,
                dtype=settings.voice_dtype,
                torch_threads=threads,
                max_ref_seconds_used=settings.voice_ref_seconds_used,
                warm_up=settings.model_warm_up,
            ),
        )
    return on_head_node(Gateway, settings).bind(gateway_config(settings), **handles)


class ModelPlacement(NamedTuple):
    """A model deployment's resource settings (its module's *_NUM_GPUS, *_NUM_CPUS,
    *_DEVICE and *_MAX_QUEUED_REQUESTS)."""

    num_gpus: float
    num_cpus: float
    device: str
    max_queued_requests: int


def bind_model(
    deployment: Deployment,
    settings: Settings,
    placement: ModelPlacement,
    make_config: Callable[[str, int], Any],
) -> Application:
    """Bind a model deployment: its GPUs (or the CPU fallback), CPUs, queue bounds, and the
    config `make_config(device, torch_threads)` for the device it was placed on."""
    num_gpus, device = gpu_placement(placement.num_gpus, placement.device, settings)
    return deployment.options(
        max_ongoing_requests=model_max_ongoing(settings, placement.max_queued_requests),
        max_queued_requests=placement.max_queued_requests,
        ray_actor_options=model_actor_options(settings, placement.num_cpus, num_gpus),
    ).bind(make_config(device, torch_threads(settings, placement.num_cpus)))


def gateway_config(settings: Settings) -> GatewayConfig:
    """The ingress's config: enabled modules, storage, prefixes, request defaults."""
    return GatewayConfig(
        enabled={
            "image": settings.image_enabled,
            "image_search": settings.image_search_enabled,
            "voice": settings.voice_enabled,
        },
        storage=StorageConfig.from_settings(settings),
        image_remote_prefix=settings.image_remote_prefix,
        image_search_remote_prefix=settings.image_search_remote_prefix,
        voice_remote_prefix=settings.voice_remote_prefix,
        image_defaults=ImageParams(
            width=settings.image_default_width,
            height=settings.image_default_height,
            steps=settings.image_default_steps,
            guidance_scale=settings.image_default_guidance_scale,
        ),
        image_max_pixels=settings.image_max_pixels,
        image_search_max_bytes=settings.image_search_max_bytes,
        image_search_max_pixels=settings.image_search_max_pixels,
        image_search_max_batch_files=settings.image_search_max_batch_files,
        voice_max_ref_bytes=settings.voice_max_ref_bytes,
        voice_max_ref_seconds=settings.voice_max_ref_seconds,
        voice_max_text_chars=settings.voice_max_text_chars,
        voice_default_nfe_steps=settings.voice_default_nfe_steps,
        voice_default_cfg_strength=settings.voice_default_cfg_strength,
        request_timeout_s=settings.request_timeout_seconds,
        # ImageGenerator: one replica, one running request and IMAGE_MAX_QUEUED_REQUESTS
        # waiting (in the replica by default, see model_max_ongoing, else in Serve's queue)
        image_max_in_flight=(
            max(model_max_ongoing(settings, settings.image_max_queued_requests),
                settings.image_max_queued_requests + 1)
            if settings.image_max_queued_requests >= 0 else None
        ),
        api_key_digests=tuple(digest(key) for key in settings.api_key_list()),
    )


def vector_index_config(settings: Settings) -> VectorIndexConfig:
    """The search catalog's file, index shape and backup schedule."""
    return VectorIndexConfig(
        db_path=settings.image_search_db_path.resolve(),
        dim=clip_embed_dim(settings),
        max_elements=settings.image_search_max_elements,
        hnsw_m=settings.image_search_hnsw_m,
        ef_construction=settings.image_search_hnsw_ef_construction,
        ef_search=settings.image_search_hnsw_ef_search,
        storage=StorageConfig.from_settings(settings),
        backup_enabled=settings.image_search_db_backup_enabled,
        backup_interval_s=settings.image_search_db_backup_interval_seconds,
        backup_prefix=settings.image_search_db_backup_prefix,
        backup_keep=settings.image_search_db_backup_keep,
    )


def clip_embed_dim(settings: Settings) -> int:
    """The CLIP embedding size, read from the model's config without loading weights."""
    if settings.clip_embed_dim:
        return settings.clip_embed_dim
    model = settings.clip_model
    local = Path(model.removeprefix("local-dir:")).expanduser()
    if model.startswith("local-dir:") or local.is_dir():
        config_file = local / "open_clip_config.json"
        try:
            return int(json.loads(config_file.read_text())["model_cfg"]["embed_dim"])
        except (OSError, ValueError, KeyError) as exc:
            raise SettingsError(
                f"CLIP_MODEL={model!r}: cannot read embed_dim from {config_file} ({exc})"
            ) from None
    if model.startswith("hf-hub:"):
        raise SettingsError(f"CLIP_MODEL={model!r} is on the hub: set CLIP_EMBED_DIM too")
    import open_clip

    model_config = open_clip.get_model_config(model)
    if model_config is None:
        raise SettingsError(f"CLIP_MODEL={model!r} is not an open_clip model name")
    return int(model_config["embed_dim"])


def prompt_optimizer_config(settings: Settings) -> PromptOptimizerConfig:
    return PromptOptimizerConfig(
        model=settings.openai_prompt_model,
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,
        timeout_s=settings.openai_timeout_seconds,
        max_retries=settings.openai_max_retries,
    )


def model_actor_options(settings: Settings, num_cpus: float, num_gpus: float) -> dict[str, Any]:
    """Ray actor options of a model replica: its CPUs, GPUs and the model-node resource."""
    options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    if settings.model_node_resource:
        options["resources"] = {settings.model_node_resource: 0.01}
    return options


# Ray gives the head node this resource (1 unit) by itself; Ray's own libraries use it the
# same way to keep their state actors on the head.
HEAD_NODE_RESOURCE = "node:__internal_head__"


def on_head_node(deployment: Deployment, settings: Settings) -> Deployment:
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


def gpu_placement(requested_gpus: float, device: str, settings: Settings) -> tuple[float, str]:
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
    return float(ray.cluster_resources().get("GPU", 0))


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

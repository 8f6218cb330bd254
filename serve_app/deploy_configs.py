"""Settings -> the typed config each deployment (and the Gateway) is constructed with.

The only place where settings become deployment configs; the builder (`serve_app.app`) binds
them. Deployments never read the environment (on a cluster they run on other nodes).
"""

from __future__ import annotations

import json
from pathlib import Path

from core.records import EmbeddingSpace
from core.storage import StorageConfig
from core.types import Device, ImageParams
from core.voice_cost import VoiceLimits
from deployments.configs import (
    ClipEmbedderConfig,
    ImageGeneratorConfig,
    PromptOptimizerConfig,
    VectorIndexConfig,
    VoiceClonerConfig,
)
from serve_app.job_runner import JobRunnerConfig
from serve_app.placement import model_max_ongoing
from serve_app.services import GatewayConfig
from serve_app.settings import Settings, SettingsError
from serve_app.uploads import accepted_image_types


def storage_config(settings: Settings) -> StorageConfig:
    """The storage part of the server settings (R2_* and LOCAL_STORAGE_DIR & co)."""
    return StorageConfig(
        kind="s3" if settings.r2_enabled else "local",
        local_dir=settings.local_storage_dir,
        bucket=settings.r2_bucket_name,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.r2_region,
        access_key_id=settings.r2_access_key_id,
        secret_access_key=settings.r2_secret_access_key,
        public_base_url=settings.storage_public_base_url,
        presign_expires_s=settings.r2_presign_expires_seconds,
        timeout_s=settings.r2_timeout_seconds,
    )


def voice_limits(settings: Settings) -> VoiceLimits:
    """What one voice synthesis may cost (VOICE_MAX_OUTPUT_SECONDS & co)."""
    return VoiceLimits(
        max_output_seconds=settings.voice_max_output_seconds,
        max_model_steps=settings.voice_max_model_steps,
        ref_text_min_bytes_per_second=settings.voice_ref_text_min_bytes_per_second,
        ref_text_max_bytes_per_second=settings.voice_ref_text_max_bytes_per_second,
    )


def gateway_config(settings: Settings, placement: dict[str, str] | None = None) -> GatewayConfig:
    """The ingress's config: enabled modules, storage, prefixes, request defaults."""
    return GatewayConfig(
        enabled={
            "image": settings.image_enabled,
            "image_search": settings.image_search_enabled,
            "voice": settings.voice_enabled,
            "jobs": settings.jobs_enabled,
        },
        storage=storage_config(settings),
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
        voice_ref_seconds_used=settings.voice_ref_seconds_used,
        voice_limits=voice_limits(settings),
        image_max_pixel_steps=settings.image_max_pixel_steps,
        embeddings_max_total_chars=settings.embeddings_max_total_chars,
        embedding_batch_size=settings.clip_max_batch_size,
        search_space=clip_space(settings) if settings.image_search_enabled else None,
        request_timeout_s=settings.request_timeout_seconds,
        cpu_nice=settings.gateway_cpu_nice,
        json_max_bytes=settings.gateway_max_json_bytes,
        upload_max_bytes=settings.gateway_max_upload_bytes,
        body_bytes_in_flight=settings.gateway_max_body_bytes_in_flight,
        audio_decode_workers=settings.audio_decode_workers,
        # ImageGenerator: one replica, one running request and IMAGE_MAX_QUEUED_REQUESTS
        # waiting (in the replica by default, see model_max_ongoing, else in Serve's queue)
        image_max_in_flight=(
            max(
                model_max_ongoing(settings, settings.image_max_queued_requests),
                settings.image_max_queued_requests + 1,
            )
            if settings.image_max_queued_requests >= 0
            else None
        ),
        api_keys=settings.api_key_scopes(),
        auth_disabled=settings.auth_disabled,
        dashboard_url=settings.console_dashboard_url,
        placement=placement or {},
    )


def job_runner_config(settings: Settings, gateway: GatewayConfig) -> JobRunnerConfig:
    """The JobRunner's config (JOBS_*), with the Gateway's for the pipelines it runs."""
    return JobRunnerConfig(
        gateway=gateway,
        db_path=settings.jobs_db_path,
        remote_prefix=settings.jobs_remote_prefix,
        max_queued=settings.jobs_max_queued,
        max_queued_per_key=settings.jobs_max_queued_per_key,
        max_attempts=settings.jobs_max_attempts,
        retry_delay_s=settings.jobs_retry_delay_seconds,
        retention_s=settings.jobs_retention_seconds,
        webhook_secret=settings.jobs_webhook_secret,
        webhook_max_attempts=settings.jobs_webhook_max_attempts,
        webhook_backoff_s=settings.jobs_webhook_backoff_seconds,
        webhook_allow_private=settings.jobs_webhook_allow_private,
    )


def vector_index_config(settings: Settings) -> VectorIndexConfig:
    """The search catalog's file, index shape and backup schedule."""
    return VectorIndexConfig(
        db_path=settings.image_search_db_path.resolve(),
        dim=clip_embed_dim(settings),
        model=settings.clip_model,
        pretrained=settings.clip_pretrained or "",
        legacy_model=settings.image_search_legacy_model,
        legacy_pretrained=settings.image_search_legacy_pretrained,
        reembed_batch_size=settings.image_search_reembed_batch,
        reembed_busy_batch_size=settings.image_search_reembed_busy_batch,
        max_elements=settings.image_search_max_elements,
        hnsw_m=settings.image_search_hnsw_m,
        ef_construction=settings.image_search_hnsw_ef_construction,
        ef_search=settings.image_search_hnsw_ef_search,
        storage=storage_config(settings),
        backup_enabled=settings.image_search_db_backup_enabled,
        backup_interval_s=settings.image_search_db_backup_interval_seconds,
        backup_prefix=settings.image_search_db_backup_prefix,
        backup_keep=settings.image_search_db_backup_keep,
        search_prefix=settings.image_search_remote_prefix,
        image_content_types=accepted_image_types(),
    )


def clip_space(settings: Settings) -> EmbeddingSpace:
    """The embedding space of the configured CLIP model (what the catalog must hold)."""
    return EmbeddingSpace(
        model=settings.clip_model,
        pretrained=settings.clip_pretrained or "",
        dim=clip_embed_dim(settings),
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


def image_generator_config(
    settings: Settings, device: Device, threads: int, gpu_memory_fraction: float | None = None
) -> ImageGeneratorConfig:
    """The diffusers pipeline's config, for the device the placement chose."""
    return ImageGeneratorConfig(
        model=settings.image_model,
        device=device,
        dtype=settings.image_dtype,
        torch_threads=threads,
        gpu_memory_fraction=gpu_memory_fraction,
        cpu_nice=settings.image_cpu_nice,
        warm_up=settings.model_warm_up,
        warm_up_width=settings.image_default_width,
        warm_up_height=settings.image_default_height,
    )


def clip_embedder_config(
    settings: Settings, device: Device, threads: int, gpu_memory_fraction: float | None = None
) -> ClipEmbedderConfig:
    """The CLIP model's config, for the device the placement chose."""
    return ClipEmbedderConfig(
        model=settings.clip_model,
        pretrained=settings.clip_pretrained,
        device=device,
        dtype=settings.clip_dtype,
        torch_threads=threads,
        gpu_memory_fraction=gpu_memory_fraction,
        max_batch_size=settings.clip_max_batch_size,
        max_image_pixels=settings.image_search_max_pixels,
        cpu_nice=settings.clip_cpu_nice,
        warm_up=settings.model_warm_up,
    )


def voice_cloner_config(
    settings: Settings, device: Device, threads: int, gpu_memory_fraction: float | None = None
) -> VoiceClonerConfig:
    """The F5-TTS model's config, for the device the placement chose."""
    return VoiceClonerConfig(
        model_config_name=settings.voice_model_config,
        checkpoint=settings.voice_checkpoint,
        vocab=settings.voice_vocab,
        vocoder=settings.voice_vocoder,
        asr_model=settings.voice_asr_model,
        device=device,
        dtype=settings.voice_dtype,
        torch_threads=threads,
        gpu_memory_fraction=gpu_memory_fraction,
        max_ref_seconds_used=settings.voice_ref_seconds_used,
        prepared_voices_cached=settings.voice_prepared_cache_size,
        limits=voice_limits(settings),
        cpu_nice=settings.voice_cpu_nice,
        warm_up=settings.model_warm_up,
    )

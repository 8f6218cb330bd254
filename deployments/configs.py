"""Typed configs each deployment is constructed with (built from Settings by the app builder).

Deployments never read the environment: on a cluster they run on other nodes, so everything
they need arrives here. Secrets are `SecretStr`, which never prints its value.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from core import defaults
from core.image_keys import IMAGE_CONTENT_TYPES
from core.storage import StorageConfig
from core.types import Device, TorchDType
from core.voice_cost import VoiceLimits


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PromptOptimizerConfig(_Config):
    """How to reach the OpenAI-compatible chat model that writes image prompts."""

    model: str = defaults.OPENAI_PROMPT_MODEL
    api_key: SecretStr | None = None
    base_url: str | None = None
    timeout_s: float = Field(default=defaults.OPENAI_TIMEOUT_S, gt=0)
    max_retries: int = Field(default=defaults.OPENAI_MAX_RETRIES, ge=0)


class ImageGeneratorConfig(_Config):
    """Which diffusers pipeline to load and where to run it."""

    model: str = Field(description="Hub id (e.g. stabilityai/sd-turbo) or a local directory")
    device: Device = "auto"
    dtype: TorchDType = "auto"
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads for torch")
    cpu_nice: int | None = Field(
        default=None,
        ge=0,
        le=19,
        description="Niceness the replica yields to (core/cpu_priority.py)",
    )
    gpu_memory_fraction: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Cap on the share of the GPU's memory this replica may use (the card is "
        "shared); None: no cap",
    )
    warm_up: bool = Field(
        default=True,
        description="Run one tiny request in the constructor, so that the first real request "
        "does not pay for lazy initialisation (the replica reports ready after it)",
    )
    warm_up_width: int = Field(default=64, ge=64, le=2048, multiple_of=8)
    warm_up_height: int = Field(default=64, ge=64, le=2048, multiple_of=8)


class ClipEmbedderConfig(_Config):
    """Which open_clip model embeds images and texts, where it runs and how much it accepts."""

    model: str = Field(
        default=defaults.CLIP_MODEL,
        description=(
            "open_clip model name (e.g. ViT-B-32), 'local-dir:/path' or a local directory "
            "holding open_clip_config.json + weights, or 'hf-hub:org/repo'"
        ),
    )
    pretrained: str | None = Field(
        default=defaults.CLIP_PRETRAINED,
        description=(
            "open_clip pretrained tag or a local .pt/.bin/.safetensors checkpoint; "
            "ignored for local directories and hf-hub models"
        ),
    )
    device: Device = "auto"
    dtype: TorchDType = "auto"
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads for torch")
    cpu_nice: int | None = Field(
        default=None,
        ge=0,
        le=19,
        description="Niceness the replica yields to (core/cpu_priority.py)",
    )
    gpu_memory_fraction: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Cap on the share of the GPU's memory this replica may use (the card is "
        "shared); None: no cap",
    )
    max_batch_size: int = Field(
        default=defaults.CLIP_MAX_BATCH_SIZE, ge=1, description="items per forward pass"
    )
    max_image_pixels: int = Field(
        default=defaults.IMAGE_SEARCH_MAX_PIXELS,
        ge=1,
        description="reject images with more pixels (decompression bombs)",
    )
    warm_up: bool = Field(
        default=True,
        description="Run one tiny request in the constructor, so that the first real request "
        "does not pay for lazy initialisation (the replica reports ready after it)",
    )


class VectorIndexConfig(_Config):
    """Where the search catalog lives, how its HNSW indexes are shaped, and its backups."""

    db_path: Path = Field(description="SQLite file (the source of truth, vectors included)")
    dim: int = Field(ge=1, description="Embedding dimension of the CLIP model")
    model: str = Field(
        default=defaults.CLIP_MODEL,
        min_length=1,
        description="CLIP_MODEL: with `pretrained` and `dim`, the embedding space the catalog "
        "must hold; stored vectors of another are re-embedded in the background",
    )
    pretrained: str = Field(
        default=defaults.CLIP_PRETRAINED, description="CLIP_PRETRAINED (empty: none)"
    )
    legacy_model: str = Field(
        default=defaults.IMAGE_SEARCH_LEGACY_MODEL,
        min_length=1,
        description="IMAGE_SEARCH_LEGACY_MODEL: the model of vectors stored before schema 2",
    )
    legacy_pretrained: str = defaults.IMAGE_SEARCH_LEGACY_PRETRAINED
    reembed_batch_size: int = Field(
        default=defaults.IMAGE_SEARCH_REEMBED_BATCH,
        ge=1,
        description="IMAGE_SEARCH_REEMBED_BATCH: images per CLIP request when re-embedding",
    )
    reembed_busy_batch_size: int = Field(
        default=defaults.IMAGE_SEARCH_REEMBED_BUSY_BATCH,
        ge=1,
        description="IMAGE_SEARCH_REEMBED_BUSY_BATCH: the same while users search or upload",
    )
    reembed_retry_s: float = Field(
        default=defaults.IMAGE_SEARCH_REEMBED_RETRY_S,
        gt=0,
        description="Seconds before an image whose original could not be read is tried again",
    )
    max_elements: int = Field(ge=1, description="Images per project")
    hnsw_m: int = Field(default=defaults.HNSW_M, ge=2)
    ef_construction: int = Field(default=defaults.HNSW_EF_CONSTRUCTION, ge=1)
    ef_search: int = Field(default=defaults.HNSW_EF_SEARCH, ge=1)
    storage: StorageConfig = Field(description="Object store that receives the backups")
    backup_enabled: bool = True
    backup_interval_s: float = Field(default=defaults.DB_BACKUP_INTERVAL_S, gt=0)
    backup_prefix: str = defaults.DB_BACKUP_PREFIX
    backup_keep: int = Field(default=defaults.DB_BACKUP_KEEP, ge=1)
    search_prefix: str = Field(
        default=defaults.IMAGE_SEARCH_REMOTE_PREFIX,
        description="IMAGE_SEARCH_REMOTE_PREFIX: a row's object key must be "
        "{search_prefix}{project_id}/{id}.{ext}, else it is quarantined at start",
    )
    image_content_types: tuple[str, ...] = Field(
        default=tuple(IMAGE_CONTENT_TYPES),
        description="The image types uploads are stored as; a row with another is quarantined",
    )
    persist_index: bool = Field(
        default=True,
        description="Save each project's HNSW index beside the database and load it at start "
        "when it matches SQLite (else rebuild from the rows)",
    )
    index_save_interval_s: float = Field(
        default=60, gt=0, description="Seconds between saves of changed indexes"
    )
    index_save_after_changes: int = Field(
        default=10_000, ge=1, description="Save sooner once this many changes are unsaved"
    )

    @field_validator("search_prefix")
    @classmethod
    def _search_prefix(cls, value: str) -> str:
        if not value or not value.endswith("/"):
            raise ValueError("search_prefix must be non-empty and end with '/'")
        return value

    @field_validator("image_content_types")
    @classmethod
    def _content_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(IMAGE_CONTENT_TYPES))
        if unknown or not value:
            raise ValueError(f"image_content_types must be among {list(IMAGE_CONTENT_TYPES)}")
        return value


class VoiceClonerConfig(_Config):
    """Which F5-TTS model, vocoder and ASR model clone voices, and where they run.

    The model architecture comes from an f5-tts model config: a name packaged under
    `f5_tts/configs` (e.g. F5TTS_v1_Base), or the path of a yaml file in that format
    (`model.backbone`, `model.arch`, `model.mel_spec`), which is how small or fine-tuned
    models (the tiny test model's `model.yaml`) declare theirs.
    """

    model_config_name: str = Field(
        default=defaults.VOICE_MODEL_CONFIG,
        description="f5-tts config name (f5_tts/configs/<name>.yaml) or a path to such a yaml",
    )
    checkpoint: str = Field(
        default=defaults.VOICE_CHECKPOINT,
        description="Local .pt/.safetensors file, or hf://<owner>/<repo>/<path in repo>",
    )
    use_ema: bool = Field(
        default=True,
        description="Load EMA weights (.safetensors, or .pt with ema_model_state_dict); "
        "False for a .pt holding only model_state_dict",
    )
    vocab: str | None = Field(
        default=None,
        description="Local vocab.txt or hf:// path; None uses the vocab shipped with f5-tts",
    )
    vocoder: str = Field(
        default=defaults.VOICE_VOCODER,
        description="Vocos hub id, or a local directory with config.yaml + pytorch_model.bin",
    )
    asr_model: str = Field(
        default=defaults.VOICE_ASR_MODEL,
        description="Speech-recognition model (hub id or local directory) for transcribe()",
    )
    device: Device = "auto"
    dtype: TorchDType = "auto"
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads for torch")
    cpu_nice: int | None = Field(
        default=None,
        ge=0,
        le=19,
        description="Niceness the replica yields to (core/cpu_priority.py)",
    )
    gpu_memory_fraction: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Cap on the share of the GPU's memory this replica may use (the card is "
        "shared); None: no cap",
    )
    max_ref_seconds_used: float = Field(
        default=defaults.VOICE_REF_SECONDS_USED,
        gt=0,
        le=20.0,
        description="The reference is trimmed to this many seconds (at silences when it can)",
    )
    prepared_voices_cached: int = Field(
        default=defaults.VOICE_PREPARED_CACHE_SIZE,
        ge=0,
        le=10_000,
        description="Prepared voices kept in memory by key, least recently used dropped first",
    )
    limits: VoiceLimits = Field(
        default_factory=VoiceLimits,
        description="What one synthesis may cost, and the transcript's plausible speaking "
        "rates (checked by the Gateway first, again here for handle callers)",
    )
    warm_up: bool = Field(
        default=True,
        description="Run one tiny request in the constructor, so that the first real request "
        "does not pay for lazy initialisation (the replica reports ready after it)",
    )

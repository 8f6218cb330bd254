"""Typed configs each deployment is constructed with (built from Settings by the app builder).

Deployments never read the environment: on a cluster they run on other nodes, so everything
they need arrives here. Secrets are `SecretStr`, which never prints its value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from serve_app.storage import StorageConfig

TorchDType = Literal["auto", "float32", "float16", "bfloat16"]
Device = Literal["auto", "cpu", "cuda"]


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PromptOptimizerConfig(_Config):
    """How to reach the OpenAI-compatible chat model that writes image prompts."""

    model: str = "gpt-4.1"
    api_key: SecretStr | None = None
    base_url: str | None = None
    timeout_s: float = Field(default=20.0, gt=0)
    max_retries: int = Field(default=2, ge=0)


class ImageGeneratorConfig(_Config):
    """Which diffusers pipeline to load and where to run it."""

    model: str = Field(description="Hub id (e.g. stabilityai/sd-turbo) or a local directory")
    device: Device = "auto"
    dtype: TorchDType = "auto"
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads for torch")


class ClipEmbedderConfig(_Config):
    """Which open_clip model embeds images and texts, where it runs and how much it accepts."""

    model: str = Field(
        default="ViT-B-32",
        description=(
            "open_clip model name (e.g. ViT-B-32), 'local-dir:/path' or a local directory "
            "holding open_clip_config.json + weights, or 'hf-hub:org/repo'"
        ),
    )
    pretrained: str | None = Field(
        default="laion2b_s34b_b79k",
        description=(
            "open_clip pretrained tag or a local .pt/.bin/.safetensors checkpoint; "
            "ignored for local directories and hf-hub models"
        ),
    )
    device: Device = "auto"
    dtype: TorchDType = "auto"
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads for torch")
    max_batch_size: int = Field(default=64, ge=1, description="items per forward pass")
    max_image_pixels: int = Field(
        default=40_000_000, ge=1, description="reject images with more pixels (decompression bombs)"
    )


class VectorIndexConfig(_Config):
    """Where the search catalog lives, how its HNSW indexes are shaped, and its backups."""

    db_path: Path = Field(description="SQLite file (the source of truth, vectors included)")
    dim: int = Field(ge=1, description="Embedding dimension of the CLIP model")
    max_elements: int = Field(ge=1, description="Images per project")
    hnsw_m: int = Field(default=32, ge=2)
    ef_construction: int = Field(default=200, ge=1)
    ef_search: int = Field(default=256, ge=1)
    storage: StorageConfig = Field(description="Object store that receives the backups")
    backup_enabled: bool = True
    backup_interval_s: float = Field(default=1800, gt=0)
    backup_prefix: str = "backups/image_search/"
    backup_keep: int = Field(default=10, ge=1)

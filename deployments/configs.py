"""Typed configs each deployment is constructed with (built from Settings by the app builder).

Deployments never read the environment: on a cluster they run on other nodes, so everything
they need arrives here. Secrets are `SecretStr`, which never prints its value.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

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

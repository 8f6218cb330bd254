"""Request and response types of the deployments' handle API (no HTTP involved), and the
device and dtype names their configs use."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core import defaults

PromptSource = Literal["openai", "fallback"]
TorchDType = Literal["auto", "float32", "float16", "bfloat16"]
Device = Literal["auto", "cpu", "cuda"]


class OptimizedPrompt(BaseModel):
    """An English text-to-image prompt and which path produced it."""

    model_config = ConfigDict(frozen=True)

    prompt: str
    source: PromptSource
    model: str | None = Field(default=None, description="Chat model used, when source=openai")
    fallback_reason: str | None = Field(default=None, description="Why the fallback was used")
    elapsed_ms: float = 0.0


class ImageParams(BaseModel):
    """Generation parameters; seed None means a random seed (reported back)."""

    model_config = ConfigDict(frozen=True)

    width: int = Field(default=defaults.IMAGE_WIDTH, ge=64, le=2048, multiple_of=8)
    height: int = Field(default=defaults.IMAGE_HEIGHT, ge=64, le=2048, multiple_of=8)
    steps: int = Field(default=defaults.IMAGE_STEPS, ge=1, le=150)
    guidance_scale: float = Field(default=defaults.IMAGE_GUIDANCE_SCALE, ge=0.0, le=30.0)
    negative_prompt: str | None = Field(default=None, max_length=2000)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)


@dataclass(frozen=True)
class GeneratedImage:
    """Raw RGB pixels from the generator; encoding happens off the model replica."""

    pixels: np.ndarray  # (height, width, 3) uint8
    seed: int
    steps: int
    elapsed_ms: float
    created_at: float = field(default_factory=time.time)

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    def to_png(self) -> bytes:
        """Encode as PNG (deterministic for identical pixels)."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.pixels, mode="RGB").save(buffer, format="PNG")
        return buffer.getvalue()


@dataclass(frozen=True)
class SynthesizedSpeech:
    """Float32 mono speech from the voice cloner; encoding happens off the model replica."""

    samples: np.ndarray  # (n,) float32, roughly in [-1, 1]
    sample_rate: int
    seed: int
    duration_s: float
    elapsed_ms: float
    chunks: int  # text chunks synthesized and cross-faded together


@dataclass(frozen=True)
class SpeechChunk:
    """One piece of a streamed synthesis: the samples of text chunk `index` of `count`, ready
    to play. A chunk's last 0.15 s are cross-faded with the next chunk's head and come with
    that chunk, so the pieces played back to back are the whole speech, seams faded."""

    samples: np.ndarray  # (n,) float32, roughly in [-1, 1]
    sample_rate: int
    seed: int
    index: int  # 0-based
    count: int  # chunks in the whole stream
    text: str  # the text chunk these samples say
    elapsed_ms: float  # since the synthesis started (its model turn), at this chunk's end

    @property
    def last(self) -> bool:
        return self.index == self.count - 1


class VoiceParams(BaseModel):
    """Synthesis parameters; seed None means a random seed (reported back)."""

    model_config = ConfigDict(frozen=True)

    nfe_steps: int = Field(
        default=defaults.VOICE_NFE_STEPS, ge=1, le=128, description="Flow-matching steps"
    )
    cfg_strength: float = Field(default=defaults.VOICE_CFG_STRENGTH, ge=0.0, le=10.0)
    speed: float = Field(default=1.0, ge=0.3, le=3.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)

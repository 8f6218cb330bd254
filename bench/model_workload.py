"""What benchmark 6 runs on the real-sized models: how much of each measurement (`Settings`,
per device and run size) and the inputs (the prompt, the reference transcript and the texts
spoken).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.types import TorchDType

PROMPT = "a photo of a red cat on the blue tiny dog"
REF_SECONDS = 3.0
REF_TEXT = "Some call me nature, others call me mother nature."
# ~10 s of speech at the reference's speaking rate (f5-tts sizes the output from it).
LONG_TEXT = (
    "The quick brown fox jumps over the lazy dog, while a gentle breeze carries the scent of "
    "fresh bread from the bakery down the narrow street to the old harbour."
)
SHORT_TEXT = "A short sentence for a timing run."  # ~2.5 s

# How the report names each dtype variant.
SHORT_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class Settings:
    """How much of each measurement a run does (CUDA / CPU, full / quick)."""

    image_size: int
    image_steps: tuple[int, ...]
    image_repeats: int
    unet_repeats: int
    full_size_warm_up: bool  # an untimed 512x512 run after the wrapper's own warm-up
    clip_rounds: int
    clip_batches: tuple[int, ...]
    voice_nfe: tuple[int, ...]
    voice_repeats: int
    voice_text: str
    dtypes: tuple[TorchDType, ...]
    channels_last: bool
    note: str = ""


def settings_for(cuda: bool, quick: bool) -> Settings:
    if cuda:
        return Settings(
            image_size=512,
            image_steps=(1, 4),
            image_repeats=3 if quick else 5,
            unet_repeats=5 if quick else 20,
            full_size_warm_up=True,
            clip_rounds=3 if quick else 5,
            clip_batches=(1, 32),
            voice_nfe=(32, 16),
            voice_repeats=2 if quick else 3,
            voice_text=LONG_TEXT,
            dtypes=("float32", "float16", "bfloat16"),
            channels_last=True,
        )
    note = (
        "On the CPU: fp32 only (fp16/bf16, `channels_last` and `torch.compile` need CUDA: "
        "`python -m bench --only models --device cuda [--compile]`) and the wrapper's own "
        f"small warm-up only; torch on all {os.cpu_count()} cores"
    )
    if quick:
        return Settings(
            image_size=512,
            image_steps=(1,),
            image_repeats=1,
            unet_repeats=1,
            full_size_warm_up=False,
            clip_rounds=2,
            clip_batches=(1, 32),
            voice_nfe=(4, 2),
            voice_repeats=1,
            voice_text=SHORT_TEXT,
            dtypes=("float32",),
            channels_last=False,
            note=note + "; quick: 1 image step, one run of each, F5-TTS at NFE 4 and 2 with a "
            "short text (about 2 s of audio).",
        )
    return Settings(
        image_size=512,
        image_steps=(1, 4),
        image_repeats=2,
        unet_repeats=2,
        full_size_warm_up=False,
        clip_rounds=3,
        clip_batches=(1, 32),
        voice_nfe=(16, 8),
        voice_repeats=1,
        voice_text=LONG_TEXT,
        dtypes=("float32",),
        channels_last=False,
        note=note + "; F5-TTS at NFE 16 and 8, not 32 (minutes per sentence here), one run each.",
    )

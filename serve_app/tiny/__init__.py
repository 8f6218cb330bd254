"""Tiny, randomly initialised stand-ins for the real models, built offline for tests.

Owns the registry of tiny-model builders: each name maps to a function that writes one
model into `<root>/<name>` (idempotently and atomically) and returns that path. Heavy
libraries are imported only when a builder runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from serve_app.tiny.clip import build_tiny_clip
from serve_app.tiny.clip_multilingual import build_tiny_multilingual_clip
from serve_app.tiny.diffusion import build_tiny_diffusion_pipeline
from serve_app.tiny.f5tts import (
    F5_CHECKPOINT_FILE,
    F5_CONFIG_FILE,
    F5_VOCAB_FILE,
    build_tiny_f5tts,
    build_tiny_vocos,
    build_tiny_whisper,
)

Builder = Callable[[Path, int], Path]

# name -> builder; the model is written into <root>/<name>.
BUILDERS: dict[str, Builder] = {
    "diffusion": build_tiny_diffusion_pipeline,
    # the English CLIP (open_clip's own text tower and BPE vocabulary), for the benchmarks and
    # anyone selecting an English-only model; the offline profile serves the multilingual one
    "clip": build_tiny_clip,
    "clip-multilingual": build_tiny_multilingual_clip,
    "f5tts": build_tiny_f5tts,
    "vocos": build_tiny_vocos,
    "whisper": build_tiny_whisper,
}


def build_tiny_models(
    root: Path, only: Iterable[str] | None = None, seed: int = 0
) -> dict[str, Path]:
    """Build the named tiny models (all when `only` is None) under `root`; return their paths."""
    names = list(BUILDERS) if only is None else list(only)
    unknown = [name for name in names if name not in BUILDERS]
    if unknown:
        raise KeyError(f"unknown tiny model(s) {unknown}; known: {sorted(BUILDERS)}")
    root = Path(root).expanduser().absolute()
    return {name: BUILDERS[name](root / name, seed) for name in names}


def model_settings(root: Path) -> dict[str, str]:
    """The settings that point the server at the models `build_tiny_models(root)` writes
    (configs/offline.env says the same for `.models`)."""
    root = Path(root)
    f5tts = root / "f5tts"
    return {
        "IMAGE_MODEL": str(root / "diffusion"),
        "CLIP_MODEL": f"local-dir:{root / 'clip-multilingual'}",
        "VOICE_MODEL_CONFIG": str(f5tts / F5_CONFIG_FILE),
        "VOICE_CHECKPOINT": str(f5tts / F5_CHECKPOINT_FILE),
        "VOICE_VOCAB": str(f5tts / F5_VOCAB_FILE),
        "VOICE_VOCODER": str(root / "vocos"),
        "VOICE_ASR_MODEL": str(root / "whisper"),
    }


__all__ = [
    "BUILDERS",
    "Builder",
    "build_tiny_clip",
    "build_tiny_diffusion_pipeline",
    "build_tiny_f5tts",
    "build_tiny_models",
    "build_tiny_multilingual_clip",
    "build_tiny_vocos",
    "build_tiny_whisper",
    "model_settings",
]

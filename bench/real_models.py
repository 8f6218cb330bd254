"""The real-sized models of benchmark 6, with random weights: their sizes and how they are
written to disk.

The three model directories are written by the tiny-model builders of `serve_app.tiny` at
real sizes, with random weights (stored in fp16 to halve disk and load time; every loader
casts them to the configured dtype), so no hub is needed:

- image: Stable Diffusion 2.1's architecture, as sd-turbo has it (UNet 866M parameters, the
  SD VAE, OpenCLIP ViT-H's text tower at the 23 layers SD 2.x uses), the tiny tokenizer and
  the tiny pipeline's DDIM scheduler (trailing spacing, as sd-turbo starts from t=999);
- CLIP: open_clip's "ViT-B-32" config, in the local-directory format;
- voice: f5-tts's packaged F5TTS_v1_Base config and vocabulary, and a Vocos vocoder the size
  of charactr/vocos-mel-24khz.

tests/unit/test_real_model_sizes.py checks the parameter counts against the production
models'.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

from serve_app.tiny.diffusion import PipelineSizes

# stabilityai/sd-turbo = Stable Diffusion 2.1: its UNet, VAE and text-encoder configs.
SD_TURBO = PipelineSizes(
    unet={
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 1024,
        "attention_head_dim": (5, 10, 20, 20),
        "use_linear_projection": True,
    },
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": 512,
    },
    # OpenCLIP ViT-H/14's text tower, 23 of its 24 layers (SD 2.x uses the penultimate
    # layer), with the real 49408-token embedding; the tiny tokenizer uses its first ids.
    text_encoder={
        "vocab_size": 49408,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 1024,
    },
)
CLIP_ARCH = "ViT-B-32"
F5_CONFIG = "F5TTS_v1_Base"
# charactr/vocos-mel-24khz: backbone width 512, 1536 inner, 8 ConvNeXt layers; ISTFT head.
VOCOS_SIZE = {"dim": 512, "intermediate_dim": 1536, "num_layers": 8}
WEIGHTS_DTYPE = "float16"


def clip_model_cfg() -> dict[str, Any]:
    """open_clip's own ViT-B-32 model config."""
    import open_clip

    cfg = open_clip.get_model_config(CLIP_ARCH)
    if cfg is None:
        raise RuntimeError(f"open_clip has no {CLIP_ARCH} config")
    return cfg


def clip_preprocess_cfg(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The tiny CLIP's preprocessing (OpenAI mean/std, bicubic) at the model's image size."""
    from serve_app.tiny.clip import PREPROCESS_CFG

    return {**PREPROCESS_CFG, "size": model_cfg["vision_cfg"]["image_size"]}


def f5_arch() -> dict[str, Any]:
    """`model.arch` of f5-tts's packaged F5TTS_v1_Base config."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(str(files("f5_tts") / "configs" / f"{F5_CONFIG}.yaml"))
    arch = OmegaConf.to_container(cfg.model.arch, resolve=True)
    if not isinstance(arch, dict):
        raise RuntimeError(f"{F5_CONFIG}: model.arch is not a mapping")
    return {str(k): v for k, v in arch.items()}


def f5_tokens() -> list[str]:
    """The vocabulary f5-tts ships (and loads by default), read as its tokenizer reads it."""
    path = files("f5_tts").joinpath("infer/examples/vocab.txt")
    with open(str(path), encoding="utf-8") as f:
        return [line[:-1] for line in f]


def build_real_clip(root: Path, seed: int = 0) -> Path:
    """Write the real-sized random-weight ViT-B-32 under `root` (idempotent); return its path.
    Its image tower is also the one of the default `xlm-roberta-base-ViT-B-32` (same
    `vision_cfg`, same `embed_dim`); `bench.reembed` uses it alone."""
    from serve_app.tiny.clip import build_tiny_clip

    return build_tiny_clip(
        root / "vit-b-32-random",
        seed,
        model_cfg=clip_model_cfg(),
        preprocess_cfg=clip_preprocess_cfg(clip_model_cfg()),
        dtype=WEIGHTS_DTYPE,
    )


def build_real_models(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write the real-sized random-weight models under `root` (idempotent); return their
    paths. Several minutes on a small CPU, mostly the UNet's random initialisation."""
    from serve_app.tiny.diffusion import build_tiny_diffusion_pipeline
    from serve_app.tiny.f5tts import build_tiny_f5tts, build_tiny_vocos, vocos_config

    paths = {}
    steps: list[tuple[str, Callable[[], Path]]] = [
        (
            "diffusion",
            lambda: build_tiny_diffusion_pipeline(
                root / "sd-turbo-random", seed, sizes=SD_TURBO, dtype=WEIGHTS_DTYPE
            ),
        ),
        ("clip", lambda: build_real_clip(root, seed)),
        (
            "f5tts",
            lambda: build_tiny_f5tts(
                root / "f5tts-v1-base-random",
                seed,
                arch=f5_arch(),
                tokens=f5_tokens(),
                name=f"{F5_CONFIG}_random",
                dtype=WEIGHTS_DTYPE,
            ),
        ),
        (
            "vocos",
            lambda: build_tiny_vocos(
                root / "vocos-mel-24khz-random", seed, config=vocos_config(**VOCOS_SIZE)
            ),
        ),
    ]
    for name, build in steps:
        t0 = time.perf_counter()
        paths[name] = build()
        print(f"  {name}: {paths[name]} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return paths

"""Tiny, randomly initialised Stable Diffusion pipeline for offline tests and smoke runs.

Owns `build_tiny_diffusion_pipeline`: it writes a complete diffusers checkpoint (a few MB)
that `AutoPipelineForText2Image.from_pretrained(dir)` loads with no hub access. The
weights are noise, so images are noise too; what matters is the shapes and the plumbing.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from transformers.convert_slow_tokenizer import bytes_to_unicode

from serve_app.tiny.atomic import build_atomic

MODEL_INDEX = "model_index.json"

# Words given whole-word BPE merges, so a few prompts tokenize to more than single bytes.
_WORDS = ("a", "photo", "of", "the", "cat", "dog", "red", "blue", "on", "in", "tiny")
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class PipelineSizes:
    """Constructor keyword arguments of the three networks (the tokenizer is always the tiny
    one). The default is the tiny pipeline; `bench.models` passes Stable Diffusion 2.1's.

    `text_encoder` holds `CLIPTextConfig` arguments; its `vocab_size` defaults to the tiny
    tokenizer's vocabulary and may be set larger (the ids it does not use stay unused).
    """

    unet: dict[str, Any] = field(
        default_factory=lambda: {
            "sample_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": 32,
            "attention_head_dim": 8,
            "norm_num_groups": 32,
        }
    )
    vae: dict[str, Any] = field(
        default_factory=lambda: {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
            "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
            "block_out_channels": (32, 64),
            "latent_channels": 4,
            "norm_num_groups": 32,
            "sample_size": 64,
        }
    )
    text_encoder: dict[str, Any] = field(
        default_factory=lambda: {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "projection_dim": 32,
        }
    )


TINY_SIZES = PipelineSizes()


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """A hand-made CLIP-style byte-level vocabulary with `</w>` word endings."""
    symbols = [bytes_to_unicode()[b] for b in range(256)]
    tokens: list[str] = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in _WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:  # merge left to right: c a t</w> -> ca t</w> -> cat</w>
            merge = f"{parts[0]} {parts[1]}"
            merged = parts[0] + parts[1]
            if merge not in merges:
                merges.append(merge)
            if merged not in tokens:
                tokens.append(merged)
            parts = [merged] + parts[2:]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(tokens)}, merges


def _write_tokenizer_files(directory: Path) -> dict[str, int]:
    """Write vocab.json + merges.txt into `directory`; return the vocabulary."""
    vocab, merges = _clip_vocab_and_merges()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    return vocab


def make_networks(sizes: PipelineSizes, vocab: dict[str, int]) -> tuple[Any, Any, Any]:
    """(UNet, VAE, text encoder) of `sizes`, randomly initialised on torch's current device
    (`torch.device("meta")` builds them without memory, to count parameters)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(**sizes.unet)
    vae = AutoencoderKL(**sizes.vae)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            **{"vocab_size": len(vocab), **sizes.text_encoder},
            bos_token_id=vocab[BOS_TOKEN],
            eos_token_id=vocab[EOS_TOKEN],
            pad_token_id=vocab[EOS_TOKEN],
        )
    )
    return unet, vae, text_encoder


def clip_vocab() -> dict[str, int]:
    """The tiny tokenizer's vocabulary (token -> id)."""
    return _clip_vocab_and_merges()[0]


def _save_pipeline(
    target: Path, seed: int, sizes: PipelineSizes = TINY_SIZES, dtype: str | None = None
) -> None:
    """Build the pipeline deterministically and save it into `target` (must exist); with
    `dtype` (e.g. "float16") the weights are stored in that precision."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from deployments.model_loading import quiet_progress_bars

    scratch = target / "_tokenizer_src"
    vocab = _write_tokenizer_files(scratch)
    tokenizer = CLIPTokenizer.from_pretrained(scratch, model_max_length=77, local_files_only=True)
    shutil.rmtree(scratch)

    torch.manual_seed(seed)
    unet, vae, text_encoder = make_networks(sizes, vocab)
    if dtype is not None:  # nn.Module.to: diffusers' own `to` warns about fp32-only modules
        for network in (unet, vae, text_encoder):
            torch.nn.Module.to(network, dtype=getattr(torch, dtype))
    # Trailing spacing makes a 1-step run start from t=999 (as SD-Turbo does), not t=0.
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="trailing",
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with quiet_progress_bars():
        pipeline.save_pretrained(target, safe_serialization=True)  # type: ignore[attr-defined]


def build_tiny_diffusion_pipeline(
    out_dir: Path, seed: int = 0, *, sizes: PipelineSizes | None = None, dtype: str | None = None
) -> Path:
    """Create the tiny SD pipeline in `out_dir` (idempotent, atomic) and return its path.

    An `out_dir` that already holds `model_index.json` is returned untouched. Otherwise the
    checkpoint is written into a temporary sibling directory and renamed into place, so a
    crash never leaves a half-written checkpoint at `out_dir`. `sizes` (default: tiny) and
    `dtype` (default: float32) let `bench.models` write a real-sized one the same way.
    """
    writer = partial(_save_pipeline, sizes=sizes or TINY_SIZES, dtype=dtype)
    return build_atomic(out_dir, MODEL_INDEX, "diffusers pipeline", writer, seed)

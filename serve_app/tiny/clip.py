"""Tiny, randomly initialised open_clip CLIP model for offline tests and smoke runs.

Owns `build_tiny_clip`: it writes `open_clip_config.json` (model and preprocess config) and
`open_clip_model.safetensors` (about 7 MB, mostly the 49408-token embedding the wheel's BPE
vocabulary requires) so that `open_clip.create_model_and_transforms("local-dir:" + dir)`, the
loader production uses, loads it with no hub access. The weights are noise; what matters is
the shapes and the plumbing.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from serve_app.tiny.atomic import build_atomic

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"

# vocab_size must stay 49408: the tokenizer is the BPE vocabulary shipped inside open_clip.
MODEL_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 2},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
PREPROCESS_CFG: dict[str, Any] = {
    "size": 32,
    "mode": "RGB",
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def make_model(model_cfg: dict[str, Any]) -> Any:
    """An open_clip `CLIP` of `model_cfg`, randomly initialised on torch's current device."""
    import copy

    from open_clip.model import CLIP

    return CLIP(**copy.deepcopy(model_cfg))


def _save_model(
    target: Path,
    seed: int,
    model_cfg: dict[str, Any] = MODEL_CFG,
    preprocess_cfg: dict[str, Any] = PREPROCESS_CFG,
    dtype: str | None = None,
) -> None:
    """Build the CLIP deterministically and save config + weights into `target`; with
    `dtype` (e.g. "float16") the floating-point weights are stored in that precision."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = make_model(model_cfg)
    if dtype is not None:
        model = model.to(dtype=getattr(torch, dtype))
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(target / WEIGHTS_FILE))
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (target / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", "utf-8")


def build_tiny_clip(
    out_dir: Path,
    seed: int = 0,
    *,
    model_cfg: dict[str, Any] | None = None,
    preprocess_cfg: dict[str, Any] | None = None,
    dtype: str | None = None,
) -> Path:
    """Create the tiny open_clip model in `out_dir` (idempotent, atomic) and return its path.

    An `out_dir` that already holds `open_clip_config.json` is returned untouched. Otherwise
    the files are written into a temporary sibling directory and renamed into place, so a
    crash never leaves a half-written model at `out_dir`. `model_cfg` / `preprocess_cfg`
    (default: the tiny ones) and `dtype` (default: float32) let `bench.models` write a
    real-sized one (e.g. open_clip's ViT-B-32 config) the same way.
    """
    writer = partial(
        _save_model,
        model_cfg=MODEL_CFG if model_cfg is None else model_cfg,
        preprocess_cfg=PREPROCESS_CFG if preprocess_cfg is None else preprocess_cfg,
        dtype=dtype,
    )
    return build_atomic(out_dir, CONFIG_FILE, "open_clip model", writer, seed)

"""Tiny, randomly initialised open_clip CLIP model for offline tests and smoke runs.

Owns `build_tiny_clip`: it writes `open_clip_config.json` (model and preprocess config) and
`open_clip_model.safetensors` (about 7 MB, mostly the 49408-token embedding the wheel's BPE
vocabulary requires) so that `open_clip.create_model_and_transforms("local-dir:" + dir)`, the
loader production uses, loads it with no hub access. The weights are noise; what matters is
the shapes and the plumbing.
"""

from __future__ import annotations

import json
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


def _save_model(target: Path, seed: int) -> None:
    """Build the tiny CLIP deterministically and save config + weights into `target`."""
    import copy

    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = CLIP(**copy.deepcopy(MODEL_CFG))
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(target / WEIGHTS_FILE))
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}
    (target / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", "utf-8")


def build_tiny_clip(out_dir: Path, seed: int = 0) -> Path:
    """Create the tiny open_clip model in `out_dir` (idempotent, atomic) and return its path.

    An `out_dir` that already holds `open_clip_config.json` is returned untouched. Otherwise
    the files are written into a temporary sibling directory and renamed into place, so a
    crash never leaves a half-written model at `out_dir`.
    """
    return build_atomic(out_dir, CONFIG_FILE, "open_clip model", _save_model, seed)

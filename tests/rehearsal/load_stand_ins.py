"""Load every stand-in of a hub cache through the production loaders, with the production
defaults (no model settings), and use each once. Run as a child process, since
`huggingface_hub` reads HF_HOME when it is imported:

    HF_HOME=<dir> HF_HUB_OFFLINE=1 python -m tests.rehearsal.load_stand_ins [REPORT.json]

Writes one JSON object (to REPORT.json, else stdout): per model, where it was loaded from
and what it answered.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def main() -> int:
    if os.environ.get("HF_HUB_OFFLINE") != "1" or not os.environ.get("HF_HOME"):
        sys.stderr.write("set HF_HOME and HF_HUB_OFFLINE=1\n")
        return 2
    from PIL import Image

    from core.types import ImageParams
    from deployments.clip_model import ClipModel
    from deployments.diffusion_model import DiffusionImageModel
    from deployments.voice_model import VoiceModel
    from serve_app import deploy_configs
    from serve_app.settings import load_settings

    settings = load_settings(env_files=None)  # the defaults: the production model ids
    report: dict[str, object] = {}

    start = time.perf_counter()
    image = DiffusionImageModel(deploy_configs.image_generator_config(settings, "cpu", 2))
    params = ImageParams(width=64, height=64, steps=1, seed=1)
    made = image.generate("a red fox, poster art", params)
    report["image"] = {
        **image.describe(),
        "shape": list(made.pixels.shape),
        "tokenizer_vocab": len(image.pipeline.tokenizer),
        "scheduler": type(image.pipeline.scheduler).__name__,
        "load_s": round(time.perf_counter() - start, 1),
    }
    del image

    start = time.perf_counter()
    clip = ClipModel(deploy_configs.clip_embedder_config(settings, "cpu", 2))
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, format="PNG")
    vectors = clip.embed_images([buffer.getvalue()])
    texts = clip.embed_texts(["고양이", "a cat"])
    count = sum(p.numel() for p in clip.model.parameters())
    report["clip"] = {
        **clip.describe(),
        "image_vector": list(vectors.shape),
        "text_vectors": list(texts.shape),
        "parameters": count,
        "load_s": round(time.perf_counter() - start, 1),
    }
    del clip

    start = time.perf_counter()
    voice = VoiceModel(deploy_configs.voice_cloner_config(settings, "cpu", 2))
    loaded_s = time.perf_counter() - start
    sr = voice.sample_rate
    t = np.arange(2 * sr, dtype=np.float32) / sr
    tone = (0.3 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
    spoken = voice.synthesize(tone, sr, "안녕", "반가워", nfe_steps=2, seed=3)
    heard = voice.transcribe(tone, sr)
    count = sum(p.numel() for p in voice.model.parameters())
    report["voice"] = {
        **voice.describe(),
        "duration_s": round(spoken.duration_s, 2),
        "transcript": heard,
        "parameters": count,
        "load_s": round(loaded_s, 1),
        "total_s": round(time.perf_counter() - start, 1),
    }
    text = json.dumps(report, ensure_ascii=False, indent=1) + "\n"
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text, "utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

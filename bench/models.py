"""Benchmark 6, real-sized models with random weights: the served model paths at production
size, for the GPU table.

The models (`bench.real_models`): Stable Diffusion 2.1's architecture as sd-turbo has it,
open_clip's ViT-B-32 and F5-TTS v1 base with a Vocos vocoder the size of
charactr/vocos-mel-24khz, written by the tiny-model builders of `serve_app.tiny` at real
sizes with random weights (no hub needed), plus the tiny Whisper (not timed: a transcript is
always given).

Each is loaded through the production wrapper (`DiffusionImageModel`, `ClipModel`,
`VoiceModel` with their configs), and the timed calls (`bench.model_measure`) are the ones
the deployments make: `generate` (512x512, guidance 0 as sd-turbo uses), `embed_images`
(224x224 JPEGs, one at a time and 32 at once) and `synthesize` (a 3 s reference; real-time
factor = synthesis seconds over output audio seconds). The UNet forward alone is timed on
the loaded pipeline's UNet.

Variants, each against the fp32 baseline of the same run: on CUDA, fp16 and bf16 through the
configs' dtype; for the image model also `channels_last` on the UNet and VAE, and with
`--compile` `torch.compile` of the UNet. On the CPU only fp32 runs, with fewer repeats, fewer
F5-TTS steps and a shorter text (`bench.model_workload`, stated in the section).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.context import Context, Section
from bench.model_device import Device
from bench.model_measure import measure
from bench.model_report import report
from bench.model_workload import settings_for
from bench.real_models import build_real_models


def run(
    ctx: Context, device: str, compile_mode: str | None = None, models_dir: Path | None = None
) -> Section:
    started = time.perf_counter()
    dev = Device(device)
    s = settings_for(dev.cuda, ctx.quick)
    if compile_mode and not dev.cuda:
        print("  --compile needs CUDA: ignored on the CPU", flush=True)
        compile_mode = None
    root = models_dir or ctx.subdir("real-models")
    print(f"  building the real-sized models into {root} ...", flush=True)
    t0 = time.perf_counter()
    paths = build_real_models(root)
    build_s = time.perf_counter() - t0
    figures = measure(paths, ctx.models / "whisper", dev, s, compile_mode)
    figures["build_s"] = build_s
    return report(figures, s, time.perf_counter() - started)

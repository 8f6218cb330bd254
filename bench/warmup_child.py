"""One model's first and second call in a fresh process, with or without `warm_up()` first.

    python -m bench.warmup_child --model image|clip|voice --models DIR [--warm-up]

Loads the tiny model the way its deployment does (one torch thread), runs `warm_up()` on
the thread that will serve (when asked), then times two real calls (the offline profile's
sizes: a 128x128 image in 2 steps, one 192x192 JPEG embedded, 8-step speech from a 3 s
reference) and prints one JSON line. A fresh process per sample: lazy initialisation is
per process, which is what a new replica pays.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from bench.env import prepare_environment


def main() -> None:
    prepare_environment()  # before the models (huggingface_hub) are imported
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["image", "clip", "voice"], required=True)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--warm-up", action="store_true")
    args = parser.parse_args()

    from deployments.model_queue import ModelQueue

    queue = ModelQueue("model")  # calls run on one worker thread, as in the deployments
    load = {"image": _image, "clip": _clip, "voice": _voice}[args.model]
    warm_up, call = load(args.models)
    warm_ms = 0.0
    if args.warm_up:
        t0 = time.perf_counter()
        queue.call(warm_up)
        warm_ms = (time.perf_counter() - t0) * 1000
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        queue.call(call)
        times.append((time.perf_counter() - t0) * 1000)
    print(
        json.dumps(
            {
                "model": args.model,
                "warm_up": args.warm_up,
                "warm_up_ms": warm_ms,
                "first_ms": times[0],
                "second_ms": times[1],
            }
        )
    )
    queue.shutdown()


# Each loads its tiny model as its deployment does and returns (its warm_up, one real call).
Calls = tuple[Callable[[], object], Callable[[], object]]


def _image(models: Path) -> Calls:
    from core.types import ImageParams
    from deployments.configs import ImageGeneratorConfig
    from deployments.diffusion_model import DiffusionImageModel

    model = DiffusionImageModel(
        ImageGeneratorConfig(
            model=str(models / "diffusion"),
            device="cpu",
            torch_threads=1,
            warm_up_width=128,
            warm_up_height=128,
        )
    )
    params = ImageParams(width=128, height=128, steps=2, seed=1)

    def call() -> object:
        return model.generate("a red fox in the snow", params)

    return model.warm_up, call


def _clip(models: Path) -> Calls:
    from bench.inputs import random_images
    from deployments.clip_model import ClipModel
    from deployments.configs import ClipEmbedderConfig

    model = ClipModel(
        ClipEmbedderConfig(model=f"local-dir:{models / 'clip'}", device="cpu", torch_threads=1)
    )
    images = iter(random_images(2, seed=5))

    def call() -> object:
        return model.embed_images([next(images)])

    return model.warm_up, call


def _voice(models: Path) -> Calls:
    import io

    import soundfile as sf

    from bench.inputs import reference_wav
    from deployments.configs import VoiceClonerConfig
    from deployments.voice_model import VoiceModel

    model = VoiceModel(
        VoiceClonerConfig(
            model_config_name=str(models / "f5tts" / "model.yaml"),
            checkpoint=str(models / "f5tts" / "model.safetensors"),
            vocab=str(models / "f5tts" / "vocab.txt"),
            vocoder=str(models / "vocos"),
            asr_model=str(models / "whisper"),
            device="cpu",
            torch_threads=1,
        )
    )
    samples, sr = sf.read(io.BytesIO(reference_wav()), dtype="float32")

    def call() -> object:
        return model.synthesize(
            samples, sr, "Hello there, how are you?", "Nice to meet you.", nfe_steps=8, seed=1
        )

    return model.warm_up, call


if __name__ == "__main__":
    main()

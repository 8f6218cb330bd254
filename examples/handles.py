"""Call the running server's model deployments from Python through Serve handles (no HTTP).

Start the server (`bin/serve-offline`), then, from the repository root in another shell:

    RAY_AUTH_MODE=disabled .venv/bin/python examples/handles.py

The script joins the local Ray cluster as a driver, gets a handle per deployment of the
"ai" application and calls the image, search and voice modules directly: prompt + image,
text and image embeddings, nearest-neighbour search, voice cloning, and a bad request to show
what an error looks like. One HTTP call is made: the upload that puts an image in a project
(uploads store the original, which is the gateway's job), so that there is something to find.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import ray
import requests
from ray import serve

from deployments.api import (
    APP_NAME,
    CLIP_EMBEDDER,
    IMAGE_GENERATOR,
    PROMPT_OPTIMIZER,
    VECTOR_INDEX,
    VOICE_CLONER,
    ImageParams,
    InvalidInput,
    VoiceParams,
    api_error,
)

SERVER = os.environ.get("SERVER_URL", "http://127.0.0.1:8000")
PROJECT = "handles-example"


def main() -> None:
    # RAY_ADDRESS, when set, wins over "auto" (e.g. several Ray instances on one machine).
    ray.init(address="auto", log_to_driver=False, configure_logging=False)

    # The ingress (Gateway): which modules this server runs.
    print("modules:", serve.get_app_handle(APP_NAME).describe.remote().result()["enabled"])

    # Prompt optimizer + image generator. A sync driver calls .result(); in async code
    # (another deployment) `await handle.method.remote(...)` instead.
    optimizer = serve.get_deployment_handle(PROMPT_OPTIMIZER, app_name=APP_NAME)
    generator = serve.get_deployment_handle(IMAGE_GENERATOR, app_name=APP_NAME)
    prompt = optimizer.optimize.remote("햄릿", "복수와 광기의 비극").result()
    print(f"prompt ({prompt.source}): {prompt.prompt[:60]}…")
    params = ImageParams(width=128, height=128, steps=2, seed=7)
    image = generator.generate.remote(prompt.prompt, params).result()  # GeneratedImage
    png = image.to_png()
    again = generator.generate.remote(prompt.prompt, params).result().to_png()
    out = Path(tempfile.gettempdir()) / "handles-example.png"
    out.write_bytes(png)
    print(
        f"image: {image.width}x{image.height} seed={image.seed} -> {out} "
        f"(same seed, same PNG: {again == png})"
    )

    # CLIP embeddings + the vector index (after one upload over HTTP).
    clip = serve.get_deployment_handle(CLIP_EMBEDDER, app_name=APP_NAME)
    index = serve.get_deployment_handle(VECTOR_INDEX, app_name=APP_NAME)
    texts = clip.embed_text.remote(["a red fox", "고양이"]).result()  # float32 (n, dim)
    print(f"text embeddings: {texts.shape}, norms {np.linalg.norm(texts, axis=1).round(3)}")
    upload = requests.post(
        f"{SERVER}/v1/projects/{PROJECT}/images", files={"file": ("poster.png", png)}, timeout=60
    )
    upload.raise_for_status()
    vector = clip.embed_images.remote([png]).result()[0]
    hits = index.search.remote(PROJECT, vector, 3).result()  # list[SearchHit], best first
    top = hits[0]
    print(
        f"search: top hit {top.record.id} score {top.score:.3f} "
        f"(the uploaded image: {top.record.id == upload.json()['id']})"
    )

    # Voice cloning: a synthetic 2 s "voice" as the reference, float32 mono at 24 kHz.
    voice = serve.get_deployment_handle(VOICE_CLONER, app_name=APP_NAME)
    sr = 24_000
    t = np.arange(2 * sr) / sr
    reference = 0.2 * np.sin(2 * np.pi * 140 * t) + 0.1 * np.sin(2 * np.pi * 280 * t)
    speech = voice.synthesize.remote(
        reference.astype(np.float32),
        sr,
        "hello there",
        "nice to meet you",
        VoiceParams(nfe_steps=8, seed=1),
    ).result()  # SynthesizedSpeech
    print(f"speech: {speech.sample_rate} Hz, {speech.duration_s:.2f} s, seed {speech.seed}")

    # Errors arrive as the project's errors (wrapped by Ray: exc.cause is the original).
    try:
        generator.generate.remote("", params).result()
    except InvalidInput as exc:
        error = api_error(exc)
        assert error is not None
        print(f"error: {type(error).__name__} {error.status_code} {error.code}: {error.message}")


if __name__ == "__main__":
    main()

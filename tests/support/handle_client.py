"""A second Serve application that uses our deployments through handles only (no HTTP).

`HandleClient` stands for another team's Ray app: it gets handles with
`serve.get_deployment_handle(name, app_name=...)`, calls image generation, text/image
embedding, index search and voice synthesis, and returns plain results (numbers, tuples,
bytes, arrays) so the test can check behaviour without this package's types. Errors are
either left to propagate (`*_raw`) or described as plain dicts (`probe_errors`), to show what
a caller in another app sees.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from ray import serve

from deployments.api import (
    CLIP_EMBEDDER,
    IMAGE_GENERATOR,
    PROMPT_OPTIMIZER,
    VECTOR_INDEX,
    VOICE_CLONER,
    ApiError,
    ImageParams,
    VoiceParams,
    api_error,
)


def describe_error(exc: BaseException) -> dict[str, Any]:
    """What a handle caller can learn from an exception, as plain data."""
    cause = api_error(exc)
    return {
        "type": type(exc).__name__,
        "mro": [cls.__name__ for cls in type(exc).__mro__],
        "is_api_error": isinstance(exc, ApiError),
        "cause_type": type(cause).__name__ if cause is not None else None,
        "cause_module": type(cause).__module__ if cause is not None else None,
        "code": cause.code if cause is not None else None,
        "status_code": cause.status_code if cause is not None else None,
        "message": cause.message if cause is not None else str(exc),
    }


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=8,
    ray_actor_options={"num_cpus": 0.1},
)
class HandleClient:
    """Calls the image, search and voice apps' deployments through Serve handles."""

    def __init__(self, image_app: str, search_app: str, voice_app: str):
        self._optimizer = serve.get_deployment_handle(PROMPT_OPTIMIZER, app_name=image_app)
        self._generator = serve.get_deployment_handle(IMAGE_GENERATOR, app_name=image_app)
        self._clip = serve.get_deployment_handle(CLIP_EMBEDDER, app_name=search_app)
        self._index = serve.get_deployment_handle(VECTOR_INDEX, app_name=search_app)
        self._voice = serve.get_deployment_handle(VOICE_CLONER, app_name=voice_app)

    async def __call__(self, request: Any) -> dict[str, Any]:
        """HTTP (GET /client): what each model deployment reports about itself."""
        return {
            "image": await self._generator.describe.remote(),
            "clip": await self._clip.describe.remote(),
            "voice": await self._voice.describe.remote(),
        }

    async def poster(
        self, title: str, description: str, *, width: int, height: int, seed: int | None
    ) -> dict[str, Any]:
        """PromptOptimizer.optimize, then ImageGenerator.generate with its prompt."""
        prompt = await self._optimizer.optimize.remote(title, description)
        image = await self._generator.generate.remote(
            prompt.prompt, ImageParams(width=width, height=height, steps=2, seed=seed)
        )
        return {
            "prompt": prompt.prompt,
            "prompt_source": prompt.source,
            "result_type": f"{type(image).__module__}.{type(image).__qualname__}",
            "seed": image.seed,
            "steps": image.steps,
            "shape": tuple(image.pixels.shape),
            "dtype": str(image.pixels.dtype),
            "png": image.to_png(),
        }

    async def generate_raw(self, prompt: str) -> Any:
        """ImageGenerator.generate, letting any error propagate to this app's caller."""
        return await self._generator.generate.remote(prompt, ImageParams(width=64, height=64))

    async def embed_and_search(
        self, project_id: str, texts: list[str], images: list[bytes], limit: int
    ) -> dict[str, Any]:
        """Embed texts and images with ClipEmbedder, search each image's vector in the index."""
        text_vectors = await self._clip.embed_text.remote(texts)
        image_vectors = await self._clip.embed_images.remote(images)
        image_hits = []
        for vector in image_vectors:
            hits = await self._index.search.remote(project_id, vector, limit)
            image_hits.append([(hit.record.id, hit.record.sha256, hit.score) for hit in hits])
        text_hits = await self._index.search.remote(project_id, text_vectors[0], limit)
        return {
            "text_shape": tuple(text_vectors.shape),
            "text_dtype": str(text_vectors.dtype),
            "text_norms": np.linalg.norm(text_vectors, axis=1).tolist(),
            "image_shape": tuple(image_vectors.shape),
            "image_norms": np.linalg.norm(image_vectors, axis=1).tolist(),
            "image_hits": image_hits,
            "text_hits": [(hit.record.id, hit.score) for hit in text_hits],
            "image_vectors": image_vectors,
        }

    async def speak(
        self, ref_audio: np.ndarray, ref_sr: int, ref_text: str, text: str, seed: int | None
    ) -> dict[str, Any]:
        """VoiceCloner.synthesize; returns the samples and what describes them."""
        speech = await self._voice.synthesize.remote(
            ref_audio, ref_sr, ref_text, text, VoiceParams(nfe_steps=4, seed=seed)
        )
        return {
            "sample_rate": speech.sample_rate,
            "duration_s": speech.duration_s,
            "seed": speech.seed,
            "chunks": speech.chunks,
            "samples": speech.samples,
            "sha256": hashlib.sha256(speech.samples.tobytes()).hexdigest(),
        }

    async def speak_stream(
        self, ref_audio: np.ndarray, ref_sr: int, ref_text: str, text: str, seed: int
    ) -> dict[str, Any]:
        """VoiceCloner.synthesize_stream through a streaming handle, read with `async for`."""
        stream = self._voice.options(stream=True).synthesize_stream.remote(
            ref_audio, ref_sr, ref_text, text, VoiceParams(nfe_steps=4, seed=seed)
        )
        return _chunks_described([chunk async for chunk in stream])

    async def speak_prepared(
        self, ref_audio: np.ndarray, ref_sr: int, ref_text: str, text: str, seed: int, key: str
    ) -> dict[str, Any]:
        """The same speech from the raw reference, from a prepared voice, by its key, and
        streamed by its key; then the key's error once another voice is asked for by a key
        never prepared."""
        params = VoiceParams(nfe_steps=4, seed=seed)
        plain = await self._voice.synthesize.remote(ref_audio, ref_sr, ref_text, text, params)
        voice = await self._voice.prepare_voice.remote(ref_audio, ref_sr, ref_text, key=key)
        prepared = await self._voice.synthesize_voice.remote(voice, text, params)
        by_key = await self._voice.synthesize_voice.remote(key, text, params)
        streamed = self._voice.options(stream=True).synthesize_voice_stream.remote(
            key, text, params
        )
        plain_stream = self._voice.options(stream=True).synthesize_stream.remote(
            ref_audio, ref_sr, ref_text, text, params
        )
        try:
            await self._voice.synthesize_voice.remote(f"{key}-never-prepared", text, params)
        except Exception as exc:  # noqa: BLE001 - describing it is the point
            unknown = describe_error(exc)
        else:
            unknown = {"type": None}
        return {
            "prepared_type": f"{type(voice).__module__}.{type(voice).__qualname__}",
            "prepared_key": voice.key,
            "plain": hashlib.sha256(plain.samples.tobytes()).hexdigest(),
            "prepared": hashlib.sha256(prepared.samples.tobytes()).hexdigest(),
            "by_key": hashlib.sha256(by_key.samples.tobytes()).hexdigest(),
            "stream": _chunks_described([chunk async for chunk in streamed]),
            "plain_stream": _chunks_described([chunk async for chunk in plain_stream]),
            "unknown_key": unknown,
        }

    async def transcribe(self, audio: np.ndarray, sr: int) -> str:
        """VoiceCloner.transcribe (the ASR model)."""
        return await self._voice.transcribe.remote(audio, sr)

    async def probe_errors(self) -> dict[str, dict[str, Any]]:
        """Bad input to each model, caught here: what the error looks like inside an app."""
        calls = {
            "empty_prompt": self._generator.generate.remote("", ImageParams(width=64, height=64)),
            "empty_text": self._clip.embed_text.remote([""]),
            "not_an_image": self._clip.embed_images.remote([b"definitely not an image"]),
            "empty_speech_text": self._voice.synthesize.remote(
                np.zeros(24_000, dtype=np.float32) + 0.1,
                24_000,
                "hello",
                "   ",
                VoiceParams(nfe_steps=1),
            ),
        }
        seen: dict[str, dict[str, Any]] = {}
        for name, response in calls.items():
            try:
                await response
            except Exception as exc:  # noqa: BLE001 - describing it is the point
                seen[name] = describe_error(exc)
            else:
                seen[name] = {"type": None}
        return seen


def _chunks_described(chunks: list[Any]) -> dict[str, Any]:
    samples = np.concatenate([chunk.samples for chunk in chunks])
    return {
        "indexes": [chunk.index for chunk in chunks],
        "counts": {chunk.count for chunk in chunks},
        "texts": [chunk.text for chunk in chunks],
        "last": [chunk.last for chunk in chunks],
        "sample_rate": chunks[0].sample_rate,
        "samples": samples,
        "sha256": hashlib.sha256(samples.tobytes()).hexdigest(),
    }

"""OpenAI-compatible routes, so the official `openai` client works with base_url=".../v1".

- `POST /v1/images/generations`: the prompt as given (no prompt optimizer) through the same
  ImageGenerator as the seed routes; PNGs inline (`b64_json`) or stored and linked (`url`).
- `POST /v1/audio/speech`: the voice module speaking `input` in a saved voice (`voice` is a
  voice id stored with `PUT /v1/voices/{voice_id}`); `stream_format` `audio` (chunked) or
  `sse` (`speech.audio.delta` / `speech.audio.done` events) streams it as it is made.
- `POST /v1/embeddings`: CLIP embeddings of texts and images (the image-search module's
  embedder), in one space, as floats or as base64 of little-endian float32. An image input
  is a data URL or an `image_url` object (`serve_app/embedding_inputs.py`), checked as an
  upload is.

Errors keep the project's shape, `{"error": {"code", "message", ...}}`, which the openai
client reads: it raises `openai.APIStatusError` subclasses with our message and code.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable
from typing import Annotated, Any
from urllib.parse import urljoin, urlsplit

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from core.errors import InvalidInput, OverBudget
from serve_app.access import check_voice, model_work, module_access
from serve_app.embedding_inputs import check_image_input, decode_image
from serve_app.image_pipeline import (
    check_image_work,
    check_pixel_budget,
    encode_png,
    generate_pixels,
    store_png,
)
from serve_app.modules import IMAGE, IMAGE_SEARCH, VOICE
from serve_app.openai_schemas import (
    EmbeddingData,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbeddingUsage,
    ImageData,
    ImageGenerationRequest,
    ImagesResponse,
    SpeechRequest,
)
from serve_app.prepared_voices import saved_voice
from serve_app.routes.models import model_catalog
from serve_app.schemas import ERROR_RESPONSES, ErrorResponse
from serve_app.served_models import CLIP_MODEL
from serve_app.services import Services, get_services
from serve_app.voice_pipeline import (
    audio_body,
    checked_text,
    open_speech_stream,
    speak,
    sse_body,
    voice_params,
)

router = APIRouter(prefix="/v1", tags=["openai-compatible"], responses=ERROR_RESPONSES)
ServicesDep = Annotated[Services, Depends(get_services)]


def absolute_url(request: Request, url: str) -> str:
    """`url` as a link any client can fetch: a relative one (the local store's
    `/v1/storage/{key}` route) is resolved against this app's base URL, which includes
    Serve's route prefix (the ASGI root_path)."""
    parts = urlsplit(url)
    if parts.scheme:
        return url
    base = str(request.base_url)  # scheme://host[:port]{root_path}/
    if parts.netloc:  # protocol-relative //host/path
        return urljoin(base, url)
    return urljoin(base, url.lstrip("/"))


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    dependencies=[module_access("image"), model_work],
)
async def create_images(
    body: ImageGenerationRequest, request: Request, services: ServicesDep
) -> ImagesResponse:
    """Generate `n` images from the prompt (used as given); image i uses seed + i."""
    await services.board.require_ready(IMAGE)
    params = body.image_params(services.config.image_defaults)
    check_pixel_budget(
        services.config, params, fields=("size",), subject=f"size {params.width}x{params.height}"
    )
    check_image_work(services.config, params, body.count, fields=("n", "steps", "size"))
    created = int(time.time())
    generated: list[tuple[int, bytes]] = []
    # One after another: the generator runs one request at a time behind a bounded queue,
    # which n concurrent calls from one request could fill on their own.
    for i in range(body.count):
        seed = None if body.seed is None else body.seed + i
        image = await generate_pixels(
            services, body.prompt, params.model_copy(update={"seed": seed})
        )
        generated.append((image.seed, await encode_png(image)))

    data: list[ImageData] = []
    for seed, png in generated:
        if body.format == "url":
            _, url = await store_png(services, png)
            data.append(
                ImageData(url=absolute_url(request, url), revised_prompt=body.prompt, seed=seed)
            )
        else:
            data.append(
                ImageData(
                    b64_json=base64.b64encode(png).decode("ascii"),
                    revised_prompt=body.prompt,
                    seed=seed,
                )
            )
    return ImagesResponse(created=created, data=data)


def count_tokens(texts: list[str]) -> int:
    """Usage is approximate: whitespace-separated words, not the CLIP tokenizer's tokens."""
    return sum(len(text.split()) for text in texts)


def check_embedding_work(services: Services, texts: list[str], images: int = 0) -> None:
    """422 `over_budget` when the inputs' characters together are over
    EMBEDDINGS_MAX_TOTAL_CHARS (each input may be within its own limit, the sum not), or
    when there are more images than a batch upload may carry (IMAGE_SEARCH_MAX_BATCH_FILES:
    each image is decoded and checked here, then embedded, as an uploaded one is)."""
    total = sum(len(text) for text in texts)
    limit = services.config.embeddings_max_total_chars
    if total > limit:
        raise OverBudget(
            f"{len(texts)} inputs of {total} characters together exceed the limit of {limit} "
            "(EMBEDDINGS_MAX_TOTAL_CHARS); send fewer or shorter texts per request",
            limit="EMBEDDINGS_MAX_TOTAL_CHARS",
            allowed=limit,
            estimated=total,
            fields=[{"field": "input", "message": "over the work budget"}],
        )
    most_images = services.config.image_search_max_batch_files
    if images > most_images:
        raise OverBudget(
            f"{images} images in one request exceed the limit of {most_images} "
            "(IMAGE_SEARCH_MAX_BATCH_FILES); send fewer images per request",
            limit="IMAGE_SEARCH_MAX_BATCH_FILES",
            allowed=most_images,
            estimated=images,
            fields=[{"field": "input", "message": "over the work budget"}],
        )


async def checked_images(services: Services, images: list[tuple[int, str]]) -> list[bytes]:
    """Each image input's bytes, checked as an upload is (413/415/422 naming `input.N`),
    decoded off the event loop; the first bad one refuses the request before any model call."""
    config = services.config

    def check_all() -> list[bytes]:
        checked = []
        for index, url in images:
            data = decode_image(url, index=index, max_bytes=config.image_search_max_bytes)
            checked.append(
                check_image_input(data, index=index, max_pixels=config.image_search_max_pixels)
            )
        return [image.data for image in checked]

    return await asyncio.to_thread(check_all) if images else []


async def embed_inputs(
    services: Services, texts: list[str], images: list[bytes]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Text and image embeddings together: each kind goes through its own gathering of this
    replica's concurrent calls (`Services.embed_texts`, `Services.embed_images`)."""

    async def none() -> list[np.ndarray]:
        return []

    calls: list[Awaitable[list[np.ndarray]]] = [
        services.embed_texts(texts) if texts else none(),
        services.embed_images(images) if images else none(),
    ]
    # Both calls end before either's error is raised, so no failure is left unread.
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    results: list[list[np.ndarray]] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        results.append(outcome)
    return results[0], results[1]


@router.post(
    "/embeddings",
    response_model=EmbeddingsResponse,
    responses={
        413: {
            "model": ErrorResponse,
            "description": "An image over IMAGE_SEARCH_MAX_BYTES or IMAGE_SEARCH_MAX_PIXELS",
        },
        415: {
            "model": ErrorResponse,
            "description": "An image input that is not an image in an accepted format",
        },
    },
    dependencies=[module_access("image_search"), model_work],
)
async def create_embeddings(
    body: EmbeddingsRequest, request: Request, services: ServicesDep
) -> EmbeddingsResponse:
    """CLIP embeddings (unit norm) of texts and images, in one space and in input order;
    texts past the model's context (77 tokens for CLIP) are truncated. An image is a data URL
    (`data:image/png;base64,...`) or `{"type": "image_url", "image_url": {"url": ...}}`."""
    await services.board.require_ready(IMAGE_SEARCH)
    texts, images = body.texts, body.images
    text_values = [text for _, text in texts]
    check_embedding_work(services, text_values, len(images))
    image_bytes = await checked_images(services, images)
    embedder = await model_catalog(request).model(CLIP_MODEL)
    dim = embedder.dimensions
    if body.dimensions is not None and body.dimensions != dim:
        raise InvalidInput(
            f"dimensions={body.dimensions} is not supported: this model's embeddings have "
            f"{dim} dimensions (omit dimensions or pass {dim})",
            fields=[{"field": "dimensions", "message": f"must be {dim}"}],
        )
    text_vectors, image_vectors = await embed_inputs(services, text_values, image_bytes)
    vectors: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(body.input)
    for (index, _), vector in zip(texts, text_vectors, strict=True):
        vectors[index] = vector
    for (index, _), vector in zip(images, image_vectors, strict=True):
        vectors[index] = vector
    floats = np.asarray(vectors, dtype=np.float32)
    if body.encoding_format == "base64":
        encoded: list[Any] = [
            base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii") for vector in floats
        ]
    else:
        encoded = floats.tolist()
    tokens = count_tokens(text_values)
    return EmbeddingsResponse(
        data=[EmbeddingData(index=i, embedding=value) for i, value in enumerate(encoded)],
        model=body.model or embedder.id,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )


@router.post(
    "/audio/speech",
    response_class=Response,
    responses={
        200: {
            "content": {"audio/mpeg": {}, "text/event-stream": {}},
            "description": "The speech (streamed as it is made with `stream_format`)",
        },
        404: {"description": "No saved voice with that id"},
    },
    dependencies=[module_access("voice"), model_work],
)
async def create_speech(body: SpeechRequest, request: Request, services: ServicesDep) -> Response:
    """OpenAI's text-to-speech, in a saved voice (its transcript is reused or made once).
    With `stream_format` the audio is sent as each sentence is made; errors before the first
    byte keep their status, later ones end the stream (`sse`: an `error` event)."""
    check_voice(request, body.voice)
    await services.board.require_ready(VOICE)
    checked_text(services, body.input)
    voice = await saved_voice(services, body.voice)
    fmt = body.response_format or "mp3"
    params = voice_params(services, body.speed, body.seed, body.nfe_steps)
    if body.stream_format is not None:
        stream = await open_speech_stream(
            services,
            reference=voice,
            ref_text=None,
            text=body.input,
            fmt=fmt,
            params=params,
            format_field="response_format",
        )
        headers = {"X-Seed": str(stream.seed), "X-Sample-Rate": str(stream.sample_rate)}
        if body.stream_format == "sse":
            return StreamingResponse(
                sse_body(stream, count_tokens([body.input])),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache"},
            )
        media_type = stream.content_type
        return StreamingResponse(audio_body(stream), media_type=media_type, headers=headers)
    spoken = await speak(
        services,
        reference=voice,
        ref_text=None,
        text=body.input,
        fmt=fmt,
        params=params,
    )
    return Response(
        content=spoken.data,
        media_type=spoken.content_type,
        headers={"X-Seed": str(spoken.speech.seed)},
    )

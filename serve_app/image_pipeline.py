"""The image-generation flow shared by the routes: prompt -> pixels -> PNG."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import ApiError, InvalidInput, OverBudget
from core.metrics import prompt_fallbacks
from core.prompt_text import fallback_prompt
from core.storage import join_key
from core.types import GeneratedImage, ImageParams, OptimizedPrompt
from serve_app.deployment_calls import await_deployment
from serve_app.file_links import store_and_link
from serve_app.modules import IMAGE
from serve_app.schemas import ImageGenerateRequest, StoredImageResponse, Timings
from serve_app.services import GatewayConfig, Services

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class RenderedImage:
    """A generated PNG with the prompt and parameters that made it, and step timings (ms)."""

    png: bytes
    prompt: OptimizedPrompt
    image: GeneratedImage
    params: ImageParams
    prompt_ms: float
    generate_ms: float
    encode_ms: float


def check_pixel_budget(
    config: GatewayConfig,
    params: ImageParams,
    fields: Sequence[str] = ("width", "height"),
    subject: str = "width x height",
) -> None:
    """422 naming `fields` (and `subject` in the message) when width x height is over
    IMAGE_MAX_PIXELS."""
    pixels = params.width * params.height
    if pixels > config.image_max_pixels:
        raise InvalidInput(
            f"{subject} = {pixels} pixels exceeds the limit of "
            f"{config.image_max_pixels} (IMAGE_MAX_PIXELS)",
            fields=[{"field": field, "message": "too large"} for field in fields],
        )


def check_image_work(
    config: GatewayConfig, params: ImageParams, count: int = 1, fields: Sequence[str] = ("steps",)
) -> None:
    """422 `over_budget` when count x steps x width x height is over IMAGE_MAX_PIXEL_STEPS
    (each factor may be within its own limit, the product not)."""
    work = count * params.steps * params.width * params.height
    limit = config.image_max_pixel_steps
    if work > limit:
        images = f"{count} images x " if count > 1 else ""
        raise OverBudget(
            f"{images}{params.steps} steps x {params.width}x{params.height} pixels = {work} "
            f"pixel-steps exceeds the limit of {limit} (IMAGE_MAX_PIXEL_STEPS); ask for fewer "
            "images, fewer steps or a smaller size",
            limit="IMAGE_MAX_PIXEL_STEPS",
            allowed=limit,
            estimated=work,
            fields=[{"field": field, "message": "over the work budget"} for field in fields],
        )


async def generate_pixels(services: Services, prompt: str, params: ImageParams) -> GeneratedImage:
    """One call to the ImageGenerator deployment, the prompt used as given.

    The caller checks readiness (`board.require_ready(IMAGE)`) and the pixel budget first.
    """
    return await await_deployment(
        services.image_generator.generate.remote(prompt, params),
        what="image generation",
        timeout_s=services.config.request_timeout_s,
        watch=services.board.watch(IMAGE),
    )


async def encode_png(image: GeneratedImage) -> bytes:
    """Encode the pixels as PNG in a worker thread (off the event loop and the model replica)."""
    return await asyncio.to_thread(image.to_png)


async def store_png(services: Services, png: bytes, name: str | None = None) -> tuple[str, str]:
    """Store a PNG under IMAGE_REMOTE_PREFIX{name or a uuid}.png; answer (key, its link)."""
    key = join_key(services.config.image_remote_prefix, f"{name or uuid.uuid4().hex}.png")
    return key, await store_and_link(services.store, key, png, "image/png")


async def render_image(services: Services, request: ImageGenerateRequest) -> RenderedImage:
    """Optimise the prompt, generate the image and encode it as PNG (off the model replica)."""
    await services.board.require_ready(IMAGE)
    params = request.image_params(services.config.image_defaults)
    check_pixel_budget(services.config, params)
    check_image_work(services.config, params, fields=("steps", "width", "height"))
    timeout_s = services.config.request_timeout_s

    # A full generator refuses here, before the prompt step spends an OpenAI call on it.
    with services.image_admission.admit("image generation"):
        started = time.perf_counter()
        prompt = await _optimize(services, request.title, request.description, timeout_s)
        prompted = time.perf_counter()
        image = await generate_pixels(services, prompt.prompt, params)
        generated = time.perf_counter()
    png = await encode_png(image)
    encoded = time.perf_counter()
    return RenderedImage(
        png=png,
        prompt=prompt,
        image=image,
        params=params.model_copy(update={"seed": image.seed}),
        prompt_ms=(prompted - started) * 1000,
        generate_ms=(generated - prompted) * 1000,
        encode_ms=(encoded - generated) * 1000,
    )


async def _optimize(
    services: Services, title: str, description: str, timeout_s: float
) -> OptimizedPrompt:
    """The optimizer falls back by itself; if its deployment is unreachable, so do we."""
    started = time.perf_counter()
    try:
        return await await_deployment(
            services.prompt_optimizer.optimize.remote(title, description),
            what="prompt optimisation",
            timeout_s=timeout_s,
        )
    except ApiError as exc:
        logger.warning("prompt optimizer unavailable, using the template: %s", exc.message)
        prompt_fallbacks().inc(1, tags={"reason": "optimizer_unavailable"})
        return OptimizedPrompt(
            prompt=fallback_prompt(title, description),
            source="fallback",
            fallback_reason=f"prompt optimizer unavailable: {exc.message}",
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )


async def render_and_store(
    services: Services, request: ImageGenerateRequest, name: str | None = None
) -> StoredImageResponse:
    """Generate an image and store its PNG (`store_png`): the answer of
    `/v1/r2/images/generate` and of an image job (which names the key after itself)."""
    started = time.perf_counter()
    rendered = await render_image(services, request)
    stored_at = time.perf_counter()
    key, url = await store_png(services, rendered.png, name)
    done = time.perf_counter()
    params = rendered.params
    return StoredImageResponse(
        key=key,
        url=url,
        storage=services.store.kind,  # type: ignore[arg-type]
        bytes=len(rendered.png),
        prompt=rendered.prompt.prompt,
        prompt_source=rendered.prompt.source,
        prompt_fallback_reason=rendered.prompt.fallback_reason,
        seed=rendered.image.seed,
        width=rendered.image.width,
        height=rendered.image.height,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        timings=Timings(
            prompt_ms=rendered.prompt_ms,
            generate_ms=rendered.generate_ms,
            encode_ms=rendered.encode_ms,
            store_ms=(done - stored_at) * 1000,
            total_ms=(done - started) * 1000,
        ),
    )

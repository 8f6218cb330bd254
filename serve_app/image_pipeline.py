"""The image-generation flow shared by the routes: prompt -> pixels -> PNG."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from deployments.prompt_writer import fallback_prompt
from deployments.types import GeneratedImage, ImageParams, OptimizedPrompt
from serve_app.errors import ApiError, InvalidInput
from serve_app.modules import IMAGE
from serve_app.remote import await_deployment
from serve_app.schemas import ImageGenerateRequest
from serve_app.services import Services

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


async def render_image(services: Services, request: ImageGenerateRequest) -> RenderedImage:
    """Optimise the prompt, generate the image and encode it as PNG (off the model replica)."""
    await services.board.require_ready(IMAGE)
    params = request.image_params(services.config.image_defaults)
    if params.width * params.height > services.config.image_max_pixels:
        raise InvalidInput(
            f"width x height = {params.width * params.height} pixels exceeds the limit of "
            f"{services.config.image_max_pixels} (IMAGE_MAX_PIXELS)",
            fields=[{"field": "width", "message": "too large"},
                    {"field": "height", "message": "too large"}],
        )
    timeout_s = services.config.request_timeout_s

    started = time.perf_counter()
    prompt = await _optimize(services, request.title, request.description, timeout_s)
    prompted = time.perf_counter()
    image: GeneratedImage = await await_deployment(
        services.image_generator.generate.remote(prompt.prompt, params),
        what="image generation",
        timeout_s=timeout_s,
    )
    generated = time.perf_counter()
    png = await asyncio.to_thread(image.to_png)
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
        return OptimizedPrompt(
            prompt=fallback_prompt(title, description),
            source="fallback",
            fallback_reason=f"prompt optimizer unavailable: {exc.message}",
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )

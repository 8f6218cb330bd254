"""Image generation routes of the seed: PNG back, or stored in object storage as JSON."""

from __future__ import annotations

import time
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from serve_app.access import model_work, module_access
from serve_app.image_pipeline import render_and_store, render_image
from serve_app.schemas import ERROR_RESPONSES, ImageGenerateRequest, StoredImageResponse
from serve_app.services import Services, get_services

# The API key's scope: the image module; its concurrent model work (serve_app/access.py).
router = APIRouter(
    tags=["images"],
    responses=ERROR_RESPONSES,
    dependencies=[module_access("image"), model_work],
)
ServicesDep = Annotated[Services, Depends(get_services)]


@router.post(
    "/v1/images/generate",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The generated PNG"}},
)
async def generate_image(body: ImageGenerateRequest, services: ServicesDep) -> Response:
    """Generate an image from a title and description; answer the PNG bytes. The headers
    say how: `X-Image-Seed`, `X-Prompt-Source`, `X-Image-Prompt` (the prompt used,
    percent-encoded UTF-8) and `Server-Timing` (prompt, generate, encode, total in ms)."""
    started = time.perf_counter()
    rendered = await render_image(services, body)
    total_ms = (time.perf_counter() - started) * 1000
    timings = {
        "prompt": rendered.prompt_ms,
        "generate": rendered.generate_ms,
        "encode": rendered.encode_ms,
        "total": total_ms,
    }
    return Response(
        content=rendered.png,
        media_type="image/png",
        headers={
            "X-Image-Seed": str(rendered.image.seed),
            "X-Prompt-Source": rendered.prompt.source,
            # Headers are Latin-1: the prompt (at most PROMPT_MAX_CHARS) goes percent-encoded.
            "X-Image-Prompt": quote(rendered.prompt.prompt, safe=""),
            "Server-Timing": ", ".join(f"{name};dur={ms:.1f}" for name, ms in timings.items()),
        },
    )


@router.post("/v1/r2/images/generate", response_model=StoredImageResponse)
async def generate_and_store_image(
    body: ImageGenerateRequest, services: ServicesDep
) -> StoredImageResponse:
    """Generate an image, store the PNG under IMAGE_REMOTE_PREFIX and answer where it is."""
    return await render_and_store(services, body)

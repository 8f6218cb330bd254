"""What the web console (serve_app/console) reads besides the API itself:

- `GET /v1/console/config`: the enabled modules, request limits and links it builds its
  forms from, so that it offers the ranges this server's settings allow rather than numbers
  written into the page;
- `GET /v1/console/traffic`: this application's queue depths and response counters, from
  Ray's metrics export (serve_app/cluster_traffic.py), for the Status page.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from serve_app.cluster_traffic import TrafficCache, read_traffic
from serve_app.schemas import (
    ERROR_RESPONSES,
    ConsoleConfig,
    ImageFormLimits,
    SearchFormLimits,
    TrafficResponse,
    VoiceFormLimits,
)
from serve_app.services import Services, get_services

router = APIRouter(prefix="/v1/console", tags=["console"], responses=ERROR_RESPONSES)
ServicesDep = Annotated[Services, Depends(get_services)]


@router.get("/config", response_model=ConsoleConfig)
async def console_config(services: ServicesDep) -> ConsoleConfig:
    """The settings a client needs to offer valid requests (no secret, no path)."""
    config = services.config
    defaults = config.image_defaults
    return ConsoleConfig(
        modules=dict(config.enabled),
        image=ImageFormLimits(
            default_width=defaults.width,
            default_height=defaults.height,
            default_steps=defaults.steps,
            default_guidance_scale=defaults.guidance_scale,
            max_pixels=config.image_max_pixels,
            max_pixel_steps=config.image_max_pixel_steps,
        ),
        image_search=SearchFormLimits(
            max_bytes=config.image_search_max_bytes,
            max_pixels=config.image_search_max_pixels,
            max_batch_files=config.image_search_max_batch_files,
        ),
        voice=VoiceFormLimits(
            max_ref_bytes=config.voice_max_ref_bytes,
            max_ref_seconds=config.voice_max_ref_seconds,
            max_text_chars=config.voice_max_text_chars,
            default_nfe_steps=config.voice_default_nfe_steps,
        ),
        max_upload_bytes=config.upload_max_bytes,
        max_json_bytes=config.json_max_bytes,
        dashboard_url=config.dashboard_url,
    )


@router.get("/traffic", response_model=TrafficResponse)
async def console_traffic(request: Request, services: ServicesDep) -> TrafficResponse:
    """Requests waiting and in process per deployment, responses per route and status, and
    queue-full refusals of this application, from Ray's Prometheus export of every node
    (read at most every 2 s per Gateway replica). Counters are totals: rates need two reads.
    `available: false` when no node's export could be read."""
    cache = getattr(request.app.state, "traffic", None)
    if cache is None:
        cache = request.app.state.traffic = TrafficCache()
    app_name = services.board.app_name
    return await cache.get(lambda: read_traffic(app_name))

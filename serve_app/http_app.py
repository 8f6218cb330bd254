"""The FastAPI application: routers, error handlers and the services they use."""

from __future__ import annotations

from fastapi import FastAPI

from serve_app.access import KeyLimits
from serve_app.auth import ApiKeyMiddleware
from serve_app.body_limits import BodyLimitMiddleware, BodyLimits
from serve_app.console import mount_console
from serve_app.http_errors import install_error_handlers
from serve_app.request_metrics import RequestMetricsMiddleware
from serve_app.routes import (
    console_api,
    files,
    health,
    images,
    jobs,
    models,
    openai_compat,
    projects,
    saved_voices,
    voice_generation,
)
from serve_app.services import Services

API_TITLE = "Common AI Server"
API_VERSION = "0.1.0"


def create_http_app(services: Services) -> FastAPI:
    """Build the ASGI app served by the Gateway replica."""
    app = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        description="Image generation, semantic image search and voice cloning on Ray Serve.",
    )
    app.state.services = services
    config = services.config
    limits = BodyLimits(config.json_max_bytes, config.upload_max_bytes, config.body_bytes_in_flight)
    # Starlette runs the middleware added last first: metrics, then keys, then body limits
    # (no body is read or reserved for a request without a valid key).
    app.add_middleware(BodyLimitMiddleware, limits=limits)
    # Always there: with no keys (loopback, AUTH_DISABLED=1) it still writes the audit lines.
    app.state.key_limits = KeyLimits(config.api_keys)
    app.add_middleware(ApiKeyMiddleware, keys=config.api_keys, limits=app.state.key_limits)
    app.add_middleware(RequestMetricsMiddleware)  # outermost: 401s are counted too
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(images.router)
    app.include_router(projects.listing)
    app.include_router(projects.router)
    app.include_router(voice_generation.router)
    app.include_router(saved_voices.listing)
    app.include_router(saved_voices.router)
    app.include_router(files.router)
    app.include_router(openai_compat.router)
    app.include_router(models.router)
    app.include_router(jobs.router)
    app.include_router(console_api.router)
    mount_console(app, services.store)  # the web console's static files at /ui (serve_app/console)
    return app

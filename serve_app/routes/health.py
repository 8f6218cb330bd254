"""/healthz (the process answers) and /readyz (every enabled module has its model loaded)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from core.errors import ApiError
from serve_app.deployment_calls import await_deployment
from serve_app.schemas import ComponentStatus, ReadinessResponse
from serve_app.services import Services, get_services

router = APIRouter(tags=["health"])
ServicesDep = Annotated[Services, Depends(get_services)]
STARTUP_REPORT_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up; says nothing about models."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=ReadinessResponse,
    responses={503: {"model": ReadinessResponse, "description": "Not every module is ready"}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    """200 when every enabled module is ready and storage answers; 503 otherwise."""
    modules = await services.board.states(fresh=True)
    storage = await _storage_status(services)
    search = modules.get("image_search")
    if search is not None and search.deployments.get("VectorIndex") == "HEALTHY":
        report = await _index_startup_report(services)
        if report is not None:
            modules["image_search"] = search.model_copy(update={"detail": {"vector_index": report}})
    ready = storage.state == "ready" and all(
        state.state in ("ready", "disabled") for state in modules.values()
    )
    body = ReadinessResponse(
        ready=ready, modules=modules, storage=storage, placement=services.config.placement
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


async def _storage_status(services: Services) -> ComponentStatus:
    backend = services.store.kind
    try:
        await asyncio.wait_for(asyncio.to_thread(services.store.check), timeout=5)
    except ApiError as exc:
        reason = exc.message
    except TimeoutError:
        reason = "storage check timed out after 5s"
    else:
        return ComponentStatus(state="ready", enabled_by="R2_ENABLED", backend=backend)
    return ComponentStatus(state="failed", enabled_by="R2_ENABLED", backend=backend, reason=reason)


async def _index_startup_report(services: Services) -> dict[str, Any] | None:
    """How the VectorIndex replica found its database at start (restored from a snapshot,
    damaged snapshots skipped); None when it does not answer within a second or two."""
    if services.vector_index is None:
        return None
    try:
        return await await_deployment(
            services.vector_index.startup_report.remote(),
            what="the image index", timeout_s=STARTUP_REPORT_TIMEOUT_S,
        )
    except ApiError:
        return None

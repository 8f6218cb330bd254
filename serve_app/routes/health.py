"""/healthz (the process answers) and /readyz (every enabled module has its model loaded).

Both need no key. /readyz says only `{"ready": ...}` (same status codes) unless the request
has a valid API key or the server has none: its detail names models, paths, storage errors
and snapshots. Its answer is computed at most once per READINESS_CACHE_S per Gateway replica
(concurrent probes share one computation), outside the module board's lock that the routes
wait on, so probes cannot slow the routes down with storage and index checks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from core.errors import ApiError
from serve_app.access import request_key
from serve_app.deployment_calls import await_deployment
from serve_app.schemas import ComponentStatus, ReadinessResponse, ReadinessSummary
from serve_app.services import Services, get_services

router = APIRouter(tags=["health"])
ServicesDep = Annotated[Services, Depends(get_services)]
STARTUP_REPORT_TIMEOUT_S = 2.0
READINESS_CACHE_S = 1.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up; says nothing about models."""
    return {"status": "ok"}


class ReadinessCache:
    """The last readiness answer for `ttl_s`; one computation at a time, shared by every
    probe that arrives while it runs."""

    def __init__(self, ttl_s: float = READINESS_CACHE_S) -> None:
        self.ttl_s = ttl_s
        self._answer: ReadinessResponse | None = None
        self._at = float("-inf")
        self._running: asyncio.Future[ReadinessResponse] | None = None

    async def get(self, compute: Callable[[], Awaitable[ReadinessResponse]]) -> ReadinessResponse:
        if self._answer is not None and time.monotonic() - self._at <= self.ttl_s:
            return self._answer
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._compute(compute))
        # shield: a probe that gives up does not cancel the others' computation
        return await asyncio.shield(self._running)

    async def _compute(
        self, compute: Callable[[], Awaitable[ReadinessResponse]]
    ) -> ReadinessResponse:
        answer = await compute()
        self._answer, self._at = answer, time.monotonic()
        return answer


@router.get(
    "/readyz",
    response_model=ReadinessResponse | ReadinessSummary,
    responses={
        503: {
            "model": ReadinessResponse | ReadinessSummary,
            "description": "Not every module is ready",
        }
    },
)
async def readyz(request: Request, services: ServicesDep) -> JSONResponse:
    """200 when every enabled module is ready and storage answers; 503 otherwise. The detail
    only for a valid API key (or a server without keys): `{"ready": ...}` otherwise."""
    cache = getattr(request.app.state, "readiness", None)
    if cache is None:
        cache = request.app.state.readiness = ReadinessCache()
    answer = await cache.get(lambda: _readiness(services))
    status = 200 if answer.ready else 503
    if services.config.api_keys and request_key(request) is None:
        return JSONResponse(ReadinessSummary(ready=answer.ready).model_dump(), status_code=status)
    return JSONResponse(answer.model_dump(mode="json"), status_code=status)


async def _readiness(services: Services) -> ReadinessResponse:
    modules = await services.board.read_now()
    storage = await _storage_status(services)
    search = modules.get("image_search")
    if search is not None and search.deployments.get("VectorIndex") == "HEALTHY":
        report = await _index_startup_report(services)
        if report is not None:
            modules["image_search"] = search.model_copy(update={"detail": {"vector_index": report}})
    ready = storage.state == "ready" and all(
        state.state in ("ready", "disabled") for state in modules.values()
    )
    return ReadinessResponse(
        ready=ready, modules=modules, storage=storage, placement=services.config.placement
    )


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
            what="the image index",
            timeout_s=STARTUP_REPORT_TIMEOUT_S,
        )
    except ApiError:
        return None

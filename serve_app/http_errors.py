"""One place that turns exceptions into the server's JSON error shape.

`ApiError`s keep their status; request-validation problems become 422 (400 for a body that
is not JSON at all) naming each field; anything else is logged and masked as a 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import ApiError

logger = logging.getLogger("ray.serve")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on a FastAPI app."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(Exception, _unexpected_error)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **details: Any
) -> JSONResponse:
    """Build the JSON error response."""
    body = {"error": {"code": code, "message": message, **details}}
    return JSONResponse(body, status_code=status, headers=headers)


def api_error_response(exc: ApiError) -> JSONResponse:
    """The response for one of the project's errors (also an ASGI app, for middleware)."""
    if exc.status_code >= 500:
        logger.warning("%s: %s", exc.code, exc.message)
    return JSONResponse(exc.to_body(), status_code=exc.status_code, headers=exc.headers)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return api_error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = []
    malformed_json = False
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ())]
        if error.get("type") == "json_invalid":
            malformed_json = True
        field = ".".join(part for part in location if part not in ("body", "query", "path"))
        fields.append(
            {
                "field": field or location[-1] if location else "body",
                "message": error.get("msg", "invalid"),
            }
        )
    if malformed_json:
        return error_response(
            400, "malformed_json", "the request body is not valid JSON", fields=fields
        )
    names = ", ".join(sorted({entry["field"] for entry in fields}))
    return error_response(422, "invalid_request", f"invalid request: {names}", fields=fields)


async def _http_exception(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, code, str(exc.detail), headers=headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error")

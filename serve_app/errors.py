"""Domain errors that carry their HTTP status, and the one JSON error shape.

Anything raised in a deployment or the gateway that is an `ApiError` reaches the client as
`{"error": {"code", "message", ...details}}` with its status. Everything else is logged and
answered as a masked 500, so internals never leak into a response body.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error with an HTTP status, a stable machine-readable code and a human message."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, **details: Any):
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}

    def to_body(self) -> dict[str, Any]:
        """The JSON body sent to the client."""
        return {"error": {"code": self.code, "message": self.message, **self.details}}

    def __reduce__(self):  # keep details and headers when pickled across Ray processes
        return (_rebuild, (type(self), self.message, self.headers, self.details))


def _rebuild(cls: type[ApiError], message: str, headers: dict[str, str], details: dict) -> ApiError:
    return cls(message, headers=headers, **details)


class BadRequest(ApiError):
    status_code = 400
    code = "bad_request"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status_code = 415
    code = "unsupported_media_type"


class InvalidInput(ApiError):
    status_code = 422
    code = "invalid_request"


class ServiceUnavailable(ApiError):
    status_code = 503
    code = "service_unavailable"


class ModuleDisabled(ServiceUnavailable):
    """The route belongs to a module switched off by its environment variable."""

    code = "module_disabled"


class ModelNotReady(ServiceUnavailable):
    """The model is still loading, or failed to load."""

    code = "model_not_ready"


class ModelFailed(ServiceUnavailable):
    """The model raised while serving a request."""

    code = "model_error"


class Overloaded(ServiceUnavailable):
    """The deployment's bounded queue is full."""

    code = "overloaded"


class StorageUnavailable(ServiceUnavailable):
    """Object storage could not be reached or answered with a server error."""

    code = "storage_unavailable"


class ObjectNotFound(NotFound):
    """No object is stored under the key."""

    code = "object_not_found"


class InvalidKey(InvalidInput):
    """An object key that is empty, too long, absolute or climbs out of its prefix."""

    code = "invalid_key"

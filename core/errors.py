"""Domain errors that carry their HTTP status, and the one JSON error shape.

Anything raised in a deployment or the gateway that is an `ApiError` reaches the client as
`{"error": {"code", "message", ...details}}` with its status. Everything else is logged and
answered masked (a 500 in the Gateway, `ModelFailed` from a model), so internals never leak
into a response body.

Model wrappers (plain Python, no HTTP) raise `ModelInputError` for input they refuse; the
model queue (`deployments.model_queue`) turns it into its `ApiError` and masks anything else.
`find_api_error` is the one place that looks through Ray's error wrappers.
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

    def __reduce__(self) -> tuple[Any, ...]:  # keep details and headers across Ray processes
        return (_rebuild, (type(self), self.message, self.headers, self.details))


def _rebuild(
    cls: type[ApiError], message: str, headers: dict[str, str], details: dict[str, Any]
) -> ApiError:
    return cls(message, headers=headers, **details)


class BadRequest(ApiError):
    status_code = 400
    code = "bad_request"


class Unauthorized(ApiError):
    """No valid API key."""

    status_code = 401
    code = "unauthorized"


class Forbidden(ApiError):
    """A valid API key whose scope does not cover the request (module, project, voice or
    write access)."""

    status_code = 403
    code = "forbidden"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class EmbeddingSpaceChanged(Conflict):
    """A vector made in one embedding space reached a catalog that now answers in another (it
    switched models in between). Details carry `active` (the active `EmbeddingSpace.key`);
    the Gateway embeds again in that space and retries once."""

    code = "embedding_space_changed"


class IdempotencyKeyReused(Conflict):
    """An Idempotency-Key sent again with a different request body (details: `job_id`,
    the job the key made)."""

    code = "idempotency_key_reused"


class VoiceNotPrepared(Conflict):
    """A prepared voice named by its key that the VoiceCloner does not hold (not prepared
    on this replica, or evicted), or one prepared for another model: prepare it again
    (`prepare_voice`) or pass the `PreparedVoice` itself. The Gateway does so by itself."""

    code = "voice_not_prepared"


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status_code = 415
    code = "unsupported_media_type"


class InvalidInput(ApiError):
    status_code = 422
    code = "invalid_request"


class TooManyRequests(ApiError):
    """Over the API key's own limit (requests per minute, concurrent model work); carries
    `Retry-After`."""

    status_code = 429
    code = "rate_limited"


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


class ModelInputError(Exception):
    """Input a model wrapper refuses (empty text, bad parameters): the caller's fault, 422.

    Raised by the plain model wrappers instead of a bare ValueError, so that a ValueError
    from deep inside torch is never mistaken for the client's mistake.
    """

    api_error: type[ApiError] = InvalidInput

    def to_api_error(self) -> ApiError:
        """The error the client sees."""
        return self.api_error(str(self))


class UnreadableImage(ModelInputError):
    """Bytes that are not an image the model accepts: 415."""

    api_error = UnsupportedMediaType


class PreparedForAnotherModel(ModelInputError):
    """A prepared voice made by another voice model (or format): 409, prepare it again."""

    api_error = VoiceNotPrepared


class OverBudget(InvalidInput):
    """A request whose estimated work is past a configured budget (`limit` names it)."""

    code = "over_budget"


class RefusedByLimit(ModelInputError):
    """Input refused by a configured limit: `limit` names the setting, `allowed` is its
    value and `estimated` the request's (all three reach the client in the error body)."""

    def __init__(self, message: str, *, limit: str, allowed: float, estimated: float) -> None:
        super().__init__(message)
        self.limit, self.allowed, self.estimated = limit, allowed, estimated

    def to_api_error(self) -> ApiError:
        return self.api_error(
            str(self), limit=self.limit, allowed=self.allowed, estimated=self.estimated
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_refusal, (type(self), str(self), self.limit, self.allowed, self.estimated))


class BudgetExceeded(RefusedByLimit):
    """Refused before the work starts: its estimate is past a budget (422 `over_budget`)."""

    api_error = OverBudget


class TranscriptMismatch(RefusedByLimit):
    """A reference transcript whose length cannot match its audio (422 `invalid_request`
    naming the field `ref_text`)."""

    def to_api_error(self) -> ApiError:
        return self.api_error(
            str(self),
            fields=[{"field": "ref_text", "message": "does not match the reference audio"}],
            limit=self.limit,
            allowed=self.allowed,
            estimated=self.estimated,
        )


def _rebuild_refusal(
    cls: type[RefusedByLimit], message: str, limit: str, allowed: float, estimated: float
) -> RefusedByLimit:
    return cls(message, limit=limit, allowed=allowed, estimated=estimated)


def find_api_error(exc: BaseException) -> ApiError | None:
    """The project's error behind an exception, or None.

    Follows Ray's wrappers (`RayTaskError.cause`) and `__cause__`/`__context__`, so that a
    handle call's error comes back with its `code`, `status_code`, `message` and details.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException) and cause is not current:
            current = cause
            continue
        if isinstance(current, ApiError):
            return current
        current = current.__cause__ or current.__context__
    return None

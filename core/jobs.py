"""Asynchronous jobs: their kinds, states, the job record callers see, and webhook signing.

A job is one request of a synchronous route (`/v1/r2/images/generate`, `/v1/r2/voice/generate`,
`POST /v1/projects/{id}/images/batch`) run later by the JobRunner deployment; its record is
what `GET /v1/jobs/{id}` and the JobRunner's handle methods answer, and what a webhook posts.
Plain vocabulary: no Ray, no HTTP, no database (`serve_app.job_store` keeps the records).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobKind = Literal["image", "voice", "batch_upload"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
WebhookState = Literal["pending", "delivered", "failed"]

JOB_KINDS: tuple[str, ...] = ("image", "voice", "batch_upload")
FINISHED_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
# The module each kind's work belongs to (an API key needs it; its models run the job).
KIND_MODULES: dict[str, str] = {"image": "image", "voice": "voice", "batch_upload": "image_search"}
SIGNATURE_HEADER = "X-Signature"


class WebhookStatus(BaseModel):
    """Where the completion notice goes and how its delivery stands."""

    model_config = ConfigDict(frozen=True)

    url: str
    state: WebhookState
    attempts: int = Field(ge=0, description="POSTs made so far")
    last_error: str | None = Field(default=None, description="Why the last attempt failed")


class JobView(BaseModel):
    """A job as its owner sees it (GET /v1/jobs/{id}, the webhook body, the handle API).

    `result` is the body the synchronous route would have answered; `result_key` and
    `result_url` name the stored file (image, speech), as the `/v1/r2/...` routes do.
    `error` is the project's error body (`{"code", "message", ...}`) of a failed job, or of
    the last failed attempt of a job that is queued again.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    kind: JobKind
    state: JobState
    attempts: int = Field(ge=0, description="Times the job was started (a retry adds one)")
    max_attempts: int = Field(ge=1)
    created_at: str = Field(description="ISO 8601, UTC: when the job was accepted")
    started_at: str | None = Field(default=None, description="When its last attempt started")
    finished_at: str | None = None
    queue_position: int | None = Field(
        default=None, description="Jobs of the same kind ahead of it (queued jobs only)"
    )
    result: dict[str, Any] | None = None
    result_key: str | None = None
    result_url: str | None = None
    error: dict[str, Any] | None = None
    idempotency_key: str | None = None
    webhook: WebhookStatus | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


class JobPage(BaseModel):
    """Jobs newest first; pass `next_cursor` back for the next page."""

    model_config = ConfigDict(frozen=True)

    items: list[JobView]
    next_cursor: str | None = None


class JobSubmitted(BaseModel):
    """What a submission answers: the job, and whether it is new (False: an earlier
    submission with the same Idempotency-Key and the same body)."""

    model_config = ConfigDict(frozen=True)

    job: JobView
    created: bool


def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Signature` header of a webhook: `t=<unix seconds>,v1=<hex HMAC-SHA256 of
    "{t}.{body}" keyed with JOBS_WEBHOOK_SECRET>`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def webhook_backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Seconds before delivery attempt `attempt + 1` after `attempt` failed ones: `base_s`
    doubling each time, at most `max_s`."""
    if attempt < 1:
        return 0.0
    return float(min(max_s, base_s * 2 ** (attempt - 1)))

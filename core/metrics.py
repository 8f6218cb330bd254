"""The server's own Prometheus metrics, beside Serve's built-in ones.

Exported through Ray's metrics endpoint with a `ray_` prefix (counters also get `_total`),
labelled with application, deployment and replica by Serve. Each metric is created on first
use inside the process that records it (a replica), never at import time.
"""

from __future__ import annotations

from functools import cache

from ray.serve.metrics import Counter, Gauge, Histogram

LATENCY_BOUNDARIES_S = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]


@cache
def http_requests() -> Counter:
    return Counter(
        "ai_http_requests",
        description="HTTP requests answered by the gateway, by route template and status.",
        tag_keys=("route", "method", "status"),  # type: ignore[arg-type]  # Ray types it as tuple[str]
    )


@cache
def queue_rejections() -> Counter:
    return Counter(
        "ai_queue_rejections",
        description="Calls refused because a model deployment's bounded queue was full.",
        tag_keys=("call",),
    )


@cache
def gathered_batch_size() -> Histogram:
    return Histogram(
        "ai_gathered_batch_size",
        description="Items per deployment request sent by the gateway's call batchers "
        "(concurrent searches and embeddings gathered into one request).",
        boundaries=[1, 2, 4, 8, 16, 32, 64, 128],
        tag_keys=("call",),
    )


@cache
def image_generation_seconds() -> Histogram:
    return Histogram(
        "ai_image_generation_seconds",
        description="Time the image model spent generating one image.",
        boundaries=LATENCY_BOUNDARIES_S,
        tag_keys=("device",),
    )


@cache
def prompt_fallbacks() -> Counter:
    return Counter(
        "ai_prompt_fallbacks",
        description="Prompts written by the template instead of OpenAI, by reason.",
        tag_keys=("reason",),
    )


@cache
def index_images() -> Gauge:
    return Gauge(
        "ai_index_images",
        description="Images in each project's search index.",
        tag_keys=("project",),
    )


@cache
def voice_synthesis_seconds() -> Histogram:
    return Histogram(
        "ai_voice_synthesis_seconds",
        description="Time the voice model spent synthesising one request.",
        boundaries=LATENCY_BOUNDARIES_S,
        tag_keys=("device",),
    )


@cache
def audio_seconds_produced() -> Counter:
    return Counter(
        "ai_audio_seconds_produced",
        description="Seconds of speech synthesised.",
        tag_keys=(),  # type: ignore[arg-type]  # Ray types it as tuple[str]
    )


@cache
def voice_stream_chunks() -> Counter:
    return Counter(
        "ai_voice_stream_chunks",
        description="Text chunks synthesised for streamed speech (each sent as it was made).",
        tag_keys=(),  # type: ignore[arg-type]  # Ray types it as tuple[str]
    )


@cache
def voice_streams() -> Counter:
    return Counter(
        "ai_voice_streams",
        description="Streamed syntheses by outcome: completed, stopped (the caller left "
        "before the end), failed.",
        tag_keys=("outcome",),
    )


@cache
def jobs_submitted() -> Counter:
    return Counter(
        "ai_jobs_submitted",
        description="Asynchronous jobs accepted, by kind (a resubmission with the same "
        "Idempotency-Key is not counted).",
        tag_keys=("kind",),
    )


@cache
def jobs_finished() -> Counter:
    return Counter(
        "ai_jobs_finished",
        description="Asynchronous jobs finished, by kind and state (succeeded, failed, cancelled).",
        tag_keys=("kind", "state"),  # type: ignore[arg-type]  # Ray types it as tuple[str]
    )


@cache
def jobs_queued() -> Gauge:
    return Gauge(
        "ai_jobs_queued",
        description="Asynchronous jobs waiting to start.",
        tag_keys=(),  # type: ignore[arg-type]  # Ray types it as tuple[str]
    )


def reason_category(reason: str | None) -> str:
    """A bounded label for a fallback reason ("openai HTTP 500" -> "openai_http")."""
    text = (reason or "unknown").lower()
    for needle, label in (
        ("no openai_api_key", "no_key"),
        ("timeout", "timeout"),
        ("deadline", "timeout"),
        ("http", "openai_http"),
        ("connection", "connection"),
        ("empty", "empty_answer"),
        ("unavailable", "optimizer_unavailable"),
    ):
        if needle in text:
            return label
    return "other"

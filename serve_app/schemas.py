"""HTTP request and response bodies. Limits live here, on the fields, not in handlers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.types import ImageParams, PromptSource
from serve_app.relevance import Cutoff

ModuleState = Literal["disabled", "loading", "ready", "failed"]

# Ranges of the request fields, also told to clients (GET /v1/console/config).
IMAGE_SIDE_MIN, IMAGE_SIDE_MAX, IMAGE_SIDE_MULTIPLE = 64, 2048, 8
IMAGE_STEPS_MAX = 150
IMAGE_GUIDANCE_MAX = 30.0
VOICE_SPEED_MIN, VOICE_SPEED_MAX = 0.3, 3.0
VOICE_NFE_STEPS_MAX = 128


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ImageGenerateRequest(_Strict):
    """The seed's body ({"title", "description"}) plus optional generation parameters."""

    title: str = Field(min_length=1, max_length=300, examples=["햄릿"])
    description: str = Field(default="", max_length=4000, examples=["복수와 광기의 비극"])
    width: int | None = Field(
        default=None, ge=IMAGE_SIDE_MIN, le=IMAGE_SIDE_MAX, multiple_of=IMAGE_SIDE_MULTIPLE
    )
    height: int | None = Field(
        default=None, ge=IMAGE_SIDE_MIN, le=IMAGE_SIDE_MAX, multiple_of=IMAGE_SIDE_MULTIPLE
    )
    steps: int | None = Field(default=None, ge=1, le=IMAGE_STEPS_MAX)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=IMAGE_GUIDANCE_MAX)
    negative_prompt: str | None = Field(default=None, max_length=2000)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)

    @field_validator("title", "description", "negative_prompt")
    @classmethod
    def _no_control_characters(cls, value: str | None) -> str | None:
        if value and any(ord(ch) < 32 and ch not in "\n\t" for ch in value):
            raise ValueError("must not contain control characters")
        return value

    def image_params(self, defaults: ImageParams) -> ImageParams:
        """Fill unset parameters from the server's defaults."""
        given = self.model_dump(
            include={"width", "height", "steps", "guidance_scale", "negative_prompt", "seed"},
            exclude_none=True,
        )
        return defaults.model_copy(update=given)


class Timings(BaseModel):
    prompt_ms: float
    generate_ms: float
    encode_ms: float
    store_ms: float | None = None
    total_ms: float


class StoredImageResponse(BaseModel):
    """Answer of /v1/r2/images/generate: where the PNG was stored and how it was made."""

    key: str
    url: str
    storage: Literal["s3", "local"]
    content_type: str = "image/png"
    bytes: int
    prompt: str
    prompt_source: PromptSource
    prompt_fallback_reason: str | None = None
    seed: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    timings: Timings


class ComponentStatus(BaseModel):
    state: ModuleState
    enabled_by: str | None = Field(default=None, description="Environment variable")
    reason: str | None = None
    backend: str | None = Field(default=None, description="Storage backend: s3 or local")
    deployments: dict[str, str] = Field(default_factory=dict)
    detail: dict[str, Any] | None = Field(
        default=None,
        exclude_if=lambda value: value is None,  # absent unless a module has something to say
        description="Module notes, e.g. image_search: how the VectorIndex found its database "
        "at start (existing, restored from which snapshot, damaged or future-dated snapshots "
        "skipped, rows quarantined because their object key or content type was not their own)",
    )


class ReadinessResponse(BaseModel):
    ready: bool
    modules: dict[str, ComponentStatus]
    storage: ComponentStatus
    placement: dict[str, str] = Field(
        default_factory=dict,
        description="Where each GPU model runs and why, by module (IMAGE/CLIP/VOICE_NUM_GPUS)",
    )


class ReadinessSummary(BaseModel):
    """/readyz without a valid API key, when the server has keys: ready or not, no detail."""

    ready: bool


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Malformed request body",
        401: "No valid API key (the server has keys)",
        403: "The API key's scope does not cover the module, project or voice, or it is read-only",
        429: "Over the API key's requests per minute or concurrent model work (Retry-After)",
        422: "A field is missing or out of range",
        503: "Module disabled, model not ready or failing, storage down, or overloaded",
    }.items()
}


# --- image search ---------------------------------------------------------------------------

PROJECT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
IMAGE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class ImageOut(BaseModel):
    """An indexed image as clients see it."""

    id: str
    project_id: str
    filename: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    sha256: str
    created_at: str
    file_url: str = Field(description="This server's link to the original (redirects on R2)")
    duplicate: bool = Field(
        default=False, description="True when these bytes were already in the project"
    )


class FileLink(BaseModel):
    """Where a stored file is, instead of a redirect to it (`?redirect=false`)."""

    url: str = Field(description="The object store's presigned or public URL of the file")


class ProjectOut(BaseModel):
    """A project in the listing."""

    project_id: str
    images: int = Field(description="Its images (not counting ones being deleted)")
    created_at: str = Field(description="ISO 8601, UTC: its first upload")
    last_added_at: str | None = Field(description="ISO 8601, UTC: its newest image; null if none")


class ProjectListResponse(BaseModel):
    items: list[ProjectOut]
    next_cursor: str | None = Field(description="Pass back as `cursor` for the next page")


class ImageListResponse(BaseModel):
    project_id: str
    items: list[ImageOut]
    total: int
    next_cursor: str | None = Field(default=None, description="Pass as ?cursor= for the next page")


class BatchUploadResponse(BaseModel):
    project_id: str
    items: list[ImageOut]
    created: int
    duplicates: int


class SearchRequest(_Strict):
    query: str = Field(min_length=1, max_length=1000, examples=["고양이"])
    limit: int = Field(default=10, ge=1, le=100)
    min_score: float | None = Field(
        default=None, ge=-1, le=1, description="Drop results scoring below this cosine"
    )
    cutoff: Cutoff = Field(
        default="none",
        description="Adaptive cut over the best candidates: `gap` (after the largest drop "
        "between consecutive scores) or `stddev` (below their mean minus `cutoff_k` standard "
        "deviations); with `min_score` too, the stricter applies",
    )
    cutoff_k: float = Field(default=1.0, ge=0, le=5, description="k of the `stddev` cutoff")
    cursor: str | None = Field(
        default=None, max_length=512, description="`next_cursor` of the previous page"
    )


class SearchResult(BaseModel):
    id: str
    score: float = Field(description="Cosine similarity to the query; higher is closer")
    filename: str
    content_type: str
    width: int
    height: int
    file_url: str


class SearchCut(BaseModel):
    """Which relevance cut applied to a search, and what it dropped."""

    min_score: float | None = None
    cutoff: Cutoff = "none"
    threshold: float | None = Field(
        default=None, description="The score a result had to reach (None: no cut)"
    )
    candidates: int = Field(description="Hits the cut was computed over")
    dropped: int = Field(description="Candidates below the threshold")


class SearchResponse(BaseModel):
    project_id: str
    results: list[SearchResult]
    cut: SearchCut | None = Field(
        default=None, description="The relevance cut of a text search (None: not asked)"
    )
    next_cursor: str | None = Field(
        default=None, description="Send it back as `cursor` for the next page (None: no more)"
    )


class DuplicateImage(ImageOut):
    """An image of a duplicate group: the listing's fields plus its score."""

    score: float = Field(
        description="Cosine similarity to the group's first (oldest) image; 1 for that one"
    )


class DuplicateGroupOut(BaseModel):
    size: int = Field(description="Images in the group (at most 100 are listed)")
    images: list[DuplicateImage] = Field(
        description="The oldest first, then by score (highest first)"
    )


class DuplicatesResponse(BaseModel):
    project_id: str
    threshold: float = Field(description="The cosine an image had to reach to join a group")
    neighbours: int = Field(description="Nearest neighbours of each image looked at")
    total_groups: int = Field(description="Groups in the whole scan, over every page")
    scanned: int = Field(description="Live images the scan looked at")
    groups: list[DuplicateGroupOut] = Field(description="Largest first, then oldest first image")
    next_cursor: str | None = Field(
        default=None, description="Pass as ?cursor= (with the same threshold) for the next page"
    )


class DeleteResponse(BaseModel):
    project_id: str
    id: str
    deleted: bool = True


# --- voice ----------------------------------------------------------------------------------

USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*$"
AudioFormatName = Literal["mp3", "wav", "flac", "ogg"]
RefTextSource = Literal["request", "stored", "cached", "asr"]


class VoiceFromStorageRequest(_Strict):
    """The seed's body ({"user_id", "text"}) plus optional synthesis parameters."""

    user_id: str = Field(min_length=1, max_length=128, pattern=USER_ID_PATTERN, examples=["user1"])
    text: str = Field(min_length=1, max_length=100_000, examples=["반가워"])
    format: AudioFormatName = "mp3"
    speed: float | None = Field(default=None, ge=VOICE_SPEED_MIN, le=VOICE_SPEED_MAX)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    nfe_steps: int | None = Field(default=None, ge=1, le=VOICE_NFE_STEPS_MAX)


class VoiceTimings(BaseModel):
    reference_ms: float
    transcribe_ms: float
    synthesize_ms: float
    encode_ms: float
    store_ms: float | None = None
    total_ms: float


class StoredVoiceResponse(BaseModel):
    """Answer of /v1/r2/voice/generate: where the audio was stored and how it was made."""

    key: str
    url: str
    storage: Literal["s3", "local"]
    user_id: str
    format: AudioFormatName
    content_type: str
    bytes: int
    duration_s: float
    sample_rate: int
    seed: int
    ref_text: str
    ref_text_source: RefTextSource
    timings: VoiceTimings


class SavedVoice(BaseModel):
    """A reference voice stored under VOICE_REMOTE_PREFIX, usable by id."""

    voice_id: str
    key: str = Field(description="The reference audio: {VOICE_REMOTE_PREFIX}{voice_id}.mp3")
    bytes: int
    duration_s: float | None = None
    transcript: str | None = Field(default=None, description="Stored beside it, if any")
    created: bool | None = Field(
        default=None, description="PUT: true when new, false when replaced"
    )


class SavedVoiceSummary(BaseModel):
    """A saved voice in the listing (GET /v1/voices/{id} has its transcript)."""

    voice_id: str
    bytes: int = Field(description="Size of its reference audio")
    last_modified: str | None = Field(description="ISO 8601, UTC, when the store reports it")


class VoiceListResponse(BaseModel):
    items: list[SavedVoiceSummary]
    next_cursor: str | None = Field(
        description="Pass back as `cursor` for more; null at the end. A page may hold fewer "
        "than `limit` voices (each request looks at a bounded number of stored files)"
    )


# --- console --------------------------------------------------------------------------------


class ImageFormLimits(BaseModel):
    default_width: int
    default_height: int
    default_steps: int
    default_guidance_scale: float
    side_min: int = IMAGE_SIDE_MIN
    side_max: int = IMAGE_SIDE_MAX
    side_multiple: int = IMAGE_SIDE_MULTIPLE
    steps_max: int = IMAGE_STEPS_MAX
    guidance_max: float = IMAGE_GUIDANCE_MAX
    max_pixels: int = Field(description="IMAGE_MAX_PIXELS: largest width x height")
    max_pixel_steps: int = Field(description="IMAGE_MAX_PIXEL_STEPS: images x steps x pixels")


class SearchFormLimits(BaseModel):
    max_bytes: int = Field(description="IMAGE_SEARCH_MAX_BYTES: largest image")
    max_pixels: int = Field(description="IMAGE_SEARCH_MAX_PIXELS")
    max_batch_files: int = Field(description="IMAGE_SEARCH_MAX_BATCH_FILES: files per batch")
    search_limit_max: int = 100


class VoiceFormLimits(BaseModel):
    max_ref_bytes: int = Field(description="VOICE_MAX_REF_BYTES")
    max_ref_seconds: float = Field(description="VOICE_MAX_REF_SECONDS")
    max_text_chars: int = Field(description="VOICE_MAX_TEXT_CHARS")
    default_nfe_steps: int
    nfe_steps_max: int = VOICE_NFE_STEPS_MAX
    speed_min: float = VOICE_SPEED_MIN
    speed_max: float = VOICE_SPEED_MAX


class ConsoleConfig(BaseModel):
    """What the web console needs to know to build its forms: modules, limits, links."""

    modules: dict[str, bool] = Field(description="Which modules are enabled")
    image: ImageFormLimits
    image_search: SearchFormLimits
    voice: VoiceFormLimits
    max_upload_bytes: int = Field(description="GATEWAY_MAX_UPLOAD_BYTES: one multipart body")
    max_json_bytes: int = Field(description="GATEWAY_MAX_JSON_BYTES: one JSON body")
    dashboard_url: str | None = Field(
        default=None, description="CONSOLE_DASHBOARD_URL; null: the page's host on port 8265"
    )


class DeploymentTraffic(BaseModel):
    queued: float = Field(description="Requests waiting for a replica (at the callers' routers)")
    processing: float = Field(description="Requests its replicas are processing")


class RouteCount(BaseModel):
    route: str = Field(description="The route template (never a raw path)")
    method: str
    status: str
    count: float = Field(description="Responses since the replicas started (a counter)")


class TrafficResponse(BaseModel):
    """This application's queue depths and response counters, from Ray's metrics export."""

    available: bool = Field(description="False when no node's metrics could be read")
    reason: str | None = None
    nodes: int = Field(description="Nodes whose export was read")
    deployments: dict[str, DeploymentTraffic]
    requests: list[RouteCount]
    rejections: dict[str, float] = Field(description="Queue-full refusals (503) by model call")
    read_at: float = Field(description="Unix time of the read; rates need two reads")

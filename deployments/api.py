"""The Python handle API in one import: deployment names, request/response types, errors.

Other Ray applications (and driver scripts connected to the cluster) call the model
deployments directly, with no HTTP::

    from ray import serve
    from deployments.api import IMAGE_GENERATOR, ImageParams

    gen = serve.get_deployment_handle(IMAGE_GENERATOR, app_name="ai")
    image = gen.generate.remote("a red fox", ImageParams(seed=7)).result()   # sync caller
    image = await gen.generate.remote("a red fox", ImageParams(seed=7))      # async caller

`app_name` is the Serve application the module runs in: "ai" in the shipped profiles
(`serve_config.yaml`, `configs/offline-cpu.yaml`), where every enabled module shares one
application. A deployment exists only when its module is enabled (IMAGE_ENABLED,
IMAGE_SEARCH_ENABLED, VOICE_ENABLED). Arguments and results cross Ray by pickle: the caller
needs this package importable (numpy arrays, pydantic models and dataclasses below).

Deployments and their methods (the handle API)
----------------------------------------------

PROMPT_OPTIMIZER = "PromptOptimizer"  (module: image)
    optimize(title: str, description: str = "") -> OptimizedPrompt
        English text-to-image prompt from a title/description in any language; never fails
        on OpenAI trouble (``source="fallback"`` with ``fallback_reason``).

IMAGE_GENERATOR = "ImageGenerator"  (module: image; one request at a time, bounded queue)
    generate(prompt: str, params: ImageParams | None = None) -> GeneratedImage
        Raw RGB pixels (H, W, 3) uint8 + the seed used; ``GeneratedImage.to_png()`` encodes.
        Same prompt, params and seed -> same pixels. Empty prompt -> InvalidInput.
    describe() -> dict[str, str]          model, device, dtype

CLIP_EMBEDDER = "ClipEmbedder"  (module: image_search; one request at a time, bounded queue)
    embed_text(texts: list[str], space: EmbeddingSpace | None = None) -> np.ndarray
        float32 (n, dim), unit-norm rows. An empty text, or a bare str instead of a list ->
        InvalidInput. ``space``: embed with that model (None: the configured one), see below.
    embed_images(images: list[bytes], space: EmbeddingSpace | None = None) -> np.ndarray
        encoded JPEG/PNG/WEBP/GIF bytes; float32 (n, dim), unit-norm rows. Undecodable
        bytes -> UnsupportedMediaType.
    describe() -> dict[str, str]          model, source, path, device, dtype, dim

VECTOR_INDEX = "VectorIndex"  (module: image_search; exactly one replica, the catalog's writer)
    search(project_id: str, vector: np.ndarray, limit: int, space_key: str | None = None)
        -> list[SearchHit]
        Cosine similarity against the project's images, best first ([] for an unknown
        project). ``vector`` is a (dim,) float32, e.g. a row of ClipEmbedder's output.
    active_space() -> EmbeddingSpace
        The model the catalog's vectors are from. After a CLIP model change it is the old
        one until every image is re-embedded (``startup_report()["embedding"]``): embed
        with ``space=active_space()`` and pass ``space_key=space.key`` to ``search`` (and
        ``NewImage.space_key`` to ``add``); a catalog that switched meanwhile answers
        EmbeddingSpaceChanged (409) instead of mixing models: read the space again, retry.
    search_many(queries: list[SearchQuery]) -> list[list[SearchHit] | None]
        Several searches in one call; None for a project that does not exist.
    similar(project_id: str, image_id: str, limit: int) -> list[SearchHit] | None
        The images closest to a stored one, itself excluded (None: no such live image).
    duplicates(project_id: str, threshold: float, limit: int, cursor: str | None = None)
        -> DuplicatePage
        Groups of near-identical images (cosine >= threshold, 0.8-1), largest first, each
        the oldest image first with every image's score against it; pass ``next_cursor``
        back for the next page. The first page scans the project (seconds at 50k images).
    get(project_id: str, image_id: str) -> ImageRecord | None
    list(project_id: str, limit: int, cursor: str | None = None) -> ImagePage  (newest first)
    list_projects(limit: int, after: str | None = None, scope: list[str] | None = None)
        -> ProjectPage
        Projects by id with their live image counts; pass ``next_cursor`` back as ``after``.
        ``scope``: only ids these patterns allow (exact, ``prefix*`` or ``*``).
    project_exists(project_id: str) -> bool
    find_duplicate(project_id: str, sha256: str) -> ImageRecord | None
    stats() -> dict[str, int]             live images per project
    add(image: NewImage) -> ImageRecord; add_many(images: list[NewImage]) -> list[ImageRecord]
        Index only: the HTTP upload route also stores the original in object storage.
        Indexing through a handle without storing the object leaves a row whose file
        route answers 404; prefer uploading over HTTP.
    begin_delete / finish_delete, backup_now() -> str, list_backups() -> list[str]

VOICE_CLONER = "VoiceCloner"  (module: voice; one request at a time, bounded queue)
    synthesize(ref_audio: np.ndarray, ref_sr: int, ref_text: str, text: str,
               params: VoiceParams | None = None) -> SynthesizedSpeech
        ``text`` spoken in the voice of ``ref_audio`` (float32 mono at ``ref_sr``, at least
        0.5 s, not silent) whose words are ``ref_text``. 24 kHz float32 samples, the seed,
        duration; same inputs and seed -> same samples. Empty text/ref_text -> InvalidInput.
    synthesize_stream(ref_audio, ref_sr, ref_text, text, params=None)
        -> async iterator of SpeechChunk   (call through ``handle.options(stream=True)``)
        The same speech, a text chunk at a time (a short first chunk, then whole
        sentences), each chunk's samples yielded as soon as it is made; played back to back
        the pieces are the speech, seams cross-faded. ``chunk.index``/``count``/``text``/
        ``seed``. The whole stream is one turn of the model; ``gen.cancel()`` or leaving the
        iteration stops the synthesis within a chunk::

            gen = voice.options(stream=True).synthesize_stream.remote(ref, sr, words, text)
            async for chunk in gen:                  # sync callers: ``for chunk in gen``
                play(chunk.samples, chunk.sample_rate)
    prepare_voice(ref_audio, ref_sr, ref_text: str | None = None, *, key: str = "")
        -> PreparedVoice
        A reference prepared once for many syntheses: resampled and trimmed as
        ``synthesize`` trims it, transcribed (ASR) when ``ref_text`` is empty. With ``key``
        the replica keeps it (a bounded LRU, VOICE_PREPARED_CACHE_SIZE) for
        ``synthesize_voice(key, ...)``; give a new key when the voice changes.
        ``PreparedVoice.to_bytes()`` / ``from_bytes()`` store and read it (a small .npz).
    synthesize_voice(voice: PreparedVoice | str, text, params=None) -> SynthesizedSpeech
    synthesize_voice_stream(voice: PreparedVoice | str, text, params=None)
        -> async iterator of SpeechChunk   (through ``handle.options(stream=True)``)
        ``synthesize`` / ``synthesize_stream`` from a prepared voice or its key: no
        trimming or ASR, the same samples for the same seed. A key the replica does not
        hold (another replica, a restart, evicted) or a voice another model prepared raises
        VoiceNotPrepared (409): prepare it again, or pass the PreparedVoice itself::

            voice = cloner.prepare_voice.remote(ref, sr, words, key="anna@1").result()
            try:
                gen = cloner.options(stream=True).synthesize_voice_stream.remote("anna@1", text)
                chunks = list(gen)
            except VoiceNotPrepared:
                chunks = list(cloner.options(stream=True).synthesize_voice_stream.remote(
                    voice, text))
    transcribe(audio: np.ndarray, sr: int) -> str   the reference's words (ASR), trimmed as
        synthesize trims it
    describe() -> dict[str, str]    models, device; ``references_prepared``,
        ``transcriptions`` (how often the reference work ran), ``prepared_voices`` held

JOB_RUNNER = "JobRunner"  (JOBS_ENABLED=1; exactly one replica, the jobs' SQLite writer)
    submit(kind: str, request: dict | None = None, *, owner: str = "",
           idempotency_key: str | None = None, webhook_url: str | None = None,
           files: list[tuple[str, bytes]] | None = None, project_id: str | None = None)
        -> JobSubmitted
        Record an asynchronous job (committed before this returns) and run it in the
        background. ``kind`` "image" / "voice": ``request`` is the JSON body of
        /v1/r2/images/generate / /v1/r2/voice/generate (as a dict); "batch_upload":
        ``project_id`` and ``files`` [(filename, bytes)]. Checked as the HTTP route checks it
        (InvalidInput 422 and the like). ``owner`` scopes the job (over HTTP: the API key's
        name): ``get``/``cancel`` with another owner answer NotFound. The same
        ``idempotency_key`` and request answer the first job (``created=False``); another
        request with that key raises IdempotencyKeyReused (409). Overloaded (503) past
        JOBS_MAX_QUEUED.
    get(job_id: str, owner: str = "") -> JobView    state, attempts, timings, result (the
        HTTP route's body), result_key/result_url, error; ``job.finished``
    list_jobs(owner="", state=None, limit=50, cursor=None) -> JobPage   newest first
    cancel(job_id: str, owner: str = "") -> JobView   a queued or running job (its model
        call is abandoned); Conflict (409) once finished
    stats() -> dict[str, int]              jobs by state
    Webhook receivers check ``X-Signature`` with ``webhook_signature(secret, t, body)``.

GATEWAY = "Gateway" is the HTTP ingress (``serve.get_app_handle("ai")`` returns it); it has
no model methods. Use the HTTP API for what it adds: storage, PNG/audio encoding, uploads.

Errors across Ray
-----------------

A deployment raises the project's errors (``core.errors``, re-exported here): bad input
is ``InvalidInput`` (422, code "invalid_request"), undecodable images
``UnsupportedMediaType`` (415), a model failure ``ModelFailed`` (503, "model_error").
The caller gets Ray's ``RayTaskError`` whose class also derives from the raised error's
class (``RayTaskError(InvalidInput)``), so ``except InvalidInput`` / ``except ApiError`` work
directly and ``exc.cause`` is the original error with its ``code``, ``status_code``,
``message`` and details. The same holds when the error went through an intermediate
deployment that let it propagate. ``api_error(exc)`` returns that original error (or None).
Ray's own failures are not ``ApiError``s: a full queue raises
``ray.serve.exceptions.BackPressureError``, a dead replica ``ray.exceptions.RayActorError``,
an unknown deployment or app name in ``get_deployment_handle`` a ``KeyError`` ("Deployment(
name=..., app=...) does not exist.") on the first call, an unknown app in
``serve.get_app_handle`` ``ray.serve.exceptions.RayServeException`` at once.
"""

from __future__ import annotations

from core.errors import (
    ApiError,
    Conflict,
    EmbeddingSpaceChanged,
    IdempotencyKeyReused,
    InvalidInput,
    ModelFailed,
    NotFound,
    Overloaded,
    ServiceUnavailable,
    UnsupportedMediaType,
    VoiceNotPrepared,
    find_api_error,
)
from core.jobs import JobPage, JobSubmitted, JobView, WebhookStatus, webhook_signature
from core.prepared_voice import PreparedVoice
from core.records import (
    DuplicateGroup,
    DuplicatePage,
    EmbeddingSpace,
    ImagePage,
    ImageRecord,
    NewImage,
    ProjectPage,
    ProjectSummary,
    SearchHit,
    SearchQuery,
)
from core.types import (
    GeneratedImage,
    ImageParams,
    OptimizedPrompt,
    SpeechChunk,
    SynthesizedSpeech,
    VoiceParams,
)

__all__ = [
    "APP_NAME",
    "CLIP_EMBEDDER",
    "DEPLOYMENTS",
    "GATEWAY",
    "IMAGE_GENERATOR",
    "JOB_RUNNER",
    "PROMPT_OPTIMIZER",
    "VECTOR_INDEX",
    "VOICE_CLONER",
    "ApiError",
    "Conflict",
    "DuplicateGroup",
    "DuplicatePage",
    "EmbeddingSpace",
    "EmbeddingSpaceChanged",
    "GeneratedImage",
    "IdempotencyKeyReused",
    "ImagePage",
    "ImageParams",
    "ImageRecord",
    "InvalidInput",
    "JobPage",
    "JobSubmitted",
    "JobView",
    "ModelFailed",
    "NewImage",
    "NotFound",
    "OptimizedPrompt",
    "ProjectPage",
    "ProjectSummary",
    "Overloaded",
    "PreparedVoice",
    "SearchHit",
    "SearchQuery",
    "ServiceUnavailable",
    "SpeechChunk",
    "SynthesizedSpeech",
    "UnsupportedMediaType",
    "VoiceNotPrepared",
    "VoiceParams",
    "WebhookStatus",
    "api_error",
    "webhook_signature",
]

APP_NAME = "ai"
"""The application name of the shipped Serve configs (every module in one app)."""

GATEWAY = "Gateway"
PROMPT_OPTIMIZER = "PromptOptimizer"
IMAGE_GENERATOR = "ImageGenerator"
CLIP_EMBEDDER = "ClipEmbedder"
VECTOR_INDEX = "VectorIndex"
VOICE_CLONER = "VoiceCloner"
JOB_RUNNER = "JobRunner"

DEPLOYMENTS: dict[str, tuple[str, ...]] = {
    "image": (PROMPT_OPTIMIZER, IMAGE_GENERATOR),
    "image_search": (CLIP_EMBEDDER, VECTOR_INDEX),
    "voice": (VOICE_CLONER,),
}
"""The model deployments of each module (each exists only when its module is enabled)."""


def api_error(exc: BaseException) -> ApiError | None:
    """The project's error behind an exception a handle call raised, or None.

    Follows Ray's ``RayTaskError.cause`` and ``__cause__``/``__context__``, so the error
    with its ``code``, ``status_code``, ``message`` and details comes back, not Ray's wrapper.
    """
    return find_api_error(exc)

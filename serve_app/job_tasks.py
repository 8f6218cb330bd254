"""What a job of each kind is: its input checked at submission, and its work when it runs.

The work is the synchronous route's, through the same pipeline code the Gateway uses
(`image_pipeline.render_image`, `voice_pipeline.speak`, `image_search.upload_images`), and
the result is the body that route answers. Results go under the module's prefix with keys
made from the job id (`{IMAGE_REMOTE_PREFIX}{job}.png`,
`{VOICE_REMOTE_PREFIX}generated/{user}/{job}.{fmt}`), so a retried attempt overwrites its
own result instead of leaving a second one; a batch upload finds on retry the images an
interrupted attempt indexed (uploads are deduplicated by content), so it adds none twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from core.errors import InvalidInput
from core.storage import join_key
from serve_app.image_pipeline import check_image_work, check_pixel_budget, render_image
from serve_app.image_search import image_out, upload_images
from serve_app.prepared_voices import saved_voice
from serve_app.schemas import (
    PROJECT_ID_PATTERN,
    BatchUploadResponse,
    ImageGenerateRequest,
    StoredImageResponse,
    StoredVoiceResponse,
    Timings,
    VoiceFromStorageRequest,
    VoiceTimings,
    _Strict,
)
from serve_app.services import Services
from serve_app.uploads import CheckedImage, UploadedFile, check_image
from serve_app.voice_pipeline import checked_text, speak, voice_params


class BatchFile(BaseModel):
    """One uploaded file of a batch-upload job, kept in the store until the job finishes."""

    filename: str
    key: str
    sha256: str


class BatchUploadInput(_Strict):
    """A batch upload's request as recorded (the files themselves are in the store)."""

    project_id: str = Field(pattern=PROJECT_ID_PATTERN)
    files: list[BatchFile] = Field(min_length=1)


@dataclass(frozen=True)
class JobOutcome:
    """A finished attempt: the synchronous route's body and the stored result's key."""

    result: dict[str, Any]
    result_key: str | None


def checked_input(services: Services, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """The request of an image or voice job, validated as its synchronous route validates
    it (422 naming the fields under `input.`), normalised to JSON."""
    model: type[_Strict] = ImageGenerateRequest if kind == "image" else VoiceFromStorageRequest
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        fields = [
            {
                "field": ".".join(["input", *(str(part) for part in error["loc"])]),
                "message": error["msg"],
            }
            for error in exc.errors()
        ]
        names = ", ".join(sorted({field["field"] for field in fields}))
        raise InvalidInput(f"invalid request: {names}", fields=fields) from None
    if isinstance(parsed, ImageGenerateRequest):
        params = parsed.image_params(services.config.image_defaults)
        check_pixel_budget(services.config, params, fields=("input.width", "input.height"))
        check_image_work(services.config, params, fields=("input.steps",))
    elif isinstance(parsed, VoiceFromStorageRequest):
        checked_text(services, parsed.text)
    return parsed.model_dump(mode="json", exclude_none=True)


def checked_images(services: Services, files: list[tuple[str, bytes]]) -> list[CheckedImage]:
    """Every file of a batch upload decoded as the upload routes decode it (413/415 for the
    first bad one: one bad file refuses the job, as it refuses the synchronous batch)."""
    config = services.config
    if not files:
        raise InvalidInput("a batch upload needs at least one file", fields=[{"field": "files"}])
    if len(files) > config.image_search_max_batch_files:
        raise InvalidInput(
            f"{len(files)} files; the limit is IMAGE_SEARCH_MAX_BATCH_FILES="
            f"{config.image_search_max_batch_files}",
            fields=[{"field": "files", "message": "too many"}],
        )
    checked = []
    for filename, data in files:
        if len(data) > config.image_search_max_bytes:
            raise InvalidInput(
                f"'{filename}' is over IMAGE_SEARCH_MAX_BYTES={config.image_search_max_bytes}",
                fields=[{"field": "files", "message": "too large"}],
            )
        upload = UploadedFile(field="files", filename=filename, data=data)
        checked.append(check_image(upload, max_pixels=config.image_search_max_pixels))
    return checked


def fingerprint(
    kind: str, request: dict[str, Any], webhook_url: str | None, file_digests: list[str]
) -> str:
    """What makes two submissions the same request (for Idempotency-Key): the kind, the
    normalised input, the webhook and the uploaded files' contents."""
    canonical = json.dumps(
        {"kind": kind, "input": request, "webhook_url": webhook_url, "files": file_digests},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def run_job(
    services: Services, job_id: str, kind: str, request: dict[str, Any]
) -> JobOutcome:
    """One attempt of the job's work; raises the ApiError the synchronous route would."""
    if kind == "image":
        return await _image(services, job_id, ImageGenerateRequest.model_validate(request))
    if kind == "voice":
        return await _voice(services, job_id, VoiceFromStorageRequest.model_validate(request))
    return await _batch_upload(services, BatchUploadInput.model_validate(request))


async def _image(services: Services, job_id: str, body: ImageGenerateRequest) -> JobOutcome:
    started = time.perf_counter()
    rendered = await render_image(services, body)
    stored_at = time.perf_counter()
    key = join_key(services.config.image_remote_prefix, f"{job_id}.png")
    await asyncio.to_thread(services.store.put, key, rendered.png, "image/png")
    url = await asyncio.to_thread(services.store.url, key)
    done = time.perf_counter()
    params = rendered.params
    response = StoredImageResponse(
        key=key,
        url=url,
        storage=services.store.kind,  # type: ignore[arg-type]
        bytes=len(rendered.png),
        prompt=rendered.prompt.prompt,
        prompt_source=rendered.prompt.source,
        prompt_fallback_reason=rendered.prompt.fallback_reason,
        seed=rendered.image.seed,
        width=rendered.image.width,
        height=rendered.image.height,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        timings=Timings(
            prompt_ms=rendered.prompt_ms,
            generate_ms=rendered.generate_ms,
            encode_ms=rendered.encode_ms,
            store_ms=(done - stored_at) * 1000,
            total_ms=(done - started) * 1000,
        ),
    )
    return JobOutcome(result=response.model_dump(mode="json"), result_key=key)


async def _voice(services: Services, job_id: str, body: VoiceFromStorageRequest) -> JobOutcome:
    started = time.perf_counter()
    voice = await saved_voice(services, body.user_id)  # prepared once (serve_app/prepared_voices)
    spoken = await speak(
        services,
        reference=voice,
        ref_text=None,
        text=body.text,
        fmt=body.format,
        params=voice_params(services, body.speed, body.seed, body.nfe_steps),
    )
    key = join_key(services.config.generated_voice_prefix, body.user_id, f"{job_id}.{body.format}")
    stored_at = time.perf_counter()
    await asyncio.to_thread(services.store.put, key, spoken.data, spoken.content_type)
    url = await asyncio.to_thread(services.store.url, key)
    done = time.perf_counter()
    speech = spoken.speech
    response = StoredVoiceResponse(
        key=key,
        url=url,
        storage=services.store.kind,  # type: ignore[arg-type]
        user_id=body.user_id,
        format=body.format,
        content_type=spoken.content_type,
        bytes=len(spoken.data),
        duration_s=speech.duration_s,
        sample_rate=speech.sample_rate,
        seed=speech.seed,
        ref_text=spoken.ref_text,
        ref_text_source=spoken.ref_text_source,  # type: ignore[arg-type]
        timings=VoiceTimings(
            reference_ms=spoken.reference_ms,
            transcribe_ms=spoken.transcribe_ms,
            synthesize_ms=spoken.synthesize_ms,
            encode_ms=spoken.encode_ms,
            store_ms=(done - stored_at) * 1000,
            total_ms=(done - started) * 1000,
        ),
    )
    return JobOutcome(result=response.model_dump(mode="json"), result_key=key)


async def _batch_upload(services: Services, body: BatchUploadInput) -> JobOutcome:
    uploads = []
    for file in body.files:
        data = await asyncio.to_thread(services.store.get, file.key)
        uploads.append((file.filename, data))
    images = await asyncio.to_thread(checked_images, services, uploads)
    records = await upload_images(services, body.project_id, images)
    duplicates = sum(record.duplicate for record in records)
    response = BatchUploadResponse(
        project_id=body.project_id,
        items=[image_out(record) for record in records],
        created=len(records) - duplicates,
        duplicates=duplicates,
    )
    return JobOutcome(result=response.model_dump(mode="json"), result_key=None)

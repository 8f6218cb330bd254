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
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from core.errors import InvalidInput
from serve_app.image_pipeline import check_image_work, check_pixel_budget, render_and_store
from serve_app.image_search import image_out, upload_images
from serve_app.schemas import (
    PROJECT_ID_PATTERN,
    BatchUploadResponse,
    ImageGenerateRequest,
    VoiceFromStorageRequest,
    _Strict,
)
from serve_app.services import Services
from serve_app.uploads import CheckedImage, UploadedFile, check_image
from serve_app.voice_pipeline import checked_text, speak_and_store


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
    response = await render_and_store(services, body, name=job_id)
    return JobOutcome(result=response.model_dump(mode="json"), result_key=response.key)


async def _voice(services: Services, job_id: str, body: VoiceFromStorageRequest) -> JobOutcome:
    response = await speak_and_store(services, body, name=job_id)  # the voice prepared once
    return JobOutcome(result=response.model_dump(mode="json"), result_key=response.key)


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

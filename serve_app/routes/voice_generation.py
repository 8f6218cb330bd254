"""Voice generation routes of the seed: clone from an uploaded reference (audio back), or
from the user's stored reference (stored result, JSON back). The flow itself is
`serve_app.voice_pipeline`; saved references are `serve_app.routes.saved_voices`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import Field, ValidationError

from serve_app.access import check_voice, model_work, module_access
from serve_app.modules import VOICE
from serve_app.schemas import (
    ERROR_RESPONSES,
    VOICE_NFE_STEPS_MAX,
    VOICE_SPEED_MAX,
    VOICE_SPEED_MIN,
    AudioFormatName,
    ErrorResponse,
    StoredVoiceResponse,
    VoiceFromStorageRequest,
    _Strict,
)
from serve_app.services import Services, get_services
from serve_app.uploads import read_multipart
from serve_app.voice_pipeline import (
    audio_body,
    checked_text,
    open_speech_stream,
    speak,
    speak_and_store,
    voice_params,
)

# The API key's scope: the voice module (and the stored voice's id, checked by the route);
# its concurrent model work (serve_app/access.py).
router = APIRouter(tags=["voice"], dependencies=[module_access("voice"), model_work])
ServicesDep = Annotated[Services, Depends(get_services)]

VOICE_RESPONSES: dict[int | str, dict] = {
    **ERROR_RESPONSES,
    404: {"model": ErrorResponse, "description": "No reference voice stored for the user"},
    413: {"model": ErrorResponse, "description": "Reference over VOICE_MAX_REF_BYTES/SECONDS"},
    415: {"model": ErrorResponse, "description": "The reference is not audio"},
}


class VoiceFormFields(_Strict):
    """The text fields of the multipart voice route."""

    text: str = Field(min_length=1, max_length=100_000)
    ref_text: str | None = Field(default=None, max_length=2000)
    format: AudioFormatName = "mp3"
    speed: float | None = Field(default=None, ge=VOICE_SPEED_MIN, le=VOICE_SPEED_MAX)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    nfe_steps: int | None = Field(default=None, ge=1, le=VOICE_NFE_STEPS_MAX)
    stream: bool = Field(default=False, description="Send the audio as it is made (mp3, wav)")


@router.post(
    "/v1/voice/generate",
    response_class=Response,
    responses={
        200: {"content": {"audio/mpeg": {}}, "description": "The speech"},
        **VOICE_RESPONSES,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["ref_audio", "text"],
                        "properties": {
                            "ref_audio": {"type": "string", "format": "binary"},
                            "ref_text": {"type": "string"},
                            "text": {"type": "string"},
                            "format": {"type": "string", "enum": ["mp3", "wav", "flac", "ogg"]},
                            "speed": {"type": "number"},
                            "seed": {"type": "integer"},
                            "nfe_steps": {"type": "integer"},
                            "stream": {"type": "boolean"},
                        },
                    }
                }
            },
        }
    },
)
async def generate_voice(request: Request, services: ServicesDep) -> Response:
    """Speak `text` in the voice of the uploaded `ref_audio` (mp3/wav/ogg/flac/m4a); with
    `stream=1` the audio (mp3 or wav) is sent as each sentence is made."""
    await services.board.require_ready(VOICE)
    body = await read_multipart(
        request,
        max_file_bytes=services.config.voice_max_ref_bytes,
        max_files=1,
        what="ref_audio",
        limit_setting="VOICE_MAX_REF_BYTES",
    )
    (reference,) = body.files_named("ref_audio")
    try:
        fields = VoiceFormFields.model_validate(body.fields)
    except ValidationError as exc:
        # Located in the body, as FastAPI locates form fields it parses itself, and answered
        # by the one validation handler (serve_app.http_errors): the shape every route uses.
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None
    params = voice_params(services, fields.speed, fields.seed, fields.nfe_steps)
    if fields.stream:  # chunked: each sentence's audio as soon as it is made
        stream = await open_speech_stream(
            services,
            reference=reference.data,
            ref_text=fields.ref_text,
            text=fields.text,
            fmt=fields.format,
            params=params,
        )
        return StreamingResponse(
            audio_body(stream),
            media_type=stream.content_type,
            headers={
                "X-Sample-Rate": str(stream.sample_rate),
                "X-Seed": str(stream.seed),
                "X-Ref-Text-Source": stream.ref_text_source,
            },
        )
    spoken = await speak(
        services,
        reference=reference.data,
        ref_text=fields.ref_text,
        text=fields.text,
        fmt=fields.format,
        params=params,
    )
    return Response(
        content=spoken.data,
        media_type=spoken.content_type,
        headers={
            "X-Audio-Duration": f"{spoken.speech.duration_s:.3f}",
            "X-Sample-Rate": str(spoken.speech.sample_rate),
            "X-Seed": str(spoken.speech.seed),
            "X-Ref-Text-Source": spoken.ref_text_source,
        },
    )


@router.post("/v1/r2/voice/generate", response_model=StoredVoiceResponse, responses=VOICE_RESPONSES)
async def generate_voice_from_storage(
    body: VoiceFromStorageRequest, request: Request, services: ServicesDep
) -> StoredVoiceResponse:
    """Speak `text` in the voice stored at `{VOICE_REMOTE_PREFIX}{user_id}.mp3`; the result is
    stored under `{VOICE_REMOTE_PREFIX}generated/{user_id}/`."""
    check_voice(request, body.user_id)
    await services.board.require_ready(VOICE)
    checked_text(services, body.text)  # before any storage call
    return await speak_and_store(services, body)

"""Saved voices: `GET /v1/voices` (the listing), `PUT/GET/DELETE /v1/voices/{voice_id}`.

A saved voice is the reference the stored-reference routes read: MP3 audio at
`{VOICE_REMOTE_PREFIX}{voice_id}.mp3` (other formats are converted on upload) and, when
given, its transcript beside it at `{VOICE_REMOTE_PREFIX}{voice_id}.txt`. So
`/v1/r2/voice/generate {"user_id": voice_id}` and `/v1/audio/speech {"voice": voice_id}` use it.
Its reference prepared for the model (`serve_app.prepared_voices`, made on first use) is kept
at `{VOICE_REMOTE_PREFIX}{voice_id}.voice.npz`; a PUT or DELETE removes it first.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from core.errors import InvalidInput, ObjectNotFound
from core.storage import ObjectStore
from serve_app.access import module_access, request_key, voice_access, write_access
from serve_app.audio import encode_audio
from serve_app.modules import VOICE
from serve_app.prepared_voices import (
    MODEL_SAMPLE_RATE,
    audio_key,
    forget_prepared,
    transcript_key,
)
from serve_app.schemas import (
    ERROR_RESPONSES,
    USER_ID_PATTERN,
    ErrorResponse,
    SavedVoice,
    SavedVoiceSummary,
    VoiceListResponse,
)
from serve_app.services import Services, get_services
from serve_app.uploads import read_multipart

# The API key's scope: the voice module and the voice id (serve_app/access.py).
router = APIRouter(
    prefix="/v1/voices", tags=["voice"], dependencies=[module_access("voice"), voice_access]
)
# GET /v1/voices: the voices this key may use, for the voice module.
listing = APIRouter(prefix="/v1/voices", tags=["voice"], dependencies=[module_access("voice")])
ServicesDep = Annotated[Services, Depends(get_services)]
VoiceId = Annotated[str, Path(min_length=1, max_length=128, pattern=USER_ID_PATTERN)]
MAX_TRANSCRIPT_CHARS = 2000
# A listing request looks at most at this many stored files (each voice has up to three:
# audio, transcript, prepared reference); past it the page ends early with a cursor.
LIST_SCAN_FILES = 3000
LIST_BATCH_FILES = 1000
# A cursor is the name (under VOICE_REMOTE_PREFIX) of the last file a page looked at.
VOICE_CURSOR_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
AUDIO_SUFFIX = ".mp3"


@listing.get("", response_model=VoiceListResponse, responses=ERROR_RESPONSES)
async def list_voices(
    request: Request,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(pattern=VOICE_CURSOR_PATTERN)] = None,
) -> VoiceListResponse:
    """Saved voices by id; an API key scoped to some voices sees only those. Follow
    `next_cursor` until it is null."""
    key = request_key(request)
    allowed: Callable[[str], bool] = (lambda _: True) if key is None else key.allows_voice
    items, next_cursor = await asyncio.to_thread(
        _voice_page, services.store, services.config.voice_remote_prefix, limit, cursor, allowed
    )
    return VoiceListResponse(items=items, next_cursor=next_cursor)


def _voice_page(
    store: ObjectStore, prefix: str, limit: int, cursor: str | None, allowed: Callable[[str], bool]
) -> tuple[list[SavedVoiceSummary], str | None]:
    """Up to `limit` voices after `cursor`, looking at no more than LIST_SCAN_FILES files of
    the voice folder itself (generated speech and cached transcripts live in sub-folders)."""
    after = None if cursor is None else prefix + cursor
    items: list[SavedVoiceSummary] = []
    looked = 0
    while looked < LIST_SCAN_FILES:
        wanted = min(LIST_BATCH_FILES, LIST_SCAN_FILES - looked)
        batch = store.list(prefix, wanted, start_after=after, recursive=False)
        for info in batch:
            looked += 1
            after = info.key
            name = info.key[len(prefix) :]
            voice_id = name.removesuffix(AUDIO_SUFFIX)
            if voice_id == name or not re.fullmatch(USER_ID_PATTERN, voice_id):
                continue  # a transcript, a prepared reference, or no voice's name
            if not allowed(voice_id):
                continue
            modified = info.last_modified
            items.append(
                SavedVoiceSummary(
                    voice_id=voice_id,
                    bytes=info.size,
                    last_modified=None if modified is None else modified.isoformat(),
                )
            )
            if len(items) == limit:
                return items, name
        if len(batch) < wanted:
            return items, None
    return items, None if after is None else after[len(prefix) :]


RESPONSES: dict[int | str, dict] = {
    **ERROR_RESPONSES,
    404: {"model": ErrorResponse, "description": "No saved voice with that id"},
    413: {"model": ErrorResponse, "description": "Over VOICE_MAX_REF_BYTES/SECONDS"},
    415: {"model": ErrorResponse, "description": "Not audio"},
}


@router.put(
    "/{voice_id}",
    response_model=SavedVoice,
    responses={201: {"model": SavedVoice, "description": "Created"}, **RESPONSES},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["audio"],
                        "properties": {
                            "audio": {"type": "string", "format": "binary"},
                            "transcript": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
    dependencies=[write_access],
)
async def put_voice(voice_id: VoiceId, request: Request, services: ServicesDep) -> JSONResponse:
    """Store (or replace) a reference voice: multipart `audio` and optional `transcript`."""
    await services.board.require_ready(VOICE)
    config = services.config
    body = await read_multipart(
        request,
        max_file_bytes=config.voice_max_ref_bytes,
        max_files=1,
        what="audio",
        limit_setting="VOICE_MAX_REF_BYTES",
    )
    (upload,) = body.files_named("audio")
    transcript = (body.fields.get("transcript") or "").strip()
    if len(transcript) > MAX_TRANSCRIPT_CHARS:
        raise InvalidInput(
            f"transcript is over {MAX_TRANSCRIPT_CHARS} characters",
            fields=[{"field": "transcript", "message": "too long"}],
        )
    decoded = await services.audio_decoder.decode(
        upload.data,
        target_sr=MODEL_SAMPLE_RATE,
        max_seconds=config.voice_max_ref_seconds,
        max_bytes=config.voice_max_ref_bytes,
    )
    audio = upload.data
    if decoded.source_format != "mp3":  # the stored reference is MP3 by convention
        audio, _ = await asyncio.to_thread(
            encode_audio, decoded.samples, decoded.sample_rate, "mp3"
        )
    key = audio_key(services, voice_id)
    existed = await asyncio.to_thread(services.store.head, key) is not None
    text_key = transcript_key(services, voice_id)
    # The prepared reference first, then the transcript: a reader never pairs new audio with
    # an old transcript (and one that prepares meanwhile labels it with the old version).
    await forget_prepared(services, voice_id)
    if transcript:
        await asyncio.to_thread(
            services.store.put, text_key, transcript.encode(), "text/plain; charset=utf-8"
        )
    else:
        await asyncio.to_thread(services.store.delete, text_key)
    await asyncio.to_thread(services.store.put, key, audio, "audio/mpeg")
    saved = SavedVoice(
        voice_id=voice_id,
        key=key,
        bytes=len(audio),
        duration_s=round(decoded.duration_s, 3),
        transcript=transcript or None,
        created=not existed,
    )
    return JSONResponse(saved.model_dump(mode="json"), status_code=200 if existed else 201)


@router.get("/{voice_id}", response_model=SavedVoice, responses=RESPONSES)
async def get_voice(voice_id: VoiceId, services: ServicesDep) -> SavedVoice:
    """What is stored for the voice: its key, size and transcript."""
    key = audio_key(services, voice_id)
    info = await asyncio.to_thread(services.store.head, key)
    if info is None:
        raise ObjectNotFound(f"no saved voice '{voice_id}' ({key} does not exist)", key=key)
    try:
        raw = await asyncio.to_thread(services.store.get, transcript_key(services, voice_id))
        transcript: str | None = raw.decode("utf-8", errors="replace")
    except ObjectNotFound:
        transcript = None
    return SavedVoice(voice_id=voice_id, key=key, bytes=info.size, transcript=transcript)


@router.delete("/{voice_id}", responses=RESPONSES, dependencies=[write_access])
async def delete_voice(voice_id: VoiceId, services: ServicesDep) -> dict[str, object]:
    """Remove the voice, its transcript and its prepared reference; 404 when there is none
    (a second delete too)."""
    key = audio_key(services, voice_id)
    if not await asyncio.to_thread(services.store.delete, key):
        raise ObjectNotFound(f"no saved voice '{voice_id}' ({key} does not exist)", key=key)
    await asyncio.to_thread(services.store.delete, transcript_key(services, voice_id))
    await forget_prepared(services, voice_id)
    return {"voice_id": voice_id, "deleted": True}

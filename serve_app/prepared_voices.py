"""Saved voices prepared once: the Gateway's side (`core.prepared_voice` is the format).

A saved voice (`routes.saved_voices`) is named by its key, `{voice_id}@{version}`, where
the version is a digest of the stored audio's and transcript's metadata (size, ETag,
modification time): a PUT changes it, so nothing prepared from an older voice is used.
Its prepared reference (trimmed audio at the model rate + transcript) lives in three places,
tried in order:

1. the VoiceCloner replica's memory, by key (`synthesize_voice(key, ...)`), with this
   replica remembering the transcript and lengths per key (`VoiceNotes`, bounded);
2. the object store beside the voice, `{VOICE_REMOTE_PREFIX}{voice_id}.voice.npz`, kept
   only when its key is the voice's current one (a corrupt, foreign or outdated file is
   ignored and replaced);
3. made anew: the stored audio decoded, its transcript read (the saved one, the
   transcript cache by the audio's sha256, else ASR on the replica, whose answer goes to
   that cache too), prepared by the VoiceCloner (`prepare_voice`, which also keeps it) and
   written to the store.

A PUT or DELETE of the voice removes the stored file (`forget_prepared`). The VoiceCloner
answers VoiceNotPrepared (409) for a key it does not hold or a file another model made;
`with_voice` then goes down the list.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from core.errors import ObjectNotFound, PayloadTooLarge, VoiceNotPrepared
from core.prepared_voice import BadPreparedVoice, PreparedVoice, TranscriptSource
from core.storage import ObjectInfo, join_key
from serve_app.deployment_calls import await_deployment
from serve_app.modules import VOICE

if TYPE_CHECKING:
    from serve_app.services import Services

logger = logging.getLogger("ray.serve")

T = TypeVar("T")
PREPARED_SUFFIX = ".voice.npz"
NPZ_TYPE = "application/octet-stream"
NOTES_KEPT = 4096  # voice keys whose transcript this replica remembers (a few hundred bytes each)
MODEL_SAMPLE_RATE = 24_000  # F5-TTS's vocos front end; decoding straight to it saves a resample

Found = Literal["memory", "stored", "made"]
Check = Callable[[float, str], object]


@dataclass(frozen=True)
class SavedVoice:
    """A saved voice as it is stored now."""

    voice_id: str
    audio_key: str
    transcript_key: str
    version: str

    @property
    def key(self) -> str:
        """The name of this version of the voice (the VoiceCloner keeps it under this)."""
        return f"{self.voice_id}@{self.version}"


@dataclass(frozen=True)
class VoiceNote:
    """What the Gateway needs of a prepared voice before calling the model."""

    ref_text: str
    ref_text_source: TranscriptSource
    source_seconds: float

    @classmethod
    def of(cls, voice: PreparedVoice) -> VoiceNote:
        return cls(voice.ref_text, voice.ref_text_source, voice.source_seconds)


class VoiceNotes:
    """Notes by voice key, at most `capacity`, the least recently used dropped first."""

    def __init__(self, capacity: int = NOTES_KEPT) -> None:
        self.capacity = capacity
        self._notes: OrderedDict[str, VoiceNote] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> VoiceNote | None:
        with self._lock:
            note = self._notes.get(key)
            if note is not None:
                self._notes.move_to_end(key)
            return note

    def put(self, key: str, note: VoiceNote) -> None:
        with self._lock:
            self._notes[key] = note
            self._notes.move_to_end(key)
            while len(self._notes) > self.capacity:
                self._notes.popitem(last=False)


@dataclass
class ReadyVoice:
    """A saved voice ready for the model: its note, and its prepared reference when this
    request loaded or made it (`found`)."""

    saved: SavedVoice
    note: VoiceNote
    prepared: PreparedVoice | None
    found: Found

    @property
    def ref_text_source(self) -> str:
        """How the transcript was had, as the routes report it: an ASR transcript made by an
        earlier request is "cached"."""
        source = self.note.ref_text_source
        if source == "asr" and self.found != "made":
            return "cached"
        return "stored" if source == "given" else source


def audio_key(services: Services, voice_id: str) -> str:
    """Where a saved voice's audio lives: `{VOICE_REMOTE_PREFIX}{voice_id}.mp3`."""
    return join_key(services.config.voice_remote_prefix, f"{voice_id}.mp3")


def transcript_key(services: Services, voice_id: str) -> str:
    return join_key(services.config.voice_remote_prefix, f"{voice_id}.txt")


def prepared_key(services: Services, voice_id: str) -> str:
    return join_key(services.config.voice_remote_prefix, f"{voice_id}{PREPARED_SUFFIX}")


async def saved_voice(services: Services, voice_id: str) -> SavedVoice:
    """The voice as stored now (two HEADs); 404 naming the key, 413 when too large."""
    key = audio_key(services, voice_id)
    text_key = transcript_key(services, voice_id)
    info, text_info = await asyncio.gather(
        asyncio.to_thread(services.store.head, key),
        asyncio.to_thread(services.store.head, text_key),
    )
    if info is None:
        raise ObjectNotFound(f"no reference voice for '{voice_id}': {key} does not exist", key=key)
    if info.size > services.config.voice_max_ref_bytes:
        raise PayloadTooLarge(
            f"{key} is {info.size} bytes; the limit is VOICE_MAX_REF_BYTES="
            f"{services.config.voice_max_ref_bytes}"
        )
    version = hashlib.sha256(f"{_stamp(info)}|{_stamp(text_info)}".encode()).hexdigest()[:16]
    return SavedVoice(voice_id, key, text_key, version)


async def ready_voice(
    services: Services, saved: SavedVoice, check: Check | None = None
) -> ReadyVoice:
    """The voice's note: remembered here, else from its stored or newly made reference.
    `check(source_seconds, ref_text)` raises for a request the voice cannot serve (its
    cost); when the voice must be made and its transcript is known, it runs before the
    model is asked to prepare it."""
    note = services.voice_notes.get(saved.key)
    if note is None:
        prepared = await _load(services, saved)
        found: Found = "stored"
        if prepared is None:
            prepared, found = await _make(services, saved, check), "made"
        ready = ReadyVoice(saved, VoiceNote.of(prepared), prepared, found)
    else:
        ready = ReadyVoice(saved, note, None, "memory")
    if check is not None:
        check(ready.note.source_seconds, ready.note.ref_text)
    return ready


async def with_voice(
    services: Services, ready: ReadyVoice, call: Callable[[PreparedVoice | str], Awaitable[T]]
) -> T:
    """`call` with the voice the VoiceCloner can use: its key when only the note is here,
    else the prepared reference; on VoiceNotPrepared the stored one, then one made anew."""
    attempt: PreparedVoice | str = ready.prepared or ready.saved.key
    try:
        return await call(attempt)
    except VoiceNotPrepared:
        logger.info("voice %s is not prepared on the model replica", ready.saved.key)
    if isinstance(attempt, str):
        stored = await _load(services, ready.saved)
        if stored is not None:
            try:
                return await call(stored)
            except VoiceNotPrepared:
                logger.info("the stored prepared voice %s is another model's", ready.saved.key)
    made = await _make(services, ready.saved)
    ready.note, ready.prepared, ready.found = VoiceNote.of(made), made, "made"
    return await call(made)


async def forget_prepared(services: Services, voice_id: str) -> None:
    """Remove the voice's stored prepared reference (before its audio or transcript
    changes; the new version's key differs anyway)."""
    await asyncio.to_thread(services.store.delete, prepared_key(services, voice_id))


async def _load(services: Services, saved: SavedVoice) -> PreparedVoice | None:
    """The stored prepared reference when it is this version's; None otherwise."""
    key = prepared_key(services, saved.voice_id)
    try:
        data = await asyncio.to_thread(services.store.get, key)
    except ObjectNotFound:
        return None
    try:
        prepared = PreparedVoice.from_bytes(data)
    except BadPreparedVoice as exc:
        logger.warning("ignoring the prepared voice at %s: %s", key, exc)
        return None
    if prepared.key != saved.key:
        return None  # made from an earlier version of the voice
    services.voice_notes.put(saved.key, VoiceNote.of(prepared))
    return prepared


async def _make(services: Services, saved: SavedVoice, check: Check | None = None) -> PreparedVoice:
    """Decode the stored audio, find its transcript (`check` it), prepare it on the
    VoiceCloner (which keeps it by key) and store it beside the voice."""
    config = services.config
    audio = await asyncio.to_thread(services.store.get, saved.audio_key)
    decoded = await services.audio_decoder.decode(
        audio,
        target_sr=MODEL_SAMPLE_RATE,
        max_seconds=config.voice_max_ref_seconds,
        max_bytes=config.voice_max_ref_bytes,
    )
    cache_key = join_key(
        config.voice_remote_prefix, "transcripts", f"{hashlib.sha256(audio).hexdigest()}.txt"
    )
    ref_text, source = await _known_transcript(services, saved, cache_key)
    if check is not None and ref_text:
        check(decoded.duration_s, ref_text)
    prepared: PreparedVoice = await await_deployment(
        services.voice_cloner.prepare_voice.remote(
            decoded.samples,
            decoded.sample_rate,
            ref_text,
            key=saved.key,
            ref_text_source=source,
        ),
        what="voice preparation",
        timeout_s=config.request_timeout_s,
        watch=services.board.watch(VOICE),
    )
    services.voice_notes.put(saved.key, VoiceNote.of(prepared))
    writes = [(prepared_key(services, saved.voice_id), prepared.to_bytes(), NPZ_TYPE)]
    if prepared.ref_text_source == "asr":  # the same recording saved again needs no ASR
        writes.append((cache_key, prepared.ref_text.encode(), "text/plain; charset=utf-8"))
    for key, data, content_type in writes:
        try:  # the synthesis goes on without it; a later request prepares again
            await asyncio.to_thread(services.store.put, key, data, content_type)
        except Exception:
            logger.warning("could not store %s", key, exc_info=True)
    return prepared


async def _known_transcript(
    services: Services, saved: SavedVoice, cache_key: str
) -> tuple[str | None, TranscriptSource]:
    """The saved transcript, else one an earlier ASR left in the transcript cache, else None
    (the VoiceCloner transcribes)."""
    stored = await stored_text(services, saved.transcript_key)
    if stored:
        return stored, "stored"
    cached = await stored_text(services, cache_key)
    if cached:
        return cached, "cached"
    return None, "given"


async def stored_text(services: Services, key: str) -> str | None:
    """The stripped UTF-8 text stored at `key`, or None when it is absent or blank."""
    try:
        data = await asyncio.to_thread(services.store.get, key)
    except ObjectNotFound:
        return None
    return data.decode("utf-8", errors="replace").strip() or None


def _stamp(info: ObjectInfo | None) -> str:
    if info is None:
        return "-"
    return f"{info.size}:{info.etag or ''}:{info.last_modified.isoformat()}"

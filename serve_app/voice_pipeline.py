"""The Gateway side of voice cloning, shared by the voice routes (`routes.voice_generation`,
`routes.openai_compat`): reference -> transcript -> speech -> encoded audio.

Reference decoding, transcript caching, encoding and storage happen here, on the gateway;
the VoiceCloner replica only runs models. An uploaded reference without its transcript is
looked up in the transcript cache (`{VOICE_REMOTE_PREFIX}transcripts/{sha256 of the
audio}.txt`), and only then transcribed once with the ASR model, whose answer is cached
there. A saved voice (`SavedVoice`) is not decoded per request: its reference is prepared
once (trimmed, transcribed) and reused by key (`serve_app.prepared_voices`).

Before the model is called, the synthesis's cost is estimated from the request
(`core.voice_cost`): a transcript that cannot match its reference, or an estimate past
VOICE_MAX_OUTPUT_SECONDS / VOICE_MAX_MODEL_STEPS, is answered 422 here (`check_voice_cost`).

Streamed speech (`open_speech_stream`) goes the same way up to the model, then reads the
VoiceCloner's `synthesize_stream` through a streaming handle and encodes each piece as it
comes (`serve_app.audio.StreamEncoder`). The first piece is awaited before the route answers,
so that everything that can fail before the first byte (the reference, the budget, a full
queue, the model refusing the input) still answers with its status and the JSON error; what
fails later can only end the stream.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from core.errors import ApiError, InvalidInput, ModelInputError
from core.prepared_voice import PreparedVoice
from core.storage import join_key
from core.types import SpeechChunk, SynthesizedSpeech, VoiceParams
from core.voice_cost import VoiceCost, check_voice_request, estimate_voice_cost, plan_chunks
from serve_app.audio import STREAM_FORMATS, AudioFormat, DecodedAudio, StreamEncoder, encode_audio
from serve_app.deployment_calls import await_deployment
from serve_app.file_links import store_and_link
from serve_app.modules import VOICE
from serve_app.prepared_voices import (
    MODEL_SAMPLE_RATE,
    ReadyVoice,
    SavedVoice,
    ready_voice,
    saved_voice,
    stored_text,
    with_voice,
)
from serve_app.schemas import StoredVoiceResponse, VoiceFromStorageRequest, VoiceTimings
from serve_app.services import Services

logger = logging.getLogger("ray.serve")

TRIM_PADDING_SECONDS = 0.05  # the model's trimmed reference ends with 50 ms of silence


@dataclass(frozen=True)
class SpokenAudio:
    """Encoded speech, how it was made, and step timings (ms)."""

    data: bytes
    content_type: str
    speech: SynthesizedSpeech
    ref_text: str
    ref_text_source: str
    reference_ms: float
    transcribe_ms: float
    synthesize_ms: float
    encode_ms: float


def voice_params(
    services: Services, speed: float | None, seed: int | None, nfe_steps: int | None
) -> VoiceParams:
    """Request options over the server's defaults."""
    config = services.config
    return VoiceParams(
        nfe_steps=nfe_steps or config.voice_default_nfe_steps,
        cfg_strength=config.voice_default_cfg_strength,
        speed=speed or 1.0,
        seed=seed,
    )


def checked_text(services: Services, text: str) -> str:
    """The text to speak, stripped; 422 when empty or over VOICE_MAX_TEXT_CHARS."""
    text = text.strip()
    if not text:
        raise InvalidInput("text must not be empty", fields=[{"field": "text", "message": "empty"}])
    limit = services.config.voice_max_text_chars
    if len(text) > limit:
        raise InvalidInput(
            f"text is {len(text)} characters; the limit is VOICE_MAX_TEXT_CHARS={limit}",
            fields=[{"field": "text", "message": "too long"}],
        )
    return text


async def speak(
    services: Services,
    *,
    reference: bytes | SavedVoice,
    ref_text: str | None,
    text: str,
    fmt: AudioFormat,
    params: VoiceParams,
) -> SpokenAudio:
    """Clone the reference voice (uploaded bytes, or a saved voice) saying `text`, as `fmt`.
    `ref_text` is the uploaded reference's transcript (a saved voice has its own)."""
    await services.board.require_ready(VOICE)
    config = services.config
    text = checked_text(services, text)
    started = time.perf_counter()
    if isinstance(reference, SavedVoice):
        ready = await ready_voice(
            services,
            reference,
            lambda seconds, words: check_voice_cost(services, seconds, words, text, params),
        )
        used_text = ready.note.ref_text
        transcribed_at = decoded_at = time.perf_counter()

        def call(voice: PreparedVoice | str) -> Awaitable[SynthesizedSpeech]:
            return await_deployment(
                services.voice_cloner.synthesize_voice.remote(voice, text, params),
                what="voice synthesis",
                timeout_s=config.request_timeout_s,
                watch=services.board.watch(VOICE),
            )

        speech: SynthesizedSpeech = await with_voice(services, ready, call)
        source = ready.ref_text_source
    else:
        decoded = await _decode(services, reference)
        decoded_at = time.perf_counter()
        used_text, source = await _reference_text(services, decoded, reference, ref_text)
        check_voice_cost(services, decoded.duration_s, used_text, text, params)
        transcribed_at = time.perf_counter()
        speech = await await_deployment(
            services.voice_cloner.synthesize.remote(
                decoded.samples, decoded.sample_rate, used_text, text, params
            ),
            what="voice synthesis",
            timeout_s=config.request_timeout_s,
            watch=services.board.watch(VOICE),
        )
    synthesized_at = time.perf_counter()
    data, content_type = await asyncio.to_thread(
        encode_audio, speech.samples, speech.sample_rate, fmt
    )
    encoded_at = time.perf_counter()
    return SpokenAudio(
        data=data,
        content_type=content_type,
        speech=speech,
        ref_text=used_text,
        ref_text_source=source,
        reference_ms=(decoded_at - started) * 1000,
        transcribe_ms=(transcribed_at - decoded_at) * 1000,
        synthesize_ms=(synthesized_at - transcribed_at) * 1000,
        encode_ms=(encoded_at - synthesized_at) * 1000,
    )


async def _decode(services: Services, reference: bytes) -> DecodedAudio:
    config = services.config
    return await services.audio_decoder.decode(
        reference,
        target_sr=MODEL_SAMPLE_RATE,
        max_seconds=config.voice_max_ref_seconds,
        max_bytes=config.voice_max_ref_bytes,
    )


@dataclass
class SpeechStream:
    """Streamed speech whose first piece is made: iterate `chunks()` for the encoded bytes."""

    first: SpeechChunk
    content_type: str
    ref_text_source: str
    _rest: Any  # the DeploymentResponseGenerator of the remaining pieces
    _encoder: StreamEncoder
    _timeout_s: float
    _watch: Callable[[], Awaitable[None]]  # board.watch(VOICE): a new coroutine per wait

    @property
    def seed(self) -> int:
        return self.first.seed

    @property
    def sample_rate(self) -> int:
        return self.first.sample_rate

    async def chunks(self) -> AsyncIterator[bytes]:
        """The encoded audio, piece by piece (the first one at once). A failure after the
        first piece raises the ApiError it maps to; leaving the iteration early (the client
        went away) cancels the synthesis."""
        try:
            piece: SpeechChunk | None = self.first
            while piece is not None:
                data = await asyncio.to_thread(self._encoder.encode, piece.samples)
                if data:
                    yield data
                piece = await _next_piece(self._rest, self._timeout_s, self._watch())
            tail = await asyncio.to_thread(self._encoder.finish)
            if tail:
                yield tail
        finally:
            self._rest.cancel()  # a no-op once it ended; else the model stops within a chunk

    def cancel(self) -> None:
        """Give the stream up without reading it (the model stops within a chunk)."""
        self._rest.cancel()


async def open_speech_stream(
    services: Services,
    *,
    reference: bytes | SavedVoice,
    ref_text: str | None,
    text: str,
    fmt: AudioFormat,
    params: VoiceParams,
    format_field: str = "format",
) -> SpeechStream:
    """`speak`, streamed: checks as `speak` does (and that `fmt` can be streamed), starts
    the VoiceCloner's `synthesize_stream` (`synthesize_voice_stream` for a saved voice) and
    waits for its first piece; any failure up to there raises its ApiError before a byte is
    sent. `format_field`: the request's name for the format, in the 422 of a format that
    cannot be streamed."""
    await services.board.require_ready(VOICE)
    if fmt not in STREAM_FORMATS:
        raise InvalidInput(
            f"{fmt} cannot be streamed; stream one of {', '.join(STREAM_FORMATS)}",
            fields=[{"field": format_field, "message": "not streamable"}],
        )
    config = services.config
    text = checked_text(services, text)

    async def opened(stream: Any) -> tuple[Any, SpeechChunk | None]:
        try:
            first = await _next_piece(stream, config.request_timeout_s, services.board.watch(VOICE))
        except BaseException:
            stream.cancel()
            raise
        return stream, first

    if isinstance(reference, SavedVoice):
        ready: ReadyVoice = await ready_voice(
            services,
            reference,
            lambda seconds, words: check_voice_cost(
                services, seconds, words, text, params, streaming=True
            ),
        )

        def call(voice: PreparedVoice | str) -> Awaitable[tuple[Any, SpeechChunk | None]]:
            handle = services.voice_cloner.options(stream=True)
            return opened(handle.synthesize_voice_stream.remote(voice, text, params))

        stream, first = await with_voice(services, ready, call)
        source = ready.ref_text_source
    else:
        decoded = await _decode(services, reference)
        used_text, source = await _reference_text(services, decoded, reference, ref_text)
        check_voice_cost(services, decoded.duration_s, used_text, text, params, streaming=True)
        stream, first = await opened(
            services.voice_cloner.options(stream=True).synthesize_stream.remote(
                decoded.samples, decoded.sample_rate, used_text, text, params
            )
        )
    if first is None:  # the model checks the text too: never empty here
        raise InvalidInput("text has nothing to synthesize")
    encoder = StreamEncoder(fmt, first.sample_rate)
    return SpeechStream(
        first=first,
        content_type=encoder.content_type,
        ref_text_source=source,
        _rest=stream,
        _encoder=encoder,
        _timeout_s=config.request_timeout_s,
        _watch=lambda: services.board.watch(VOICE),
    )


async def audio_body(stream: SpeechStream) -> AsyncIterator[bytes]:
    """The body of a chunked audio response. A failure after the first byte cannot change
    the status any more: it is logged and the stream ends early (the audio is short)."""
    try:
        async for data in stream.chunks():
            yield data
    except ApiError as exc:
        logger.warning("voice stream ended early: %s", exc.message)  # Serve adds the request id


async def sse_body(stream: SpeechStream, input_tokens: int) -> AsyncIterator[bytes]:
    """OpenAI's speech events: `speech.audio.delta` with base64 audio per piece, then
    `speech.audio.done` with usage (input: whitespace-separated words, an approximation;
    output: 0, no tokens here); a failure after the first event sends an `error` event
    (the project's error body) and ends the stream."""
    try:
        async for data in stream.chunks():
            delta = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
            yield _sse(delta)
    except ApiError as exc:
        logger.warning("voice stream ended early: %s", exc.message)  # Serve adds the request id
        yield _sse({"type": "error", **exc.to_body()})
        return
    usage = {"input_tokens": input_tokens, "output_tokens": 0, "total_tokens": input_tokens}
    yield _sse({"type": "speech.audio.done", "usage": usage})


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


class _NextPiece:
    """The next item of a streaming deployment response, awaitable and cancellable as
    `await_deployment` wants a response to be; None at the end."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __await__(self) -> Any:
        return self._next().__await__()

    async def _next(self) -> SpeechChunk | None:
        try:
            piece: SpeechChunk = await self._stream.__anext__()
        except StopAsyncIteration:
            return None
        return piece

    def cancel(self) -> None:
        self._stream.cancel()


async def _next_piece(stream: Any, timeout_s: float, watch: Awaitable[None]) -> SpeechChunk | None:
    piece: SpeechChunk | None = await await_deployment(
        _NextPiece(stream), what="voice synthesis", timeout_s=timeout_s, watch=watch
    )
    return piece


def check_voice_cost(
    services: Services,
    full_seconds: float,
    ref_text: str,
    text: str,
    params: VoiceParams,
    *,
    streaming: bool = False,
) -> VoiceCost:
    """The synthesis's estimated cost (`full_seconds`: the untrimmed reference's length);
    422 when the transcript cannot match the reference
    or the estimate is past VOICE_MAX_OUTPUT_SECONDS / VOICE_MAX_MODEL_STEPS (the message
    names the limit and the estimate). The model trims the reference to
    VOICE_REF_SECONDS_USED at most and checks again with what it kept; the estimate here
    assumes it keeps all of that, which can only overestimate the cost."""
    config = services.config
    heard = min(full_seconds, config.voice_ref_seconds_used) + TRIM_PADDING_SECONDS
    cost = estimate_voice_cost(
        ref_seconds=heard,
        ref_text=ref_text,
        text=text,
        nfe_steps=params.nfe_steps,
        speed=params.speed,
        cfg_strength=params.cfg_strength,
        chunks=plan_chunks(heard, ref_text, text, params.speed, streaming=True)
        if streaming
        else None,
    )
    try:
        check_voice_request(cost, ref_text, full_seconds, config.voice_limits)
    except ModelInputError as exc:
        raise exc.to_api_error() from None
    return cost


async def _reference_text(
    services: Services,
    decoded: DecodedAudio,
    reference: bytes,
    given: str | None,
) -> tuple[str, str]:
    if given and given.strip():
        return given.strip(), "request"
    prefix = services.config.voice_remote_prefix
    cache_key = join_key(prefix, "transcripts", f"{hashlib.sha256(reference).hexdigest()}.txt")
    cached = await stored_text(services, cache_key)
    if cached:
        return cached, "cached"
    transcript: str = await await_deployment(
        services.voice_cloner.transcribe.remote(decoded.samples, decoded.sample_rate),
        what="reference transcription",
        timeout_s=services.config.request_timeout_s,
        watch=services.board.watch(VOICE),
    )
    transcript = transcript.strip()
    if not transcript:
        raise InvalidInput(
            "no speech was recognised in the reference audio; send its transcript as ref_text",
            fields=[{"field": "ref_text", "message": "needed"}],
        )
    await asyncio.to_thread(
        services.store.put, cache_key, transcript.encode("utf-8"), "text/plain; charset=utf-8"
    )
    return transcript, "asr"


async def speak_and_store(
    services: Services, body: VoiceFromStorageRequest, name: str | None = None
) -> StoredVoiceResponse:
    """Speak `body.text` in the saved voice `body.user_id` (prepared once) and store the
    audio under `{VOICE_REMOTE_PREFIX}generated/{user_id}/{name or a uuid}.{format}`: the
    answer of `/v1/r2/voice/generate` and of a voice job (which names the key after itself)."""
    started = time.perf_counter()
    voice = await saved_voice(services, body.user_id)
    spoken = await speak(
        services,
        reference=voice,
        ref_text=None,
        text=body.text,
        fmt=body.format,
        params=voice_params(services, body.speed, body.seed, body.nfe_steps),
    )
    key = join_key(
        services.config.generated_voice_prefix,
        body.user_id,
        f"{name or uuid.uuid4().hex}.{body.format}",
    )
    stored_at = time.perf_counter()
    url = await store_and_link(services.store, key, spoken.data, spoken.content_type)
    done = time.perf_counter()
    speech = spoken.speech
    return StoredVoiceResponse(
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

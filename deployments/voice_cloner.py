"""VoiceCloner deployment: F5-TTS zero-shot voice cloning (+ ASR for missing transcripts).

Saved voices are prepared once (`prepare_voice`: trimmed reference + transcript) and kept
in a bounded least-recently-used map by a caller's key, so that `synthesize_voice` by key
skips the reference work; a key it does not hold answers VoiceNotPrepared (409).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator

import numpy as np
from ray import serve

from core import defaults
from core.cpu_priority import yield_cpu
from core.errors import VoiceNotPrepared
from core.metrics import (
    audio_seconds_produced,
    voice_stream_chunks,
    voice_streams,
    voice_synthesis_seconds,
)
from core.prepared_voice import PreparedVoice, TranscriptSource
from core.types import SpeechChunk, SynthesizedSpeech, VoiceParams
from deployments.configs import VoiceClonerConfig
from deployments.model_queue import ModelQueue, current_request_id
from deployments.voice_model import VoiceModel

logger = logging.getLogger("ray.serve")


@serve.deployment(
    num_replicas=1,
    # The model runs one request at a time (ModelQueue, FIFO). The builder sets how many the
    # replica holds (MODEL_MAX_ONGOING_REQUESTS, default 1): above 1 the next request waits in
    # the replica and starts the moment the model is free, instead of backing off in Serve's
    # router; the queue bound stays Serve's max_queued_requests.
    max_ongoing_requests=1,
    max_queued_requests=defaults.VOICE_MAX_QUEUED_REQUESTS,
    ray_actor_options={"num_cpus": 1},
)
class VoiceCloner:
    """Speech in the voice of a reference clip. The model loads in the constructor."""

    def __init__(self, config: VoiceClonerConfig):
        yield_cpu(config.cpu_nice)  # before the model loads: its threads inherit it
        self._model = VoiceModel(config)
        self._device = self._model.describe().get("device", "unknown")
        self._queue = ModelQueue("voice-cloner")
        self._voices = PreparedVoices(config.prepared_voices_cached)
        if config.warm_up:  # before the replica reports ready: the first request is not slower
            self._queue.call(self._model.warm_up)

    async def synthesize(
        self,
        ref_audio: np.ndarray,
        ref_sr: int,
        ref_text: str,
        text: str,
        params: VoiceParams | None = None,
    ) -> SynthesizedSpeech:
        """Speak `text` in the voice of `ref_audio` (float32 mono) whose words are `ref_text`.

        The same inputs and seed give the same samples; long texts are chunked as f5-tts does.
        """
        params = params or VoiceParams()
        speech = await self._queue.run(
            "voice synthesis",
            self._model.synthesize,
            ref_audio,
            ref_sr,
            ref_text,
            text,
            **params.model_dump(),  # nfe_steps, cfg_strength, speed, seed
        )
        voice_synthesis_seconds().observe(speech.elapsed_ms / 1000, tags={"device": self._device})
        audio_seconds_produced().inc(speech.duration_s, tags={})
        return speech

    async def synthesize_stream(
        self,
        ref_audio: np.ndarray,
        ref_sr: int,
        ref_text: str,
        text: str,
        params: VoiceParams | None = None,
    ) -> AsyncIterator[SpeechChunk]:
        """`synthesize`, streamed: call with ``handle.options(stream=True)`` and iterate; each
        text chunk's samples come as soon as the chunk is made (a short first chunk, then
        whole sentences; seams cross-faded). Played back to back they are the speech.

        The whole stream is one turn of the model queue: no other request runs between its
        chunks, so its audio never stalls behind another synthesis once it has started.
        A caller that stops iterating (or is cancelled) stops the synthesis before its next
        chunk or model step, and the next request in the queue starts then."""
        params = params or VoiceParams()

        def chunks() -> Iterator[SpeechChunk]:
            return self._model.synthesize_stream(
                ref_audio,
                ref_sr,
                ref_text,
                text,
                **params.model_dump(),  # nfe_steps, cfg_strength, speed, seed
            )

        async with contextlib.aclosing(self._stream(chunks)) as stream:
            async for chunk in stream:
                yield chunk

    async def prepare_voice(
        self,
        ref_audio: np.ndarray,
        ref_sr: int,
        ref_text: str | None = None,
        *,
        key: str = "",
        ref_text_source: TranscriptSource = "given",
    ) -> PreparedVoice:
        """Prepare a reference once for many syntheses: resampled and trimmed as `synthesize`
        trims it, transcribed (ASR) when `ref_text` is empty. With `key` it is kept here for
        `synthesize_voice(key, ...)`; the result can also be passed back itself (e.g. after
        this replica restarted) and stored by the caller (`PreparedVoice.to_bytes`). Give the
        voice a new key whenever its audio or transcript changes."""
        voice: PreparedVoice = await self._queue.run(
            "voice preparation",
            self._model.prepare_voice,
            ref_audio,
            ref_sr,
            ref_text,
            ref_text_source=ref_text_source,
            key=key,
        )
        if key:
            self._voices.put(key, voice)
        return voice

    async def synthesize_voice(
        self, voice: PreparedVoice | str, text: str, params: VoiceParams | None = None
    ) -> SynthesizedSpeech:
        """`synthesize` with a prepared voice, or the key it was prepared under here (no
        decoding, trimming or ASR); the same samples as `synthesize` with its reference,
        transcript and seed. An unknown key, or a voice prepared by another model, raises
        VoiceNotPrepared (409)."""
        prepared = self._voices.resolve(voice, self._model.fingerprint)
        params = params or VoiceParams()
        speech = await self._queue.run(
            "voice synthesis",
            self._model.synthesize_voice,
            prepared,
            text,
            **params.model_dump(),  # nfe_steps, cfg_strength, speed, seed
        )
        voice_synthesis_seconds().observe(speech.elapsed_ms / 1000, tags={"device": self._device})
        audio_seconds_produced().inc(speech.duration_s, tags={})
        return speech

    async def synthesize_voice_stream(
        self, voice: PreparedVoice | str, text: str, params: VoiceParams | None = None
    ) -> AsyncIterator[SpeechChunk]:
        """`synthesize_stream` with a prepared voice or its key (see `synthesize_voice`);
        call with ``handle.options(stream=True)``."""
        prepared = self._voices.resolve(voice, self._model.fingerprint)
        params = params or VoiceParams()

        def chunks() -> Iterator[SpeechChunk]:
            return self._model.synthesize_voice_stream(
                prepared,
                text,
                **params.model_dump(),  # nfe_steps, cfg_strength, speed, seed
            )

        async with contextlib.aclosing(self._stream(chunks)) as stream:
            async for chunk in stream:
                yield chunk

    async def _stream(
        self, chunks: Callable[[], Iterator[SpeechChunk]]
    ) -> AsyncGenerator[SpeechChunk, None]:
        """The model's chunks, made in one model-queue turn and passed on as they come."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Queue[SpeechChunk] = asyncio.Queue()
        made = 0

        def run() -> None:  # on the model's thread, holding its turn
            nonlocal made
            for chunk in chunks():
                made += 1
                voice_stream_chunks().inc(1, tags={})
                loop.call_soon_threadsafe(ready.put_nowait, chunk)

        turn = asyncio.ensure_future(self._queue.run("voice synthesis", run))
        outcome, sent_s, elapsed_ms = "stopped", 0.0, 0.0
        try:
            while True:
                next_chunk = asyncio.ensure_future(ready.get())
                await asyncio.wait({next_chunk, turn}, return_when=asyncio.FIRST_COMPLETED)
                if not next_chunk.done():
                    next_chunk.cancel()
                    while not ready.empty():  # chunks queued just before the turn ended
                        chunk = ready.get_nowait()
                        sent_s += chunk.samples.shape[0] / chunk.sample_rate
                        elapsed_ms = chunk.elapsed_ms
                        yield chunk
                    turn.result()  # the model's error, mapped for the client by the queue
                    outcome = "completed"
                    return
                chunk = next_chunk.result()
                sent_s += chunk.samples.shape[0] / chunk.sample_rate
                elapsed_ms = chunk.elapsed_ms
                yield chunk
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit | asyncio.CancelledError):
                outcome = "failed"
            raise
        finally:
            if not turn.done():
                turn.cancel()  # the queue sets the call's cancel flag: it stops within a chunk
            voice_streams().inc(1, tags={"outcome": outcome})
            if outcome != "completed":
                logger.info(
                    "voice stream %s after %d chunk(s) synthesized (request %s)",
                    outcome,
                    made,
                    current_request_id(),
                )
            if sent_s:
                voice_synthesis_seconds().observe(elapsed_ms / 1000, tags={"device": self._device})
                audio_seconds_produced().inc(sent_s, tags={})

    async def transcribe(self, audio: np.ndarray, sr: int) -> str:
        """The words spoken in `audio`, trimmed first exactly as the synthesizer trims it, so
        that the transcript matches the part of the reference the model hears."""
        return await self._queue.run("transcription", self._transcribe, audio, sr)

    def _transcribe(self, audio: np.ndarray, sr: int) -> str:
        reference = self._model.prepare_reference(audio, sr)
        return self._model.transcribe(reference, self._model.sample_rate)

    @property
    def sample_rate(self) -> int:
        return self._model.sample_rate

    def describe(self) -> dict[str, str]:
        """Which models are loaded, on which device and dtype; how often a reference was
        trimmed or transcribed, and the prepared voices held (entries, hits, misses)."""
        return {**self._model.describe(), **self._voices.describe()}


class PreparedVoices:
    """Prepared voices by key, at most `capacity`, the least recently used dropped first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._voices: OrderedDict[str, PreparedVoice] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def put(self, key: str, voice: PreparedVoice) -> None:
        with self._lock:
            self._voices[key] = voice
            self._voices.move_to_end(key)
            while len(self._voices) > self.capacity:
                self._voices.popitem(last=False)

    def resolve(self, voice: PreparedVoice | str, fingerprint: str) -> PreparedVoice:
        """The voice a key names (VoiceNotPrepared when not held), or the voice given, which
        is checked to be this model's and then held under its key when it has one."""
        if isinstance(voice, str):
            with self._lock:
                found = self._voices.get(voice)
                if found is None:
                    self.misses += 1
                    raise VoiceNotPrepared(f"no prepared voice {voice!r} here; prepare it again")
                self.hits += 1
                self._voices.move_to_end(voice)
                return found
        if not isinstance(voice, PreparedVoice):
            raise VoiceNotPrepared("expected a PreparedVoice or the key it was prepared under")
        if voice.model != fingerprint:
            raise VoiceNotPrepared("the voice was prepared for another voice model")
        if voice.key:
            self.put(voice.key, voice)
        return voice

    def describe(self) -> dict[str, str]:
        with self._lock:
            return {
                "prepared_voices": str(len(self._voices)),
                "prepared_voice_hits": str(self.hits),
                "prepared_voice_misses": str(self.misses),
            }

"""VoiceCloner deployment: F5-TTS zero-shot voice cloning (+ ASR for missing transcripts)."""

from __future__ import annotations

import numpy as np
from ray import serve

from core import defaults
from core.cpu_priority import yield_cpu
from core.metrics import audio_seconds_produced, voice_synthesis_seconds
from core.types import SynthesizedSpeech, VoiceParams
from deployments.configs import VoiceClonerConfig
from deployments.model_queue import ModelQueue
from deployments.voice_model import VoiceModel


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
            nfe_steps=params.nfe_steps,
            cfg_strength=params.cfg_strength,
            speed=params.speed,
            seed=params.seed,
        )
        voice_synthesis_seconds().observe(speech.elapsed_ms / 1000, tags={"device": self._device})
        audio_seconds_produced().inc(speech.duration_s, tags={})
        return speech

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
        """Which models are loaded, on which device and dtype."""
        return self._model.describe()

"""Plain-Python voice cloner over F5-TTS and a Vocos vocoder (no Ray).

Owns loading the models named by a `VoiceClonerConfig` through f5-tts's own loaders
(`load_model`, `load_vocoder`) from local paths or the hub (`deployments.model_loading`
resolves them), and turning a reference clip, its transcript and a text into seeded,
reproducible speech (`synthesize`). Text is chunked and synthesized the way f5-tts's
`infer_process` does (chunks sized from the reference's speaking rate, `core.voice_cost`;
`infer_batch_process` per chunk, cross-faded), but without temporary files and one chunk at
a time so that a seed fixes every chunk's noise. `transcribe` hands audio to a
`SpeechRecognizer` (Whisper, loaded on first use). Input the model refuses raises
`ModelInputError`: a transcript that cannot match its reference, and a request whose
estimated cost (`core.voice_cost`) is past the config's `limits`, included. Run by a
`ModelQueue`, a synthesis stops between chunks and between model steps once its caller is
cancelled (`CallCancelled`). `synthesize_stream` is the same synthesis chunk by chunk (a
short first chunk, `core.speech_chunks`), each chunk's samples yielded once made and
cross-faded into the next (`CrossFader`). The Ray deployment is a thin shell around
`VoiceModel`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from core.errors import ModelInputError, PreparedForAnotherModel
from core.prepared_voice import FORMAT_VERSION, PreparedVoice, TranscriptSource
from core.resample import resample
from core.types import SpeechChunk, SynthesizedSpeech
from core.voice_cost import (
    CROSS_FADE_SECONDS,
    check_voice_request,
    estimate_voice_cost,
    normalize_ref_text,
    plan_chunks,
)
from deployments.configs import VoiceClonerConfig
from deployments.gpu_budget import apply_memory_budget, loading_within_budget
from deployments.model_loading import (
    pick_device,
    pick_dtype,
    resolve_file,
    resolve_model_files,
    set_torch_threads,
)
from deployments.model_queue import CallCancelled, cancel_flag
from deployments.speech_recognizer import SpeechRecognizer

logger = logging.getLogger(__name__)

Samples = npt.NDArray[np.float32]
BACKBONES = ("DiT", "UNetT", "MMDiT")
MIN_REF_SECONDS = 0.5
MIN_REF_RMS = 1e-4  # about -80 dBFS: quieter than this is silence
# Sampling constants f5-tts's infer_process uses by default.
SWAY_SAMPLING_COEF = -1.0
VOCOS_FILES = ("config.yaml", "pytorch_model.bin")  # what load_vocoder reads from a directory
_CONFIG_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class _Plan:
    """A checked synthesis request, ready for the model."""

    reference: torch.Tensor  # (1, n) float32 at the model rate, trimmed
    ref_text: str  # normalized (ends with sentence punctuation)
    chunks: list[str]
    seed: int
    nfe_steps: int
    cfg_strength: float
    speed: float


class VoiceModel:
    """A loaded F5-TTS voice cloner; `synthesize` / `transcribe` are safe from several threads."""

    def __init__(self, config: VoiceClonerConfig) -> None:
        from f5_tts.infer import utils_infer

        self.config = config
        set_torch_threads(config.torch_threads)
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device)
        apply_memory_budget(self.device, config.gpu_memory_fraction)
        self._utils = utils_infer

        model_cls, arch, self.model_config_path = _load_model_config(config.model_config_name)
        self.checkpoint_path, self.checkpoint_source = resolve_file(config.checkpoint, "checkpoint")
        if config.vocab is None:  # the vocabulary f5-tts's own load_model defaults to
            self.vocab_path = str(files("f5_tts").joinpath("infer/examples/vocab.txt"))
            self.vocab_source = "package"
        else:
            self.vocab_path, self.vocab_source = resolve_file(config.vocab, "vocab")
        self.vocoder_path, self.vocoder_source = resolve_model_files(
            config.vocoder, VOCOS_FILES, "vocoder"
        )
        # Resolved now so a missing local ASR directory fails at start, not on first use.
        self.recognizer = SpeechRecognizer(config.asr_model, self.device, self.dtype)

        with _captured_stdout("loading F5-TTS"):  # f5-tts prints while loading
            # Loaded in float32 on the CPU, then moved: on CUDA load_model would pick fp16
            # itself, before the weights are read, whatever dtype the config asks for.
            model = utils_infer.load_model(
                model_cls,
                arch,
                self.checkpoint_path,
                mel_spec_type="vocos",
                vocab_file=self.vocab_path,
                use_ema=config.use_ema,
                device="cpu",
            )
            vocoder = utils_infer.load_vocoder(
                "vocos", is_local=True, local_path=self.vocoder_path, device=str(self.device)
            )
        budget = loading_within_budget("the voice model", self.device, config.gpu_memory_fraction)
        with budget:
            self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.vocoder = vocoder.eval()  # float32: f5-tts casts the mel to float32 before it
        # One model, one device: one synthesis or transcription at a time.
        self._lock = threading.Lock()
        # The running synthesis's cancel flag, checked before every transformer pass (f5-tts
        # runs the chunk on a thread of its own, so the hook reads it from here).
        self._cancel: threading.Event | None = None
        self.model.transformer.register_forward_pre_hook(self._before_model_step)
        # How often the expensive reference work ran (trimming, ASR): `describe()` shows them.
        self._counts_lock = threading.Lock()
        self._references_prepared = 0
        self._transcriptions = 0

    def warm_up(self) -> float:
        """Synthesize a short phrase from a synthetic one-second reference with 2 steps, so
        that the first request does not pay for lazy initialisation (mel front end, DiT,
        vocoder); returns its milliseconds. The ASR model stays lazy (loaded on first use)."""
        start = time.perf_counter()
        sr = self.sample_rate
        t = np.arange(sr, dtype=np.float32) / sr
        tone = 0.3 * np.sin(2 * np.pi * 220.0 * t) * (1.0 + np.sin(2 * np.pi * 3.0 * t)) / 2
        self.synthesize(tone.astype(np.float32), sr, "warm up.", "warm up.", nfe_steps=2, seed=0)
        return (time.perf_counter() - start) * 1000.0

    @property
    def sample_rate(self) -> int:
        """Output sample rate (24 kHz for the vocos mel front end)."""
        return int(self._utils.target_sample_rate)

    def synthesize(
        self,
        ref_audio: np.ndarray,
        ref_sr: int,
        ref_text: str,
        text: str,
        *,
        nfe_steps: int = 32,
        cfg_strength: float = 2.0,
        speed: float = 1.0,
        seed: int | None = None,
    ) -> SynthesizedSpeech:
        """Speak `text` in the voice of `ref_audio` (whose transcript is `ref_text`).

        The same inputs and seed give identical samples. Empty text or ref_text, a silent or
        too short reference, bad parameters, a transcript whose length cannot match the
        reference, or a cost past `config.limits` raise ModelInputError. Run by a ModelQueue
        whose caller is cancelled, it stops before the next chunk or model step with
        CallCancelled.
        """
        plan = self._plan(
            ref_audio, ref_sr, ref_text, text, nfe_steps, cfg_strength, speed, seed, False
        )
        return self._synthesize(plan)

    def synthesize_voice(
        self,
        voice: PreparedVoice,
        text: str,
        *,
        nfe_steps: int = 32,
        cfg_strength: float = 2.0,
        speed: float = 1.0,
        seed: int | None = None,
    ) -> SynthesizedSpeech:
        """`synthesize` from a reference `prepare_voice` made: no trimming or ASR, and the
        same samples as `synthesize` with the unprepared reference and the same seed. A voice
        prepared by another model raises PreparedForAnotherModel."""
        plan = self._plan_voice(voice, text, nfe_steps, cfg_strength, speed, seed, False)
        return self._synthesize(plan)

    def _synthesize(self, plan: _Plan) -> SynthesizedSpeech:
        cancel = cancel_flag()
        with self._running(cancel):
            start = time.perf_counter()
            waves = [wave for _, wave in self._chunk_waves(plan, cancel)]
            samples = _cross_fade(waves, int(CROSS_FADE_SECONDS * self.sample_rate))
            elapsed_ms = (time.perf_counter() - start) * 1000.0
        sr = self.sample_rate
        return SynthesizedSpeech(
            samples=np.ascontiguousarray(samples, dtype=np.float32),
            sample_rate=sr,
            seed=plan.seed,
            duration_s=samples.shape[0] / sr,
            elapsed_ms=elapsed_ms,
            chunks=len(plan.chunks),
        )

    def synthesize_stream(
        self,
        ref_audio: np.ndarray,
        ref_sr: int,
        ref_text: str,
        text: str,
        *,
        nfe_steps: int = 32,
        cfg_strength: float = 2.0,
        speed: float = 1.0,
        seed: int | None = None,
    ) -> Iterator[SpeechChunk]:
        """`synthesize`, one text chunk at a time: the chunks (`plan_chunks(streaming=True)`:
        a short first one) are spoken with the same reference and seeding, and each chunk's
        samples are yielded as soon as it is made (its last 0.15 s held back for the
        cross-fade with the next). The input is checked now (ModelInputError); the model
        runs while the iterator is consumed, holding the model until it ends or is closed.
        Run by a ModelQueue whose caller is cancelled, it stops before the next chunk or model
        step with CallCancelled."""
        plan = self._plan(
            ref_audio, ref_sr, ref_text, text, nfe_steps, cfg_strength, speed, seed, True
        )
        return self._stream(plan, cancel_flag())

    def synthesize_voice_stream(
        self,
        voice: PreparedVoice,
        text: str,
        *,
        nfe_steps: int = 32,
        cfg_strength: float = 2.0,
        speed: float = 1.0,
        seed: int | None = None,
    ) -> Iterator[SpeechChunk]:
        """`synthesize_stream` from a reference `prepare_voice` made (see `synthesize_voice`)."""
        plan = self._plan_voice(voice, text, nfe_steps, cfg_strength, speed, seed, True)
        return self._stream(plan, cancel_flag())

    @property
    def fingerprint(self) -> str:
        """What a prepared voice depends on: the models, the rate, the trimming, the format.
        A voice prepared under another fingerprint is prepared again."""
        parts = (
            f"f5={self.config.model_config_name}:{self.config.checkpoint}",
            f"asr={self.config.asr_model}",
            f"sr={self.sample_rate}",
            f"ref_s={self.config.max_ref_seconds_used:g}",
            f"v={FORMAT_VERSION}",
        )
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]

    def prepare_voice(
        self,
        ref_audio: np.ndarray,
        ref_sr: int,
        ref_text: str | None = None,
        *,
        ref_text_source: TranscriptSource = "given",
        key: str = "",
    ) -> PreparedVoice:
        """The reference as the model uses it: resampled and trimmed (`prepare_reference`)
        and, without `ref_text`, transcribed by the speech recogniser. An unusable reference
        or no recognised speech raises ModelInputError."""
        reference = self.prepare_reference(ref_audio, ref_sr)
        text = (ref_text or "").strip()
        source: TranscriptSource = ref_text_source
        if not text:
            text = self.transcribe(reference, self.sample_rate).strip()
            source = "asr"
            if not text:
                raise ModelInputError(
                    "no speech was recognised in the reference audio; give its transcript"
                )
        return PreparedVoice(
            samples=reference,
            sample_rate=self.sample_rate,
            ref_text=text,
            ref_text_source=source,
            source_seconds=np.shape(ref_audio)[0] / ref_sr,
            model=self.fingerprint,
            key=key,
        )

    def _stream(self, plan: _Plan, cancel: threading.Event | None) -> Iterator[SpeechChunk]:
        sr = self.sample_rate
        fader = CrossFader(int(CROSS_FADE_SECONDS * sr))
        count = len(plan.chunks)
        with self._running(cancel):
            start = time.perf_counter()
            for index, wave in self._chunk_waves(plan, cancel):
                samples = fader.add(wave)
                if index == count - 1:
                    samples = np.concatenate([samples, fader.flush()])
                yield SpeechChunk(
                    samples=np.ascontiguousarray(samples, dtype=np.float32),
                    sample_rate=sr,
                    seed=plan.seed,
                    index=index,
                    count=count,
                    text=plan.chunks[index],
                    elapsed_ms=(time.perf_counter() - start) * 1000.0,
                )

    def _plan(
        self,
        ref_audio: np.ndarray,
        ref_sr: int,
        ref_text: str,
        text: str,
        nfe_steps: int,
        cfg_strength: float,
        speed: float,
        seed: int | None,
        streaming: bool,
    ) -> _Plan:
        """The checked request: reference at the model rate, chunks, seed (ModelInputError)."""
        seed = self._checked_params(text, ref_text, nfe_steps, cfg_strength, speed, seed)
        reference = self.prepare_reference(ref_audio, ref_sr)
        full_seconds = np.shape(ref_audio)[0] / ref_sr  # what a given transcript may describe
        return self._plan_reference(
            reference, full_seconds, ref_text, text, nfe_steps, cfg_strength, speed, seed, streaming
        )

    def _plan_voice(
        self,
        voice: PreparedVoice,
        text: str,
        nfe_steps: int,
        cfg_strength: float,
        speed: float,
        seed: int | None,
        streaming: bool,
    ) -> _Plan:
        """`_plan` over a prepared reference; one prepared elsewhere raises
        PreparedForAnotherModel."""
        if voice.model != self.fingerprint or voice.sample_rate != self.sample_rate:
            raise PreparedForAnotherModel(
                "the voice was prepared for another voice model; prepare it again"
            )
        checked = self._checked_params(text, voice.ref_text, nfe_steps, cfg_strength, speed, seed)
        reference = _mono_float32(voice.samples, "the prepared voice's samples")
        return self._plan_reference(
            reference,
            voice.source_seconds,
            voice.ref_text,
            text,
            nfe_steps,
            cfg_strength,
            speed,
            checked,
            streaming,
        )

    @staticmethod
    def _checked_params(
        text: str,
        ref_text: str,
        nfe_steps: int,
        cfg_strength: float,
        speed: float,
        seed: int | None,
    ) -> int:
        """The seed to use, once the texts and parameters are checked (ModelInputError)."""
        if not text or not text.strip():
            raise ModelInputError("text must not be empty")
        if not ref_text or not ref_text.strip():
            raise ModelInputError("ref_text must not be empty (transcribe the reference first)")
        if nfe_steps < 1:
            raise ModelInputError(f"nfe_steps must be >= 1, got {nfe_steps}")
        if not speed > 0:
            raise ModelInputError(f"speed must be > 0, got {speed}")
        if not cfg_strength >= 0:
            raise ModelInputError(f"cfg_strength must be >= 0, got {cfg_strength}")
        if seed is None:
            seed = secrets.randbits(63)
        elif not 0 <= seed < 2**63:
            raise ModelInputError(f"seed must be in [0, 2**63), got {seed}")
        return seed

    def _plan_reference(
        self,
        reference: Samples,
        full_seconds: float,
        ref_text: str,
        text: str,
        nfe_steps: int,
        cfg_strength: float,
        speed: float,
        seed: int,
        streaming: bool,
    ) -> _Plan:
        """The plan for a trimmed reference (`full_seconds`: its untrimmed length)."""
        sr = self.sample_rate
        ref_seconds = reference.shape[-1] / sr  # what the model hears
        # infer_process's chunks: the reference's bytes per second times the ~22 s budget.
        chunks = plan_chunks(ref_seconds, ref_text, text, speed, streaming=streaming)
        if not chunks:
            raise ModelInputError("text has nothing to synthesize")
        cost = estimate_voice_cost(
            ref_seconds=ref_seconds,
            ref_text=ref_text,
            text=text,
            nfe_steps=nfe_steps,
            speed=speed,
            cfg_strength=cfg_strength,
            chunks=chunks,
        )
        check_voice_request(cost, ref_text, full_seconds, self.config.limits)
        return _Plan(
            reference=torch.from_numpy(reference).unsqueeze(0),
            ref_text=normalize_ref_text(ref_text),
            chunks=chunks,
            seed=seed,
            nfe_steps=nfe_steps,
            cfg_strength=cfg_strength,
            speed=speed,
        )

    @contextlib.contextmanager
    def _running(self, cancel: threading.Event | None) -> Iterator[None]:
        """The model's turn: its lock, the cancel flag, no autograd, torch's RNG restored."""
        fork_devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with (
            self._lock,
            self._cancelled_by(cancel),
            torch.inference_mode(),
            torch.random.fork_rng(devices=fork_devices),
        ):
            yield

    def _chunk_waves(
        self, plan: _Plan, cancel: threading.Event | None
    ) -> Iterator[tuple[int, Samples]]:
        """(index, wave) of each chunk, synthesized in order (inside `_running`)."""
        sr = self.sample_rate
        for index, chunk in enumerate(plan.chunks):
            if cancel is not None and cancel.is_set():
                raise CallCancelled(
                    f"voice synthesis stopped before chunk {index + 1} of {len(plan.chunks)}: "
                    "its caller went away"
                )
            # f5-tts draws the initial noise from torch's global RNG; seed it per chunk.
            torch.manual_seed((plan.seed + index) % 2**64)
            wave, _, _ = next(
                self._utils.infer_batch_process(
                    (plan.reference, sr),
                    plan.ref_text,
                    [chunk],
                    self.model,
                    self.vocoder,
                    mel_spec_type="vocos",
                    progress=None,
                    cross_fade_duration=CROSS_FADE_SECONDS,
                    nfe_step=plan.nfe_steps,
                    cfg_strength=plan.cfg_strength,
                    sway_sampling_coef=SWAY_SAMPLING_COEF,
                    speed=plan.speed,
                    device=str(self.device),
                )
            )
            yield index, np.asarray(wave, dtype=np.float32).reshape(-1)

    @contextlib.contextmanager
    def _cancelled_by(self, cancel: threading.Event | None) -> Iterator[None]:
        """Let the model-step hook see `cancel` while a synthesis runs (the lock is held)."""
        self._cancel = cancel
        try:
            yield
        except CallCancelled:
            # f5-tts clears the transformer's cached text at the end of a sample, which a
            # stopped one never reaches (the cache is per thread: this is the thread's own)
            self.model.transformer.clear_cache()
            raise
        finally:
            self._cancel = None

    def _before_model_step(self, module: torch.nn.Module, args: Any) -> None:
        """Forward pre-hook of the transformer: stop between model steps once cancelled."""
        cancel = self._cancel
        if cancel is not None and cancel.is_set():
            raise CallCancelled("voice synthesis stopped between model steps: its caller went away")

    def transcribe(self, audio: np.ndarray, sr: int) -> str:
        """Transcribe mono audio at `sr` with the speech recogniser (loaded on first use)."""
        samples = _mono_float32(audio, "audio")
        if sr <= 0:
            raise ModelInputError(f"sample rate must be positive, got {sr}")
        with self._lock:
            with self._counts_lock:
                self._transcriptions += 1
            return self.recognizer.transcribe(samples, sr)

    def describe(self) -> dict[str, str]:
        """Model references, where they came from, device and dtype, for health and info routes."""
        return {
            "model_config": self.config.model_config_name,
            "checkpoint": self.config.checkpoint,
            "checkpoint_source": self.checkpoint_source,
            "vocab": self.config.vocab or "f5-tts default",
            "vocab_source": self.vocab_source,
            "vocoder": self.config.vocoder,
            "vocoder_source": self.vocoder_source,
            "asr_model": self.config.asr_model,
            "asr_source": self.recognizer.source,
            "asr_loaded": str(self.recognizer.loaded).lower(),
            "sample_rate": str(self.sample_rate),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "fingerprint": self.fingerprint,
            "references_prepared": str(self._references_prepared),
            "transcriptions": str(self._transcriptions),
        }

    def prepare_reference(self, ref_audio: np.ndarray, ref_sr: int) -> Samples:
        """Mono float32 at the model rate, trimmed as f5-tts's preprocess_ref_audio_text does."""
        samples = _mono_float32(ref_audio, "ref_audio")
        if ref_sr <= 0:
            raise ModelInputError(f"ref_sr must be positive, got {ref_sr}")
        with self._counts_lock:
            self._references_prepared += 1
        sr = self.sample_rate
        samples = resample(samples, ref_sr, sr)
        trimmed = _trim_reference(samples, sr, self.config.max_ref_seconds_used)
        if trimmed.shape[0] < MIN_REF_SECONDS * sr:  # silence trimming ate it: hard cut instead
            trimmed = samples[: int(self.config.max_ref_seconds_used * sr)]
        if trimmed.shape[0] < MIN_REF_SECONDS * sr:
            raise ModelInputError(f"reference audio is shorter than {MIN_REF_SECONDS} s")
        if float(np.sqrt(np.mean(np.square(trimmed, dtype=np.float64)))) < MIN_REF_RMS:
            raise ModelInputError("reference audio is silent")
        return np.ascontiguousarray(trimmed, dtype=np.float32)


def _load_model_config(name: str) -> tuple[type, dict[str, Any], str]:
    """(backbone class, arch kwargs, yaml path) from an f5-tts config name or yaml path."""
    import f5_tts.model
    from f5_tts.infer import utils_infer
    from omegaconf import OmegaConf

    if name.endswith((".yaml", ".yml")) or "/" in name or name.startswith("~"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model config {name!r} ({path.absolute()}) does not exist")
    else:
        configs = files("f5_tts") / "configs"
        path = Path(str(configs / f"{name}.yaml"))
        if not _CONFIG_NAME_RE.match(name) or not path.is_file():
            known = sorted(
                p.name.removesuffix(".yaml") for p in configs.iterdir() if p.name.endswith(".yaml")
            )
            raise ValueError(f"unknown f5-tts model config {name!r}; known: {known} or a yaml path")
    cfg = OmegaConf.load(path)
    backbone = str(cfg.model.backbone)
    if backbone not in BACKBONES:
        raise ValueError(
            f"model config {name!r}: unknown backbone {backbone!r}; one of {BACKBONES}"
        )
    mel = cfg.model.mel_spec
    expected = {
        "target_sample_rate": utils_infer.target_sample_rate,
        "n_mel_channels": utils_infer.n_mel_channels,
        "hop_length": utils_infer.hop_length,
        "win_length": utils_infer.win_length,
        "n_fft": utils_infer.n_fft,
        "mel_spec_type": "vocos",
    }
    mismatched = {key: mel.get(key) for key, value in expected.items() if mel.get(key) != value}
    if mismatched:
        raise ValueError(
            f"model config {name!r}: mel settings {mismatched} differ from the vocos front end "
            f"f5-tts's loader uses ({expected})"
        )
    arch = OmegaConf.to_container(cfg.model.arch, resolve=True)
    if not isinstance(arch, dict):
        raise ValueError(f"model config {name!r}: model.arch is not a mapping")
    kwargs = {str(key): value for key, value in arch.items()}
    return getattr(f5_tts.model, backbone), kwargs, str(path.absolute())


@contextlib.contextmanager
def _captured_stdout(what: str) -> Iterator[None]:
    """Send library prints to the debug log instead of the process's stdout."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        if buffer.getvalue().strip():
            logger.debug("%s: %s", what, buffer.getvalue().strip())


def _mono_float32(audio: np.ndarray, name: str) -> Samples:
    """Finite, non-empty float32 mono samples; (n, c) input with c <= 8 channels is averaged.

    Anything else raises ModelInputError naming `name`.
    """
    try:
        samples = np.asarray(audio, dtype=np.float32)
    except (TypeError, ValueError):
        raise ModelInputError(f"{name} must be an array of float samples") from None
    if samples.ndim == 2 and samples.shape[1] <= 8:
        samples = samples.mean(axis=1, dtype=np.float32)
    if samples.ndim != 1:
        raise ModelInputError(f"{name} must be mono samples of shape (n,), got {samples.shape}")
    if samples.size == 0:
        raise ModelInputError(f"{name} is empty")
    if not np.isfinite(samples).all():
        raise ModelInputError(f"{name} contains NaN or infinite samples")
    return samples


def _trim_reference(samples: Samples, sr: int, max_seconds: float) -> Samples:
    """Clip to `max_seconds` at silences when possible, strip edge silence, add 50 ms.

    The steps and thresholds of f5-tts's `preprocess_ref_audio_text`, on samples in memory.
    """
    from f5_tts.infer.utils_infer import remove_silence_edges
    from pydub import AudioSegment, silence

    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    audio = AudioSegment(pcm.tobytes(), frame_rate=sr, sample_width=2, channels=1)
    limit_ms = int(max_seconds * 1000)

    def clip_on_silence(min_silence_len: int, silence_thresh: int) -> AudioSegment:
        kept = AudioSegment.silent(duration=0, frame_rate=sr)
        segments = silence.split_on_silence(
            audio,
            min_silence_len=min_silence_len,
            silence_thresh=silence_thresh,
            keep_silence=1000,
            seek_step=10,
        )
        for segment in segments:
            if len(kept) > limit_ms // 2 and len(kept + segment) > limit_ms:
                break
            kept += segment
        return kept

    clipped = clip_on_silence(1000, -50)  # long silences first
    if len(clipped) > limit_ms:
        clipped = clip_on_silence(100, -40)  # then short ones
    if len(clipped) > limit_ms:
        clipped = clipped[:limit_ms]  # no usable silence: hard cut
    clipped = remove_silence_edges(clipped) + AudioSegment.silent(duration=50, frame_rate=sr)
    out = np.array(clipped.get_array_of_samples(), dtype=np.float32) / 32768.0
    return out


class CrossFader:
    """`_cross_fade` one wave at a time: `add` returns what is final so far, holding the last
    `fade_samples` back to fade with the next wave; `flush` returns what is held. The pieces
    together equal `_cross_fade` of all the waves, sample for sample."""

    def __init__(self, fade_samples: int) -> None:
        self.fade_samples = max(fade_samples, 0)
        self._held: Samples | None = None  # the tail of everything so far

    def add(self, wave: Samples) -> Samples:
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        if self._held is None:
            joined = wave
        else:
            held = self._held
            n = min(self.fade_samples, len(held), len(wave))
            if n <= 0:
                joined = np.concatenate([held, wave])
            else:
                overlap = held[-n:] * np.linspace(1, 0, n) + wave[:n] * np.linspace(0, 1, n)
                joined = np.concatenate([held[:-n], overlap.astype(np.float32), wave[n:]])
        keep = min(self.fade_samples, len(joined))
        cut = len(joined) - keep
        self._held = joined[cut:]
        return joined[:cut].astype(np.float32, copy=False)

    def flush(self) -> Samples:
        held, self._held = self._held, None
        if held is None:
            return np.zeros(0, dtype=np.float32)
        return held.astype(np.float32, copy=False)


def _cross_fade(waves: list[Samples], fade_samples: int) -> Samples:
    """Join chunk waves with linear cross-fades (f5-tts's infer_batch_process joining)."""
    final = waves[0]
    for wave in waves[1:]:
        n = min(fade_samples, len(final), len(wave))
        if n <= 0:
            final = np.concatenate([final, wave])
            continue
        overlap = final[-n:] * np.linspace(1, 0, n) + wave[:n] * np.linspace(0, 1, n)
        final = np.concatenate([final[:-n], overlap.astype(np.float32), wave[n:]])
    return final.astype(np.float32, copy=False)

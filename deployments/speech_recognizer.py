"""Speech to text with a Whisper-style model through transformers' ASR pipeline (no Ray).

The model reference is resolved when the recogniser is made, so a missing local directory
fails at start; the pipeline itself loads on the first `transcribe`, as f5-tts does, so a
voice model that is never asked to transcribe never pays for it.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from core.resample import resample
from deployments.model_loading import quiet_progress_bars, resolve_model_ref

SAMPLE_RATE = 16_000  # what Whisper's feature extractor expects
WINDOW_SECONDS = 30  # Whisper's input window; longer audio is chunked by the pipeline


class SpeechRecognizer:
    """A lazily loaded ASR pipeline; `transcribe` is safe from several threads."""

    def __init__(self, model_ref: str, device: torch.device, dtype: torch.dtype) -> None:
        self.model_ref = model_ref
        self.path, is_local = resolve_model_ref(model_ref)
        self.source = "local" if is_local else "hub"
        self.device = device
        # Whisper in half precision on CUDA, float32 on the CPU, as f5-tts does.
        self.dtype = dtype if device.type == "cuda" else torch.float32
        self._pipeline: Any = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the pipeline has been loaded (by a first `transcribe`)."""
        return self._pipeline is not None

    def transcribe(self, samples: npt.NDArray[np.float32], sr: int) -> str:
        """The words spoken in `samples`: finite float32 mono audio at `sr` > 0, which the
        caller has checked (the voice model answers bad input with ModelInputError)."""
        audio = resample(samples, sr, SAMPLE_RATE)
        kwargs: dict[str, Any] = {"generate_kwargs": {"task": "transcribe"}}
        if audio.shape[0] > WINDOW_SECONDS * SAMPLE_RATE:
            # Longer than Whisper's window: the pipeline's 30 s chunking, as f5-tts uses.
            kwargs.update(chunk_length_s=WINDOW_SECONDS, batch_size=8, ignore_warning=True)
        with self._lock:
            pipe = self._load()
            with torch.inference_mode():
                result = pipe({"raw": audio, "sampling_rate": SAMPLE_RATE}, **kwargs)
        return str(result["text"]).strip()

    def _load(self) -> Any:
        """The pipeline, created on first call (the caller holds the lock)."""
        if self._pipeline is None:
            from transformers import pipeline

            with quiet_progress_bars():
                self._pipeline = pipeline(
                    "automatic-speech-recognition",
                    model=self.path,
                    dtype=self.dtype,
                    device=self.device,
                )
        return self._pipeline

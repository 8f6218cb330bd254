"""A saved voice's processed reference, and the small file it is kept in.

Preparing a reference clip for F5-TTS (decode, resample to the model rate, trim at
silences, and transcribe when no transcript is given) costs the same every time for the
same clip, so a saved voice keeps the result: `PreparedVoice` is the trimmed mono audio at
the model's sample rate with its transcript, labelled with what it was made from (its
`key`, which names the voice's version) and for what (the voice model's fingerprint
`model`, the format version). The mel features are not kept: f5-tts's inference
(`infer_batch_process`) takes the waveform and derives the mel, the loudness and the
reference length from it in one step (milliseconds per chunk); handing it a mel would
mean re-writing that function.

`to_bytes` / `from_bytes` write and read it as an uncompressed NumPy `.npz` (no pickle):
`samples` (float32) and `meta` (a JSON string). `from_bytes` refuses anything else with
`BadPreparedVoice`: another format or version, a truncated or foreign file, arrays of the
wrong kind; a reader then rebuilds the voice from its audio.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

FORMAT = "ai-prepared-voice"
FORMAT_VERSION = 1
MAX_SECONDS = 60.0  # far above what a model hears (VOICE_REF_SECONDS_USED is at most 20)
MAX_SAMPLE_RATE = 192_000
MAX_FILE_BYTES = 16 * 1024 * 1024  # what from_bytes reads at most (60 s at 48 kHz, float32)
MAX_TEXT_CHARS = 10_000

TranscriptSource = Literal["given", "stored", "cached", "asr"]


class BadPreparedVoice(ValueError):
    """The bytes are not a prepared voice this code can use."""


@dataclass(frozen=True)
class PreparedVoice:
    """A reference ready for the voice model: `samples` trimmed as the model trims, mono
    float32 at `sample_rate`, whose words are `ref_text` (from `ref_text_source`).

    `source_seconds` is the untrimmed reference's length (what a transcript may describe),
    `model` the fingerprint of the voice model that prepared it (another model prepares
    anew), `key` the name its maker gave it, which changes whenever the voice does (the
    Gateway's is `{voice_id}@{version}`); empty for an unnamed one."""

    samples: np.ndarray = field(repr=False)  # (n,) float32
    sample_rate: int
    ref_text: str
    ref_text_source: TranscriptSource
    source_seconds: float
    model: str
    key: str = ""

    @property
    def seconds(self) -> float:
        """How much reference the model hears."""
        return float(self.samples.shape[0] / self.sample_rate)

    def meta(self) -> dict[str, Any]:
        """Everything but the samples, as JSON-ready values."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "sample_rate": self.sample_rate,
            "ref_text": self.ref_text,
            "ref_text_source": self.ref_text_source,
            "source_seconds": self.source_seconds,
            "model": self.model,
            "key": self.key,
        }

    def to_bytes(self) -> bytes:
        """The `.npz` file's bytes."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            samples=np.ascontiguousarray(self.samples, dtype=np.float32),
            meta=np.array(json.dumps(self.meta(), ensure_ascii=False)),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PreparedVoice:
        """Read what `to_bytes` wrote; BadPreparedVoice for anything else."""
        if len(data) > MAX_FILE_BYTES:
            raise BadPreparedVoice(f"{len(data)} bytes is more than a prepared voice holds")
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                sizes = {info.filename: info.file_size for info in archive.infolist()}
            if set(sizes) != {"samples.npy", "meta.npy"} or sum(sizes.values()) > MAX_FILE_BYTES:
                raise BadPreparedVoice(f"unexpected members {sorted(sizes)}")
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                samples = npz["samples"]
                meta = json.loads(str(npz["meta"][()]))
        except BadPreparedVoice:
            raise
        except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError, TypeError) as exc:
            raise BadPreparedVoice(f"unreadable: {type(exc).__name__}") from None
        return cls._checked(samples, meta)

    @classmethod
    def _checked(cls, samples: np.ndarray, meta: Any) -> PreparedVoice:
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise BadPreparedVoice("not a prepared voice")
        if meta.get("version") != FORMAT_VERSION:
            raise BadPreparedVoice(f"format version {meta.get('version')!r}, not {FORMAT_VERSION}")
        try:
            rate = int(meta["sample_rate"])
            source_seconds = float(meta["source_seconds"])
            ref_text, source = str(meta["ref_text"]), str(meta["ref_text_source"])
            model, key = str(meta["model"]), str(meta["key"])
        except (KeyError, TypeError, ValueError):
            raise BadPreparedVoice("incomplete description") from None
        if not 0 < rate <= MAX_SAMPLE_RATE:
            raise BadPreparedVoice(f"sample rate {rate}")
        if samples.dtype != np.float32 or samples.ndim != 1 or samples.size == 0:
            raise BadPreparedVoice(f"samples of {samples.dtype} {samples.shape}")
        if samples.size > MAX_SECONDS * rate or not np.isfinite(samples).all():
            raise BadPreparedVoice("samples too long or not finite")
        if not ref_text.strip() or len(ref_text) > MAX_TEXT_CHARS:
            raise BadPreparedVoice("no usable transcript")
        if source not in ("given", "stored", "cached", "asr"):
            raise BadPreparedVoice(f"transcript source {source!r}")
        if not 0 < source_seconds <= 3600 or not model:
            raise BadPreparedVoice("bad source length or model")
        return cls(
            samples=samples,
            sample_rate=rate,
            ref_text=ref_text,
            ref_text_source=source,  # type: ignore[arg-type]
            source_seconds=source_seconds,
            model=model,
            key=key,
        )

"""Audio decoding and encoding for the HTTP gateway (no model code).

`decode_audio` turns uploaded bytes into float32 mono samples at one sample rate, refusing
what is not audio (415) and what is too big or too long (413) before decoding more than the
limits allow: a WAV whose header declares an hour is refused from the header alone, and no
decoder ever returns more than `max_seconds` of samples. WAV/FLAC/OGG/MP3/AIFF are read with
soundfile; anything else (m4a/aac/webm/...) goes through an `ffmpeg` subprocess restricted to
local-file input and a whitelist of audio demuxers. `encode_audio` writes mp3 (lameenc),
wav/flac/ogg-vorbis/opus (soundfile), raw pcm; `StreamEncoder` writes mp3, wav (length
unknown in its header) and pcm piece by piece for streamed speech. Rates are changed by
`core.resample`.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import math
import re
import struct
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf

from core.errors import PayloadTooLarge, UnsupportedMediaType
from core.resample import resample

logger = logging.getLogger(__name__)

AudioFormat = Literal["mp3", "wav", "flac", "ogg", "opus", "pcm"]
CONTENT_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "opus": "audio/ogg",
    "pcm": "audio/pcm",  # raw 16-bit little-endian mono, no header (OpenAI's "pcm")
}
# What `StreamEncoder` writes piece by piece (FLAC and Ogg need the whole clip here).
STREAM_FORMATS = ("mp3", "wav", "pcm")

# libsndfile containers decoded in-process; anything else goes to ffmpeg.
SOUNDFILE_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64", "FLAC", "OGG", "MP3", "AIFF"})
# ffmpeg demuxers allowed for the fallback (no playlists, concat scripts, images or devices).
FFMPEG_DEMUXERS = (
    "mov,mp4,m4a,3gp,3g2,mj2,aac,matroska,webm,ogg,mp3,wav,w64,flac,caf,aiff,"
    "amr,amrnb,amrwb,asf,wv,au,tta,ape"
)
FFMPEG_TIMEOUT_S = 30.0
MAX_SOURCE_SAMPLE_RATE = 384_000
_READ_BLOCK_FRAMES = 1 << 16
_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_FFMPEG_INPUT_RE = re.compile(r"Input #0, ([\w,]+), from")


@dataclass(frozen=True)
class DecodedAudio:
    """Decoded upload: float32 mono samples at `sample_rate`, and where they came from."""

    samples: np.ndarray  # (n,) float32
    sample_rate: int
    duration_s: float
    source_format: str  # "wav", "flac", "ogg", "mp3", "aiff", or the ffmpeg demuxer ("m4a", ...)


def decode_audio(
    data: bytes,
    *,
    target_sr: int,
    max_seconds: float,
    max_bytes: int,
    ffmpeg_timeout_s: float = FFMPEG_TIMEOUT_S,
) -> DecodedAudio:
    """Decode `data` to float32 mono at `target_sr`.

    Raises PayloadTooLarge for more than `max_bytes` bytes or more than `max_seconds` of
    audio (checked from the header before samples are read), and UnsupportedMediaType for
    anything that is not decodable audio: empty or garbage bytes, no samples, NaN/inf.
    Silence is accepted.
    """
    if target_sr <= 0 or max_seconds <= 0 or max_bytes <= 0:
        raise ValueError("target_sr, max_seconds and max_bytes must be positive")
    if not data:
        raise UnsupportedMediaType("the audio file is empty")
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the audio file is {len(data)} bytes; the limit is {max_bytes} bytes",
            limit_bytes=max_bytes,
        )
    declared = _declared_wav_seconds(data)
    if declared is not None and declared > max_seconds:
        raise _too_long(declared, max_seconds)

    decoded = _decode_with_soundfile(data, max_seconds)
    if decoded is not None:
        samples, sample_rate, source_format = decoded
    else:
        samples, source_format = _decode_with_ffmpeg(data, target_sr, max_seconds, ffmpeg_timeout_s)
        sample_rate = target_sr

    if samples.size == 0:
        raise UnsupportedMediaType("the audio file contains no samples")
    if not np.isfinite(samples).all():
        raise UnsupportedMediaType("the audio file contains NaN or infinite samples")
    if samples.size > max_seconds * sample_rate:  # ffmpeg stops at max_seconds + 1 s
        raise _too_long(samples.size / sample_rate, max_seconds, at_least=True)
    samples = resample(samples, sample_rate, target_sr)
    return DecodedAudio(
        samples=np.ascontiguousarray(samples, dtype=np.float32),
        sample_rate=target_sr,
        duration_s=samples.size / target_sr,
        source_format=source_format,
    )


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: AudioFormat) -> tuple[bytes, str]:
    """Encode mono samples (clipped to [-1, 1]) as `fmt`; return (bytes, content type).

    mp3 is 128 kbit/s CBR via lameenc, wav and flac are 16-bit PCM, ogg is Vorbis, opus is
    Opus in Ogg, pcm raw 16-bit little-endian samples. Rates the codec cannot take (mp3: MPEG
    rates; opus: 8/12/16/24/48 kHz) are resampled to the next supported rate (at most 48 kHz).
    """
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"unknown audio format {fmt!r}; expected one of {sorted(CONTENT_TYPES)}")
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    audio = np.asarray(samples, dtype=np.float32)
    if audio.ndim == 2 and 1 in audio.shape:
        audio = audio.reshape(-1)
    if audio.ndim != 1:
        raise ValueError(f"expected mono samples of shape (n,), got {audio.shape}")
    if audio.size == 0:
        raise ValueError("cannot encode zero samples")
    audio = np.clip(np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)

    if fmt == "mp3":
        return _encode_mp3(audio, sample_rate), CONTENT_TYPES[fmt]
    if fmt == "pcm":
        return _pcm16(audio), CONTENT_TYPES[fmt]
    buffer = io.BytesIO()
    if fmt == "wav":
        sf.write(buffer, audio, sample_rate, format="WAV", subtype="PCM_16")
    elif fmt == "flac":
        sf.write(buffer, audio, sample_rate, format="FLAC", subtype="PCM_16")
    elif fmt == "ogg":
        sf.write(buffer, audio, sample_rate, format="OGG", subtype="VORBIS")
    else:  # opus
        rate = _supported_rate(sample_rate, _OPUS_RATES)
        audio = np.clip(resample(audio, sample_rate, rate), -1.0, 1.0)
        sf.write(buffer, audio, rate, format="OGG", subtype="OPUS")
    return buffer.getvalue(), CONTENT_TYPES[fmt]


def _too_long(seconds: float, max_seconds: float, *, at_least: bool = False) -> PayloadTooLarge:
    length = f"longer than {max_seconds:g} s" if at_least else f"{seconds:.1f} s long"
    return PayloadTooLarge(
        f"the audio is {length}; the limit is {max_seconds:g} s", limit_seconds=max_seconds
    )


def _declared_wav_seconds(data: bytes) -> float | None:
    """Duration a RIFF/WAVE header declares for its data chunk, or None when not a WAV.

    libsndfile clamps a WAV's frame count to the bytes present, so a header claiming an
    hour followed by a few bytes would pass its check: read the claim ourselves.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, 0
    for _ in range(1000):  # chunk walk; bounded against pathological files
        if pos + 8 > len(data):
            return None
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        if chunk_id == b"fmt " and size >= 16 and body + 16 <= len(data):
            _, _, rate, byte_rate, block_align = struct.unpack_from("<HHIIH", data, body)
            if byte_rate == 0:
                byte_rate = rate * block_align
        elif chunk_id == b"data":
            if byte_rate <= 0 or size == 0xFFFFFFFF:  # unknown rate, or a streaming placeholder
                return None
            return size / byte_rate
        pos = body + size + (size & 1)
    return None


def _decode_with_soundfile(data: bytes, max_seconds: float) -> tuple[np.ndarray, int, str] | None:
    """(mono samples, sample rate, format) via libsndfile; None when libsndfile can't open it."""
    try:
        handle = sf.SoundFile(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - LibsndfileError, RuntimeError, TypeError...: not ours
        return None
    with handle:
        fmt = handle.format
        if fmt not in SOUNDFILE_FORMATS:
            return None
        rate, channels = int(handle.samplerate), int(handle.channels)
        if not 0 < rate <= MAX_SOURCE_SAMPLE_RATE or channels < 1:
            raise UnsupportedMediaType(
                f"unsupported audio parameters: {rate} Hz, {channels} channel(s)"
            )
        limit = math.floor(max_seconds * rate)
        if handle.frames > limit:  # the header's duration, before any sample is read
            raise _too_long(handle.frames / rate, max_seconds)
        blocks: list[np.ndarray] = []
        total = 0
        try:
            while total <= limit:
                block = handle.read(
                    min(_READ_BLOCK_FRAMES, limit + 1 - total), dtype="float32", always_2d=True
                )
                if block.shape[0] == 0:
                    break
                blocks.append(block.mean(axis=1, dtype=np.float32))  # downmix as we go
                total += block.shape[0]
        except sf.LibsndfileError as exc:
            raise UnsupportedMediaType(f"the {fmt} audio is corrupt: {exc}") from None
        if total > limit:  # the header understated the length
            raise _too_long(total / rate, max_seconds, at_least=True)
    samples = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    return samples, rate, fmt.lower()


def _decode_with_ffmpeg(
    data: bytes, target_sr: int, max_seconds: float, timeout_s: float
) -> tuple[np.ndarray, str]:
    """Decode with the ffmpeg CLI: (f32 mono samples at `target_sr`, source format name).

    At most max_seconds + 1 s is decoded, so an over-long file is caught without decoding
    it all. The input goes through a private temporary file rather than stdin: MP4/M4A files
    with the index (moov) at the end, the usual layout, cannot be demuxed from a pipe.
    """
    with tempfile.TemporaryDirectory(prefix="audio-decode-") as tmp:
        path = Path(tmp) / "input"
        path.write_bytes(data)
        command = [
            "ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-loglevel", "info",
            "-threads", "1",  # one core per decode; AUDIO_DECODE_WORKERS bounds how many
            "-protocol_whitelist", "file", "-format_whitelist", FFMPEG_DEMUXERS,
            "-i", str(path),
            "-map", "0:a:0", "-vn", "-sn", "-dn",
            "-ac", "1", "-ar", str(target_sr), "-t", f"{max_seconds + 1:g}",
            "-f", "f32le", "-c:a", "pcm_f32le", "pipe:1",
        ]  # fmt: skip
        try:
            result = subprocess.run(  # fixed argv, no shell
                command, capture_output=True, timeout=timeout_s, check=False
            )
        except FileNotFoundError:
            logger.warning("ffmpeg is not installed; only WAV/FLAC/OGG/MP3/AIFF can be decoded")
            raise UnsupportedMediaType(
                "unsupported audio format (accepted: WAV, FLAC, OGG, MP3, AIFF)"
            ) from None
        except subprocess.TimeoutExpired:
            raise UnsupportedMediaType(
                f"the audio could not be decoded within {timeout_s:g} s"
            ) from None
        stderr = result.stderr.decode("utf-8", "replace").replace(str(path), "input")
    if result.returncode != 0:
        raise UnsupportedMediaType(
            "the file is not audio in a supported format",
            reason=_last_error_line(stderr),
        )
    match = _FFMPEG_INPUT_RE.search(stderr)
    demuxer = match.group(1).split(",")[0] if match else "unknown"
    source_format = {"mov": "m4a", "matroska": "webm"}.get(demuxer, demuxer)
    usable = len(result.stdout) - len(result.stdout) % 4
    samples = np.frombuffer(result.stdout[:usable], dtype="<f4").astype(np.float32)
    return samples, source_format


def _last_error_line(stderr: str) -> str:
    """The last non-empty line of ffmpeg's stderr, trimmed to a short reason."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "ffmpeg failed"


def _supported_rate(rate: int, supported: tuple[int, ...]) -> int:
    """`rate` if supported, else the smallest supported rate above it, else the largest."""
    if rate in supported:
        return rate
    return next((r for r in supported if r > rate), supported[-1])


def _encode_mp3(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono 16-bit 128 kbit/s CBR MP3 at `sample_rate` (or the next MPEG rate)."""
    rate = _supported_rate(sample_rate, _MP3_RATES)
    if rate != sample_rate:
        audio = np.clip(resample(audio, sample_rate, rate), -1.0, 1.0)
    encoder = _mp3_encoder(rate)
    return bytes(encoder.encode(_pcm16(audio)) + encoder.flush())


def _mp3_encoder(rate: int) -> Any:
    import lameenc

    encoder = lameenc.Encoder()
    encoder.set_bit_rate(128)
    encoder.set_in_sample_rate(rate)
    encoder.set_out_sample_rate(rate)
    encoder.set_channels(1)
    encoder.set_quality(2)
    return encoder


def _pcm16(audio: np.ndarray) -> bytes:
    return bytes(np.round(audio * 32767.0).astype("<i2").tobytes())


def _streaming_wav_header(sample_rate: int) -> bytes:
    """A 16-bit mono PCM WAV header whose sizes say "unknown" (0xFFFFFFFF): the length of a
    stream is not known when it starts; readers take the data up to the end of the file."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return (
        b"RIFF" + struct.pack("<I", unknown) + b"WAVE"
        + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"data" + struct.pack("<I", unknown)
    )  # fmt: skip


class StreamEncoder:
    """Encodes speech piece by piece as it arrives: `encode` returns the bytes ready so far
    (the first call's include the WAV header), `finish` the rest (the MP3 encoder's last
    frames). The bytes of all calls together are one playable file or PCM stream. One
    encoder per stream; formats: STREAM_FORMATS."""

    def __init__(self, fmt: AudioFormat, sample_rate: int) -> None:
        if fmt not in STREAM_FORMATS:
            raise ValueError(f"cannot stream {fmt!r}; one of {STREAM_FORMATS}")
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {sample_rate}")
        self.fmt, self.sample_rate = fmt, sample_rate
        self.content_type = CONTENT_TYPES[fmt]
        self._rate = _supported_rate(sample_rate, _MP3_RATES) if fmt == "mp3" else sample_rate
        self._mp3 = _mp3_encoder(self._rate) if fmt == "mp3" else None
        self._started = False

    def encode(self, samples: np.ndarray) -> bytes:
        audio = np.clip(
            np.nan_to_num(np.asarray(samples, dtype=np.float32).reshape(-1), nan=0.0),
            -1.0,
            1.0,
        )
        head = b""
        if not self._started:
            self._started = True
            head = _streaming_wav_header(self.sample_rate) if self.fmt == "wav" else b""
        if audio.size == 0:
            return head
        if self._mp3 is None:
            return head + _pcm16(audio)
        if self._rate != self.sample_rate:  # per piece: the model's 24 kHz needs none
            audio = np.clip(resample(audio, self.sample_rate, self._rate), -1.0, 1.0)
        return bytes(self._mp3.encode(_pcm16(audio)))

    def finish(self) -> bytes:
        head = self.encode(np.zeros(0, dtype=np.float32)) if not self._started else b""
        return head + (bytes(self._mp3.flush()) if self._mp3 is not None else b"")


class AudioDecoder:
    """Decodes on a bounded pool of its own (AUDIO_DECODE_WORKERS), apart from the threads that
    do storage I/O, so a burst of uploads cannot take every thread of the Gateway."""

    def __init__(self, workers: int):
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="audio-decode")

    async def decode(self, data: bytes, **options: Any) -> DecodedAudio:
        """`decode_audio(data, **options)` on the pool; waits its turn when all workers are busy."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(decode_audio, data, **options)
        )

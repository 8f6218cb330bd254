"""Audio decoding and encoding for the gateway: formats, limits and what is refused; and the
one resampler (`core.resample`) the gateway and the voice model share."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from core.errors import PayloadTooLarge, UnsupportedMediaType
from core.resample import resample
from serve_app.audio import CONTENT_TYPES, DecodedAudio, decode_audio, encode_audio

SR = 24_000
LIMITS = {"target_sr": SR, "max_seconds": 30.0, "max_bytes": 10_000_000}
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def tone(seconds: float, sr: int = SR, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_bytes(samples: np.ndarray, sr: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, sr, format="WAV", subtype=subtype)
    return buffer.getvalue()


def make_m4a(path: Path, seconds: float) -> bytes:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"sine=frequency=440:duration={seconds}:sample_rate=44100",
         "-c:a", "aac", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    return path.read_bytes()


@pytest.mark.parametrize("fmt", ["mp3", "wav", "flac", "ogg", "opus"])
def test_round_trip_keeps_rate_and_duration(fmt: str) -> None:
    data, content_type = encode_audio(tone(1.5), SR, fmt)
    assert content_type == CONTENT_TYPES[fmt]
    decoded = decode_audio(data, **LIMITS)
    assert isinstance(decoded, DecodedAudio)
    assert decoded.sample_rate == SR
    assert decoded.samples.dtype == np.float32 and decoded.samples.ndim == 1
    assert decoded.duration_s == pytest.approx(1.5, abs=0.1)
    assert decoded.duration_s == pytest.approx(decoded.samples.size / SR)
    assert decoded.source_format == ("ogg" if fmt == "opus" else fmt)
    assert 0.3 < float(np.abs(decoded.samples).max()) <= 1.0


def test_decode_resamples_to_target_rate() -> None:
    decoded = decode_audio(wav_bytes(tone(1.0, sr=16_000), 16_000), **LIMITS)
    assert decoded.sample_rate == SR
    assert decoded.samples.size == pytest.approx(SR, abs=2)


def test_stereo_44k_becomes_mono_24k() -> None:
    left = tone(1.0, sr=44_100)
    stereo = np.stack([left, left], axis=1)
    decoded = decode_audio(wav_bytes(stereo, 44_100), **LIMITS)
    assert decoded.samples.ndim == 1
    assert decoded.sample_rate == SR
    assert decoded.duration_s == pytest.approx(1.0, abs=0.01)
    assert float(np.abs(decoded.samples).max()) == pytest.approx(0.5, abs=0.02)


def test_silence_is_fine() -> None:
    decoded = decode_audio(wav_bytes(np.zeros(SR, np.float32), SR), **LIMITS)
    assert decoded.duration_s == pytest.approx(1.0)
    assert not decoded.samples.any()


@needs_ffmpeg
def test_m4a_decodes_through_ffmpeg(tmp_path: Path) -> None:
    decoded = decode_audio(make_m4a(tmp_path / "clip.m4a", 1.0), **LIMITS)
    assert decoded.source_format == "m4a"
    assert decoded.sample_rate == SR
    assert decoded.duration_s == pytest.approx(1.0, abs=0.1)
    assert float(np.abs(decoded.samples).max()) > 0.1


@needs_ffmpeg
def test_long_m4a_is_refused(tmp_path: Path) -> None:
    data = make_m4a(tmp_path / "long.m4a", 3.0)
    with pytest.raises(PayloadTooLarge, match="longer than 2 s"):
        decode_audio(data, target_sr=SR, max_seconds=2.0, max_bytes=10_000_000)


def test_hour_long_wav_header_is_refused_without_reading() -> None:
    frames = 3600 * SR
    header = (
        b"RIFF" + struct.pack("<I", 36 + frames * 2) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, SR, SR * 2, 2, 16)
        + b"data" + struct.pack("<I", frames * 2)
    )  # fmt: skip
    assert len(header) == 44
    start = time.perf_counter()
    with pytest.raises(PayloadTooLarge, match="3600") as info:
        decode_audio(header + b"\x00" * 64, **LIMITS)
    assert time.perf_counter() - start < 10  # nothing is decoded: far from an hour of audio
    assert info.value.details["limit_seconds"] == 30.0


def test_long_flac_is_refused_from_its_header() -> None:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(40 * SR, np.float32), SR, format="FLAC")  # 40 s of silence, tiny
    with pytest.raises(PayloadTooLarge, match="40.0 s"):
        decode_audio(buffer.getvalue(), **LIMITS)


def test_too_many_bytes_is_refused() -> None:
    data = wav_bytes(tone(1.0), SR)
    with pytest.raises(PayloadTooLarge, match="bytes"):
        decode_audio(data, target_sr=SR, max_seconds=30.0, max_bytes=len(data) - 1)


def png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"this is a plain text file, not audio\n" * 20,
        pytest.param(png_bytes(), id="png"),
        pytest.param(np.random.default_rng(0).bytes(4096), id="garbage"),
        pytest.param(wav_bytes(tone(1.0), SR)[:30], id="truncated-wav"),
    ],
)
def test_not_audio_is_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType):
        decode_audio(data, **LIMITS)


def test_zero_length_audio_is_unsupported() -> None:
    with pytest.raises(UnsupportedMediaType, match="no samples"):
        decode_audio(wav_bytes(np.zeros(0, np.float32), SR), **LIMITS)


def test_nan_samples_are_unsupported() -> None:
    samples = np.full(100, np.nan, np.float32)
    with pytest.raises(UnsupportedMediaType, match="NaN"):
        decode_audio(wav_bytes(samples, SR, subtype="FLOAT"), **LIMITS)


@pytest.mark.parametrize("rate", [24_000, 23_000])
def test_mp3_output_decodes_with_soundfile(rate: int) -> None:
    data, content_type = encode_audio(tone(1.0, sr=rate), rate, "mp3")
    assert content_type == "audio/mpeg"
    info = sf.info(io.BytesIO(data))
    assert info.format == "MP3"
    assert info.channels == 1
    assert info.samplerate == 24_000  # 23 kHz is not an MPEG rate: the next one up
    assert info.duration == pytest.approx(1.0, abs=0.1)


def test_encode_clips_to_unit_range() -> None:
    data, _ = encode_audio(np.full(SR, 2.0, np.float32), SR, "wav")
    samples, _ = sf.read(io.BytesIO(data), dtype="float32")
    assert float(samples.max()) <= 1.0
    assert float(samples.max()) > 0.99


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        encode_audio(np.zeros(0, np.float32), SR, "wav")
    with pytest.raises(ValueError):
        encode_audio(np.zeros((2, 100), np.float32), SR, "wav")
    with pytest.raises(ValueError):
        encode_audio(np.zeros(100, np.float32), SR, "aiff")  # type: ignore[arg-type]


def _tone_error_db(samples: np.ndarray, freq: float, sr: int) -> float:
    """RMS distance (dB below the amplitude) of the middle half from the best-fitting tone."""
    t = np.arange(samples.size) / sr
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    middle = slice(samples.size // 4, 3 * samples.size // 4)
    coef, *_ = np.linalg.lstsq(basis[middle], samples[middle], rcond=None)
    residual = samples[middle] - basis[middle] @ coef
    return float(20 * np.log10(np.sqrt(np.mean(residual**2)) / np.hypot(*coef)))


@pytest.mark.parametrize(
    ("source", "target"), [(16_000, 24_000), (44_100, 24_000), (24_000, 16_000)]
)
def test_resample_keeps_tones_clean(source: int, target: int) -> None:
    freq = 0.4 * min(source, target)  # near the top of the shared band
    out = resample(tone(1.0, sr=source, freq=freq), source, target)
    assert out.dtype == np.float32 and out.shape == (target,)
    assert _tone_error_db(out, freq, target) < -100


def test_resample_removes_what_the_new_rate_cannot_hold() -> None:
    out = resample(tone(1.0, sr=48_000, freq=13_200), 48_000, 24_000)  # above 12 kHz
    assert float(np.sqrt(np.mean(out[6000:18000] ** 2))) < 1e-4


def test_resample_at_the_same_rate_is_a_no_op() -> None:
    samples = tone(0.1)
    assert resample(samples, SR, SR) is samples
    assert resample(samples.astype(np.float64), SR, SR).dtype == np.float32


def test_resample_refuses_bad_rates_and_channels() -> None:
    with pytest.raises(ValueError, match="positive"):
        resample(tone(0.1), 0, SR)
    with pytest.raises(ValueError, match="mono"):
        resample(np.zeros((10, 2), np.float32), SR, 16_000)

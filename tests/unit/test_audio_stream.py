"""StreamEncoder: audio encoded piece by piece is one playable file (or PCM stream)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from serve_app.audio import STREAM_FORMATS, StreamEncoder, encode_audio

SR = 24_000


def pieces() -> list[np.ndarray]:
    t = np.arange(SR * 2) / SR
    wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return [wave[:7000], wave[7000:7001], wave[7001:30000], np.zeros(0, np.float32), wave[30000:]]


@pytest.mark.parametrize("fmt", STREAM_FORMATS)
def test_pieces_make_one_stream(fmt: str) -> None:
    encoder = StreamEncoder(fmt, SR)  # type: ignore[arg-type]
    parts = [encoder.encode(p) for p in pieces()] + [encoder.finish()]
    data = b"".join(parts)
    if fmt == "pcm":
        assert encoder.content_type == "audio/pcm"
        samples = np.frombuffer(data, "<i2").astype(np.float32) / 32767
        whole, _ = encode_audio(np.concatenate(pieces()), SR, "pcm")
        assert data == whole  # raw samples: the same bytes as the whole clip
    else:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32")
        assert rate == SR
    assert abs(samples.size - 2 * SR) <= 2000  # mp3 adds encoder delay and padding
    assert np.abs(samples).max() > 0.2
    if fmt != "mp3":
        assert parts[0]  # the first piece goes out at once (mp3 may buffer a frame)


def test_wav_header_says_the_length_is_unknown() -> None:
    data = StreamEncoder("wav", SR).encode(np.zeros(10, np.float32))
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert data[4:8] == b"\xff\xff\xff\xff" and data[40:44] == b"\xff\xff\xff\xff"
    assert len(data) == 44 + 20


def test_formats_that_need_the_whole_clip_cannot_stream() -> None:
    with pytest.raises(ValueError, match="cannot stream"):
        StreamEncoder("flac", SR)

"""The voice module over real HTTP through Serve: tiny F5-TTS + vocos + Whisper, S3 on loopback."""

from __future__ import annotations

import io
import struct
import subprocess
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from serve_app.audio import encode_audio
from tests.integration.conftest import VoiceApp

SR = 24_000


def reference_audio(seconds: float = 2.0, seed: int = 0, fmt: str = "mp3") -> bytes:
    """A voiced-sounding test clip: a few harmonics with vibrato and some noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    pitch = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2
    wave += rng.normal(0, 0.01, t.shape)
    data, _ = encode_audio(wave.astype(np.float32), SR, fmt)
    return data


def post_voice(app: VoiceApp, ref: bytes, **fields: str) -> httpx.Response:
    return httpx.post(
        f"{app.url}/v1/voice/generate",
        files={"ref_audio": ("ref.mp3", ref)},
        data=fields,
        timeout=120,
    )


def decode(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    return samples, rate


def test_seed_multipart_curl_returns_mp3(voice_app: VoiceApp, tmp_path: Path) -> None:
    ref = tmp_path / "ref.mp3"
    ref.write_bytes(reference_audio())
    out = tmp_path / "voice.mp3"
    subprocess.run(
        [
            "curl",
            "-sf",
            "-F",
            f"ref_audio=@{ref}",
            "-F",
            "ref_text=안녕",
            "-F",
            "text=반가워",
            f"{voice_app.url}/v1/voice/generate",
            "--output",
            str(out),
        ],
        check=True,
        timeout=120,
    )
    info = sf.info(str(out))
    assert info.format == "MP3"
    assert info.samplerate == SR
    assert info.duration > 0.1
    samples, _ = decode(out.read_bytes())
    assert np.isfinite(samples).all() and np.abs(samples).max() > 0


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [
        ("wav", "audio/wav"),
        ("flac", "audio/flac"),
        ("ogg", "audio/ogg"),
        ("mp3", "audio/mpeg"),
    ],
)
def test_formats(voice_app: VoiceApp, fmt: str, content_type: str) -> None:
    response = post_voice(
        voice_app, reference_audio(), ref_text="hello", text="hi there", format=fmt, seed="3"
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == content_type
    samples, rate = decode(response.content)
    assert rate == SR and samples.size > 0
    assert response.headers["x-seed"] == "3"
    assert float(response.headers["x-audio-duration"]) == pytest.approx(samples.size / SR, rel=0.05)


def test_same_seed_same_audio(voice_app: VoiceApp) -> None:
    ref = reference_audio(seed=1)
    fields = {"ref_text": "hello", "text": "the same words", "format": "wav", "seed": "11"}
    first, second = post_voice(voice_app, ref, **fields), post_voice(voice_app, ref, **fields)
    other = post_voice(voice_app, ref, **{**fields, "seed": "12"})
    assert first.content == second.content
    assert decode(first.content)[0].tolist() != decode(other.content)[0].tolist()


def test_stored_reference_is_transcribed_once(voice_app: VoiceApp) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    s3 = voice_app.s3_client()
    ref = reference_audio(seconds=2.5, seed=2)
    s3.put_object(Bucket=voice_app.bucket, Key=f"AI/VOICE/{user}.mp3", Body=ref)
    first = httpx.post(
        f"{voice_app.url}/v1/r2/voice/generate",
        json={"user_id": user, "text": "반가워"},
        timeout=120,
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["ref_text_source"] == "asr"
    assert body["sample_rate"] == SR and body["duration_s"] > 0
    stored = s3.get_object(Bucket=voice_app.bucket, Key=body["key"])
    assert stored["ContentType"] == "audio/mpeg"
    assert sf.info(io.BytesIO(stored["Body"].read())).samplerate == SR
    assert body["key"].startswith(f"AI/VOICE/generated/{user}/")
    # This server's storage route hands out the same file as a redirect or as its link.
    route = f"{voice_app.url}/v1/storage/{body['key']}"
    redirect = httpx.get(route)
    assert redirect.status_code == 307
    link = httpx.get(route, params={"redirect": "false"})
    assert link.status_code == 200 and list(link.json()) == ["url"]
    assert httpx.get(link.json()["url"]).content == httpx.get(redirect.headers["location"]).content

    second = httpx.post(
        f"{voice_app.url}/v1/r2/voice/generate",
        json={"user_id": user, "text": "또 만나요"},
        timeout=120,
    ).json()
    assert second["ref_text_source"] == "cached"
    assert second["ref_text"] == body["ref_text"]
    transcripts = s3.list_objects_v2(Bucket=voice_app.bucket, Prefix="AI/VOICE/transcripts/")
    assert len([o for o in transcripts.get("Contents", [])]) >= 1


def test_transcript_beside_the_reference_wins(voice_app: VoiceApp) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    s3 = voice_app.s3_client()
    s3.put_object(Bucket=voice_app.bucket, Key=f"AI/VOICE/{user}.mp3", Body=reference_audio(seed=3))
    s3.put_object(Bucket=voice_app.bucket, Key=f"AI/VOICE/{user}.txt", Body="안녕하세요".encode())
    body = httpx.post(
        f"{voice_app.url}/v1/r2/voice/generate",
        json={"user_id": user, "text": "반가워", "format": "wav"},
        timeout=120,
    ).json()
    assert (body["ref_text_source"], body["ref_text"]) == ("stored", "안녕하세요")
    assert body["key"].endswith(".wav") and body["content_type"] == "audio/wav"


def test_unknown_user_is_404_naming_the_key(voice_app: VoiceApp) -> None:
    response = httpx.post(
        f"{voice_app.url}/v1/r2/voice/generate", json={"user_id": "nobody-here", "text": "hi"}
    )
    assert response.status_code == 404
    assert "AI/VOICE/nobody-here.mp3" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "user_id", ["../x", "a/b", "", "x" * 200, "..", ".hidden", "a..b", "a\x00b"]
)
def test_user_id_tricks_are_422(voice_app: VoiceApp, user_id: str) -> None:
    response = httpx.post(
        f"{voice_app.url}/v1/r2/voice/generate", json={"user_id": user_id, "text": "hi"}
    )
    assert response.status_code == 422
    assert "user_id" in response.json()["error"]["message"]


def hour_long_wav_header() -> bytes:
    rate, seconds = SR, 3600
    data_bytes = rate * 2 * seconds
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return header + b"data" + struct.pack("<I", data_bytes) + b"\x00" * 4096


@pytest.mark.parametrize(
    ("ref", "status"),
    [
        (b"this is a text file, not audio", 415),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, 415),
        (b"", 415),
        (hour_long_wav_header(), 413),
        (b"\x00" * (3 * 1024 * 1024), 413),  # over VOICE_MAX_REF_BYTES (2 MiB here)
    ],
)
def test_bad_references(voice_app: VoiceApp, ref: bytes, status: int) -> None:
    response = post_voice(voice_app, ref, ref_text="hi", text="hello")
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"ref_text": "hi", "text": ""}, "text"),
        ({"ref_text": "hi", "text": "   "}, "text"),
        ({"ref_text": "hi", "text": "x" * 600}, "text"),  # VOICE_MAX_TEXT_CHARS=500 here
        ({"ref_text": "hi"}, "text"),
        ({"ref_text": "hi", "text": "ok", "format": "aiff"}, "format"),
        ({"ref_text": "hi", "text": "ok", "speed": "9"}, "speed"),
    ],
)
def test_bad_text_fields_are_422(voice_app: VoiceApp, fields: dict, field: str) -> None:
    response = post_voice(voice_app, reference_audio(), **fields)
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]["message"]


def test_missing_reference_file_is_422(voice_app: VoiceApp) -> None:
    response = httpx.post(
        f"{voice_app.url}/v1/voice/generate", data={"text": "hi"}, files={"other": ("x", b"x")}
    )
    assert response.status_code == 422
    assert "ref_audio" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "body", [{"user_id": "u", "text": ""}, {"user_id": "u"}, {"user_id": "u", "text": "x" * 600}]
)
def test_bad_json_text_is_422(voice_app: VoiceApp, body: dict) -> None:
    response = httpx.post(f"{voice_app.url}/v1/r2/voice/generate", json=body)
    assert response.status_code == 422


def test_a_model_that_fails_to_load_answers_503_with_the_reason(
    serve_url: str, tiny_models_dir: Path, tmp_path: Path
) -> None:
    from ray import serve

    from serve_app.app import build_app
    from tests.integration.conftest import voice_settings

    settings = {
        "IMAGE_ENABLED": False,
        "IMAGE_SEARCH_ENABLED": False,
        "LOCAL_STORAGE_DIR": str(tmp_path / "storage"),
        **voice_settings(tiny_models_dir),
        "VOICE_CHECKPOINT": str(tmp_path / "missing" / "model.safetensors"),
    }
    try:
        serve.run(
            build_app({"env_files": [], "settings": settings}),
            name="voice-broken",
            route_prefix="/voice-broken",
        )
    except Exception:  # noqa: BLE001 - Serve reports the failed deployment; the app stays up
        pass
    url = f"{serve_url}/voice-broken"
    try:
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        ready = httpx.get(f"{url}/readyz", timeout=30)
        assert ready.status_code == 503
        voice = ready.json()["modules"]["voice"]
        assert voice["state"] == "failed"
        assert "model.safetensors" in voice["reason"]
        response = post_voice(VoiceApp(url, "", ""), reference_audio(), ref_text="a", text="b")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "model_not_ready"
        assert "failed" in response.json()["error"]["message"]
    finally:
        serve.delete("voice-broken")

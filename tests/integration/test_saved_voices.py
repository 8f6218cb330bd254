"""Saved voices (PUT/GET/DELETE /v1/voices/{id}) and OpenAI's /v1/audio/speech using them."""

from __future__ import annotations

import io
import uuid

import httpx
import openai
import pytest
import soundfile as sf

from tests.integration.conftest import VoiceApp
from tests.integration.test_voice_routes import reference_audio


def put_voice(
    app: VoiceApp, voice_id: str, audio: bytes, transcript: str | None = None, name: str = "ref.wav"
) -> httpx.Response:
    data = {"transcript": transcript} if transcript is not None else {}
    return httpx.put(
        f"{app.url}/v1/voices/{voice_id}", files={"audio": (name, audio)}, data=data, timeout=60
    )


def client(app: VoiceApp) -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", base_url=f"{app.url}/v1", max_retries=0, timeout=120)


def test_saved_voice_lifecycle_and_use(voice_app: VoiceApp) -> None:
    voice_id = f"narrator-{uuid.uuid4().hex[:6]}"
    created = put_voice(voice_app, voice_id, reference_audio(fmt="wav"), "안녕하세요")
    assert created.status_code == 201, created.text
    assert created.json()["key"] == f"AI/VOICE/{voice_id}.mp3"
    stored = voice_app.s3_client().get_object(
        Bucket=voice_app.bucket, Key=f"AI/VOICE/{voice_id}.mp3"
    )
    assert stored["ContentType"] == "audio/mpeg"
    assert sf.info(io.BytesIO(stored["Body"].read())).format == "MP3"  # converted from WAV

    got = httpx.get(f"{voice_app.url}/v1/voices/{voice_id}").json()
    assert got["transcript"] == "안녕하세요"

    replaced = put_voice(voice_app, voice_id, reference_audio(seed=5, fmt="mp3"), name="r.mp3")
    assert replaced.status_code == 200 and replaced.json()["created"] is False
    assert httpx.get(f"{voice_app.url}/v1/voices/{voice_id}").json()["transcript"] is None

    put_voice(voice_app, voice_id, reference_audio(fmt="wav"), "안녕하세요")
    body = httpx.post(
        f"{voice_app.url}/v1/r2/voice/generate",
        json={"user_id": voice_id, "text": "반가워"},
        timeout=120,
    ).json()
    assert body["ref_text_source"] == "stored" and body["ref_text"] == "안녕하세요"

    speech = client(voice_app).audio.speech.create(
        model="f5-tts",
        voice=voice_id,
        input="hello there",
        response_format="wav",
        extra_body={"seed": 4},
    )
    samples, rate = sf.read(io.BytesIO(speech.read()))
    assert rate == 24_000 and samples.size > 0

    opus = client(voice_app).audio.speech.create(
        model="f5-tts", voice=voice_id, input="hello", response_format="opus"
    )
    assert sf.info(io.BytesIO(opus.read())).format == "OGG"

    assert httpx.delete(f"{voice_app.url}/v1/voices/{voice_id}").status_code == 200
    assert httpx.delete(f"{voice_app.url}/v1/voices/{voice_id}").status_code == 404
    assert httpx.get(f"{voice_app.url}/v1/voices/{voice_id}").status_code == 404
    with pytest.raises(openai.NotFoundError):
        client(voice_app).audio.speech.create(model="f5-tts", voice=voice_id, input="hi")


@pytest.mark.parametrize("voice_id", ["%2e%2e", "a..b", "x" * 200, "bad%00id", ".hidden"])
def test_bad_voice_ids(voice_app: VoiceApp, voice_id: str) -> None:
    response = put_voice(voice_app, voice_id, reference_audio())
    assert response.status_code == 422
    assert response.json()["error"]["message"]


def test_non_audio_voice_is_415(voice_app: VoiceApp) -> None:
    response = put_voice(voice_app, "not-audio", b"plain text, honestly", name="a.mp3")
    assert response.status_code == 415
    assert httpx.get(f"{voice_app.url}/v1/voices/not-audio").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"model": "x", "voice": "v", "input": ""},
        {"model": "x", "voice": "../v", "input": "hi"},
        {"model": "x", "voice": "v", "input": "hi", "response_format": "aac"},
    ],
)
def test_bad_speech_requests_are_422(voice_app: VoiceApp, body: dict) -> None:
    response = httpx.post(f"{voice_app.url}/v1/audio/speech", json=body)
    assert response.status_code == 422, response.text

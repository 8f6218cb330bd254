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
    # Listed (S3's delimiter listing: the transcript beside it and generated speech are not).
    listed: dict[str, dict] = {}
    cursor = None
    while True:
        params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{voice_app.url}/v1/voices", params=params, timeout=30).json()
        listed.update((item["voice_id"], item) for item in page["items"])
        if (cursor := page["next_cursor"]) is None:
            break
    assert listed[voice_id]["bytes"] == stored["ContentLength"]
    assert not any(name.endswith((".txt", ".mp3")) or "/" in name for name in listed)

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


def cloner_counts() -> dict[str, int]:
    """The VoiceCloner's counters (references trimmed, ASR runs, prepared voices held)."""
    from ray import serve

    from deployments.api import VOICE_CLONER

    info = serve.get_deployment_handle(VOICE_CLONER, app_name="voice").describe.remote()
    described = info.result(timeout_s=60)
    names = ("references_prepared", "transcriptions", "prepared_voice_hits")
    return {name: int(described[name]) for name in names}


def prepared_file(app: VoiceApp, voice_id: str) -> bytes | None:
    s3 = app.s3_client()
    try:
        got = s3.get_object(Bucket=app.bucket, Key=f"AI/VOICE/{voice_id}.voice.npz")
    except s3.exceptions.NoSuchKey:
        return None
    data: bytes = got["Body"].read()
    return data


def generate(app: VoiceApp, voice_id: str, seed: int = 1) -> dict:
    response = httpx.post(
        f"{app.url}/v1/r2/voice/generate",
        json={"user_id": voice_id, "text": "Nice to meet you.", "seed": seed},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body: dict = response.json()
    return body


def test_a_saved_voice_is_prepared_once_and_again_when_it_changes(voice_app: VoiceApp) -> None:
    from core.prepared_voice import PreparedVoice

    voice_id = f"prep-{uuid.uuid4().hex[:6]}"
    put_voice(voice_app, voice_id, reference_audio(fmt="wav"), "Hello there, how are you?")
    before = cloner_counts()
    first = generate(voice_app, voice_id)
    assert first["ref_text_source"] == "stored"
    made = cloner_counts()
    assert made["references_prepared"] == before["references_prepared"] + 1
    assert made["transcriptions"] == before["transcriptions"]
    stored = prepared_file(voice_app, voice_id)
    assert stored is not None
    prepared = PreparedVoice.from_bytes(stored)
    assert prepared.key.startswith(f"{voice_id}@") and prepared.sample_rate == 24_000
    assert prepared.ref_text == "Hello there, how are you?"

    # the same voice again, through every route, streamed or not: nothing is prepared again
    again = generate(voice_app, voice_id)
    assert again["ref_text_source"] == "stored" and again["bytes"] == first["bytes"]
    speech = {"model": "f5-tts", "voice": voice_id, "input": "Hello.", "seed": 2}
    whole = httpx.post(f"{voice_app.url}/v1/audio/speech", json=speech, timeout=120)
    assert whole.status_code == 200, whole.text
    with httpx.stream(
        "POST",
        f"{voice_app.url}/v1/audio/speech",
        json={**speech, "stream_format": "audio", "response_format": "pcm"},
        timeout=120,
    ) as streamed:
        assert streamed.status_code == 200
        assert sum(len(piece) for piece in streamed.iter_bytes()) > 0
    used = cloner_counts()
    assert used["references_prepared"] == made["references_prepared"]
    assert used["prepared_voice_hits"] == made["prepared_voice_hits"] + 3

    # a new recording without a transcript: the stored file goes, the voice is made again
    replaced = put_voice(voice_app, voice_id, reference_audio(seed=5, fmt="wav"))
    assert replaced.status_code == 200
    assert prepared_file(voice_app, voice_id) is None
    heard = generate(voice_app, voice_id)
    assert heard["ref_text_source"] == "asr"
    remade = cloner_counts()
    assert remade["references_prepared"] == used["references_prepared"] + 1
    assert remade["transcriptions"] == used["transcriptions"] + 1
    stored_again = prepared_file(voice_app, voice_id)
    assert stored_again is not None
    assert PreparedVoice.from_bytes(stored_again).key not in ("", prepared.key)
    assert generate(voice_app, voice_id)["ref_text_source"] == "cached"
    assert cloner_counts()["transcriptions"] == remade["transcriptions"]  # no second ASR

    assert httpx.delete(f"{voice_app.url}/v1/voices/{voice_id}").status_code == 200
    assert prepared_file(voice_app, voice_id) is None


def test_a_corrupt_or_foreign_prepared_file_is_made_again(voice_app: VoiceApp) -> None:
    """The replica holds two prepared voices here (VOICE_PREPARED_CACHE_SIZE=2): two others
    push a voice out, so that its next request reads the stored file."""
    import dataclasses

    from core.prepared_voice import PreparedVoice

    ids = [f"evict-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    for seed, voice_id in enumerate(ids):
        put_voice(voice_app, voice_id, reference_audio(seed=seed, fmt="wav"), "Hello there.")
        generate(voice_app, voice_id)
    target, others = ids[0], ids[1:]
    key = f"AI/VOICE/{target}.voice.npz"
    valid = prepared_file(voice_app, target)
    assert valid is not None
    s3 = voice_app.s3_client()

    def pushed_out_and_used() -> dict[str, int]:
        for voice_id in others:
            generate(voice_app, voice_id)
        before = cloner_counts()
        generate(voice_app, target)
        after = cloner_counts()
        return {name: after[name] - before[name] for name in after}

    assert pushed_out_and_used()["references_prepared"] == 0  # read back from the stored file

    s3.put_object(Bucket=voice_app.bucket, Key=key, Body=b"PK\x03\x04 not really a zip")
    assert pushed_out_and_used()["references_prepared"] == 1  # ignored, made again
    rebuilt = prepared_file(voice_app, target)
    assert rebuilt is not None
    assert PreparedVoice.from_bytes(rebuilt).key == PreparedVoice.from_bytes(valid).key

    foreign = dataclasses.replace(PreparedVoice.from_bytes(rebuilt), model="another-model")
    s3.put_object(Bucket=voice_app.bucket, Key=key, Body=foreign.to_bytes())
    assert pushed_out_and_used()["references_prepared"] == 1  # the replica refused it
    stored = prepared_file(voice_app, target)
    assert stored is not None and PreparedVoice.from_bytes(stored).model != "another-model"

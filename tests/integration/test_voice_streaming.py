"""Streamed speech over real HTTP through Serve: chunks read as they come (raw httpx and the
openai client), valid audio when joined, JSON errors before the first byte, and a client
that leaves mid-stream stopping the model."""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from core.voice_cost import plan_chunks
from tests.integration.conftest import LocalRay, VoiceApp
from tests.integration.test_overload_and_metrics import scrape, total
from tests.integration.test_saved_voices import client, put_voice
from tests.integration.test_voice_routes import reference_audio

SR = 24_000
REF_TEXT = "안녕하세요"  # about 8 bytes/s over the 2 s reference: ~165 bytes a chunk
FOUR_SENTENCES = (
    "The weather is lovely today. We could walk along the river for an hour or two, then stop "
    "for lunch somewhere quiet. The cafe by the old bridge opens at noon and bakes its own "
    "bread! Would you like to come along with us this time?"
)


def stream_voice(app: VoiceApp, text: str, **fields: str) -> tuple[list[bytes], list[float], float]:
    """POST /v1/voice/generate with stream=1: (raw reads, their arrival times, start)."""
    reads, times = [], []
    started = time.perf_counter()
    with httpx.stream(
        "POST",
        f"{app.url}/v1/voice/generate",
        files={"ref_audio": ("ref.mp3", reference_audio())},
        data={"ref_text": REF_TEXT, "text": text, "stream": "1", **fields},
        timeout=120,
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers.get("content-length") is None  # chunked
        for data in response.iter_raw():
            reads.append(data)
            times.append(time.perf_counter())
    return reads, times, started


def test_voice_generate_streams_wav_as_it_is_made(voice_app: VoiceApp) -> None:
    assert len(plan_chunks(2.05, REF_TEXT, FOUR_SENTENCES, 1.0, streaming=True)) >= 2
    reads, times, started = stream_voice(
        voice_app, FOUR_SENTENCES, format="wav", nfe_steps="32", seed="3"
    )
    assert len(reads) >= 2, [len(r) for r in reads]
    # the first audio came well before the end (each chunk takes a while at 32 steps)
    assert times[0] - started < (times[-1] - started) * 0.8, (times[0] - started, times[-1])
    samples, rate = sf.read(io.BytesIO(b"".join(reads)), dtype="float32")
    assert rate == SR and samples.size > SR and np.isfinite(samples).all()
    # the same seed gives the same stream
    again, _, _ = stream_voice(voice_app, FOUR_SENTENCES, format="wav", nfe_steps="32", seed="3")
    assert b"".join(again) == b"".join(reads)


def test_voice_generate_streams_mp3(voice_app: VoiceApp) -> None:
    reads, _, _ = stream_voice(voice_app, FOUR_SENTENCES, nfe_steps="4")
    info = sf.info(io.BytesIO(b"".join(reads)))
    assert info.format == "MP3" and info.samplerate == SR and info.duration > 1


def test_errors_before_the_first_byte_keep_status_and_json(voice_app: VoiceApp) -> None:
    response = httpx.post(
        f"{voice_app.url}/v1/voice/generate",
        files={"ref_audio": ("ref.mp3", reference_audio())},
        data={"ref_text": REF_TEXT, "text": "Hello there.", "stream": "1", "format": "flac"},
        timeout=60,
    )
    assert response.status_code == 422, response.text
    assert "cannot be streamed" in response.json()["error"]["message"]
    response = httpx.post(
        f"{voice_app.url}/v1/voice/generate",
        files={"ref_audio": ("ref.mp3", b"not audio at all")},
        data={"text": "Hello there.", "stream": "1"},
        timeout=60,
    )
    assert response.status_code == 415 and response.json()["error"]["code"]
    missing = httpx.post(
        f"{voice_app.url}/v1/audio/speech",
        json={"model": "f5-tts", "voice": "nobody-here", "input": "hi", "stream_format": "sse"},
        timeout=60,
    )
    assert missing.status_code == 404 and missing.json()["error"]["message"]


def test_a_format_that_cannot_stream_is_422_naming_response_format(
    voice_app: VoiceApp, saved_voice: str
) -> None:
    body = {"model": "f5-tts", "voice": saved_voice, "input": "Hi there.", "stream_format": "audio"}
    response = httpx.post(
        f"{voice_app.url}/v1/audio/speech", json={**body, "response_format": "opus"}, timeout=60
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["fields"] == [
        {"field": "response_format", "message": "not streamable"}
    ]


@pytest.fixture(scope="module")
def saved_voice(voice_app: VoiceApp) -> str:
    voice_id = f"stream-{uuid.uuid4().hex[:6]}"
    created = put_voice(voice_app, voice_id, reference_audio(fmt="wav"), REF_TEXT)
    assert created.status_code == 201, created.text
    return voice_id


def test_openai_client_streams_pcm(voice_app: VoiceApp, saved_voice: str) -> None:
    reads = []
    with client(voice_app).audio.speech.with_streaming_response.create(
        model="f5-tts",
        voice=saved_voice,
        input=FOUR_SENTENCES,
        response_format="pcm",
        stream_format="audio",
        extra_body={"seed": 5, "nfe_steps": 16},
    ) as response:
        assert response.headers["content-type"] == "audio/pcm"
        assert response.headers["x-sample-rate"] == str(SR)
        for data in response.iter_bytes():
            reads.append(data)
    pcm = b"".join(reads)
    assert len(reads) >= 2 and len(pcm) % 2 == 0 and len(pcm) > SR * 2
    # the whole clip, not streamed, is as long (other chunks, so other samples)
    whole = client(voice_app).audio.speech.create(
        model="f5-tts", voice=saved_voice, input=FOUR_SENTENCES, response_format="pcm"
    )
    assert abs(len(whole.read()) - len(pcm)) < SR  # within half a second


def test_openai_client_streams_sse_events(voice_app: VoiceApp, saved_voice: str) -> None:
    events = []
    with client(voice_app).audio.speech.with_streaming_response.create(
        model="f5-tts",
        voice=saved_voice,
        input=FOUR_SENTENCES,
        response_format="wav",
        stream_format="sse",
        extra_body={"seed": 5, "nfe_steps": 4},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    kinds = [event["type"] for event in events]
    assert kinds[-1] == "speech.audio.done" and events[-1]["usage"]["input_tokens"] > 0
    assert kinds[:-1] == ["speech.audio.delta"] * (len(events) - 1) and len(events) >= 3
    audio = b"".join(base64.b64decode(event["audio"]) for event in events[:-1])
    samples, rate = sf.read(io.BytesIO(audio), dtype="float32")
    assert rate == SR and samples.size > SR


def test_non_streaming_speech_is_unchanged(voice_app: VoiceApp, saved_voice: str) -> None:
    response = httpx.post(
        f"{voice_app.url}/v1/audio/speech",
        json={"model": "f5-tts", "voice": saved_voice, "input": "Hello there.", "seed": 1},
        timeout=120,
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/mpeg"
    assert int(response.headers["content-length"]) == len(response.content)


def test_the_handle_api_streams_speech_chunks(voice_app: VoiceApp) -> None:
    from ray import serve

    from deployments.api import VOICE_CLONER, SpeechChunk, VoiceParams

    samples, rate = sf.read(io.BytesIO(reference_audio(fmt="wav")), dtype="float32")
    voice = serve.get_deployment_handle(VOICE_CLONER, app_name="voice")
    gen = voice.options(stream=True).synthesize_stream.remote(
        samples, rate, REF_TEXT, FOUR_SENTENCES, VoiceParams(nfe_steps=4, seed=2)
    )
    chunks = list(gen)
    assert all(isinstance(chunk, SpeechChunk) for chunk in chunks)
    assert len(chunks) >= 2 and [c.index for c in chunks] == list(range(chunks[0].count))
    assert chunks[0].text == "The weather is lovely today." and chunks[-1].last
    assert sum(c.samples.size for c in chunks) > SR


def test_the_streaming_example_runs(
    voice_app: VoiceApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/speech_stream.py against this server: a handle, httpx and the openai client."""
    from examples import speech_stream as example

    monkeypatch.setattr(example, "OUT", tmp_path)
    reference = example.reference_clip()
    handle_wav = example.through_a_handle(reference, app_name="voice")
    example.save_voice(reference, server=voice_app.url)
    httpx_wav = example.over_http_with_httpx(server=voice_app.url)
    openai_wav = example.with_the_openai_client(server=voice_app.url)
    for path in (handle_wav, httpx_wav, openai_wav):
        samples, rate = sf.read(path, dtype="float32")
        assert rate == SR and samples.size > SR, path
    # the same request and seed: the same PCM, however the stream was read
    assert sf.read(httpx_wav)[0].tolist() == sf.read(openai_wav)[0].tolist()


def settled(metrics_url: str) -> dict:
    """Metrics once the stream chunk counter stops moving (reported every second)."""
    last = scrape(metrics_url)
    for _ in range(20):
        time.sleep(1.5)
        now = scrape(metrics_url)
        name = "ray_ai_voice_stream_chunks_total"
        if total(now, name) == total(last, name):
            return now
        last = now
    return last


def test_a_client_that_leaves_stops_the_model(voice_app: VoiceApp, local_ray: LocalRay) -> None:
    text = " ".join(
        f"Sentence {i} goes on for a while, so that the whole text needs many chunks."
        for i in range(6)
    )
    planned = len(plan_chunks(2.05, REF_TEXT, text, 1.0, streaming=True))
    assert planned >= 4, planned
    before = settled(local_ray.metrics_url)  # earlier tests' chunks counted first
    chunks_before = total(before, "ray_ai_voice_stream_chunks_total")
    stopped_before = total(before, "ray_ai_voice_streams_total", outcome="stopped")
    with httpx.stream(
        "POST",
        f"{voice_app.url}/v1/voice/generate",
        files={"ref_audio": ("ref.mp3", reference_audio())},
        data={"ref_text": REF_TEXT, "text": text, "stream": "1", "format": "wav"}
        | {"nfe_steps": "128"},
        timeout=120,
    ) as response:
        assert response.status_code == 200
        first = next(response.iter_raw())
        assert first[:4] == b"RIFF"
    # the connection is closed: the replica's stream ends "stopped", within a chunk
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = scrape(local_ray.metrics_url)
        if total(after, "ray_ai_voice_streams_total", outcome="stopped") > stopped_before:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the stream was never reported stopped")
    # The model runs one request at a time: this one ends only after the abandoned synthesis
    # did, so a synthesis that went on would have counted all its chunks by then.
    after_it = stream_voice(voice_app, "Short one, after it.", format="wav", nfe_steps="2")
    assert after_it[0]
    made = total(settled(local_ray.metrics_url), "ray_ai_voice_stream_chunks_total") - chunks_before
    assert 2 <= made <= 3, (made, planned)  # the first, at most the one in flight, the short one

"""Streamed speech three ways, each written to a WAV as it arrives.

Start the server (`bin/serve-offline`), then, from the repository root in another shell:

    RAY_AUTH_MODE=disabled .venv/bin/python examples/speech_stream.py

1. Through a Serve handle (no HTTP): the VoiceCloner's `synthesize_voice_stream` via
   `handle.options(stream=True)`, with a voice prepared once (`prepare_voice`), each
   `SpeechChunk`'s float32 samples appended to a WAV.
2. Over HTTP with httpx: `POST /v1/audio/speech` with `stream_format: "audio"` and raw PCM,
   the body read chunk by chunk as the server sends it.
3. With the `openai` client: `audio.speech.with_streaming_response.create(...)`, the same
   request, `iter_bytes()` into a WAV.

The saved voice the HTTP calls use is stored first with `PUT /v1/voices/{id}`. Set
SERVER_URL for another server, RAY_ADDRESS for another Ray instance.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import numpy as np
import openai
import ray
import soundfile as sf
from ray import serve
from ray.serve.handle import DeploymentResponseGenerator

from deployments.api import (
    APP_NAME,
    VOICE_CLONER,
    PreparedVoice,
    SpeechChunk,
    VoiceNotPrepared,
    VoiceParams,
)

SERVER = os.environ.get("SERVER_URL", "http://127.0.0.1:8000")
VOICE_ID = "stream-example"
REF_TEXT = "Hello there, how are you today?"
TEXT = (
    "The weather is lovely today. We could walk along the river for an hour. "
    "The cafe by the old bridge opens at noon. Would you like to come along?"
)
SR = 24_000
OUT = Path(tempfile.gettempdir())


def reference_clip(seconds: float = 3.0) -> np.ndarray:
    """A synthetic voiced-sounding reference, float32 mono at 24 kHz."""
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(140 + 20 * np.sin(2 * np.pi * 3 * t)) / SR
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2
    return np.asarray(wave, dtype=np.float32)


def through_a_handle(reference: np.ndarray, app_name: str = APP_NAME) -> Path:
    """Stream from the VoiceCloner deployment; write each chunk as it comes."""
    voice = serve.get_deployment_handle(VOICE_CLONER, app_name=app_name)
    key = f"{VOICE_ID}@1"  # a new key whenever the reference or its transcript changes
    prepared = voice.prepare_voice.remote(reference, SR, REF_TEXT, key=key).result()
    params = VoiceParams(nfe_steps=8, seed=1)

    def stream(of: PreparedVoice | str) -> Iterator[SpeechChunk]:
        chunks = voice.options(stream=True).synthesize_voice_stream.remote(of, TEXT, params)
        return cast(DeploymentResponseGenerator, chunks)

    try:
        chunks = stream(key)
        first = next(chunks)  # VoiceNotPrepared comes with the first chunk
    except VoiceNotPrepared:  # another replica, or it restarted: hand over the voice itself
        chunks = stream(prepared)
        first = next(chunks)
    path = OUT / "speech-stream-handle.wav"
    start = time.perf_counter()
    with sf.SoundFile(path, "w", samplerate=first.sample_rate, channels=1) as wav:
        for chunk in [first, *chunks]:  # SpeechChunk: samples, index, count, text, seed
            wav.write(chunk.samples)
            print(
                f"  handle: chunk {chunk.index + 1}/{chunk.count} ({chunk.text[:30]!r}) "
                f"{chunk.samples.size / chunk.sample_rate:.2f} s at "
                f"{time.perf_counter() - start:.2f} s"
            )
    return path


def save_voice(reference: np.ndarray, server: str = SERVER) -> None:
    """Store the reference as a saved voice for the HTTP routes."""
    buffer = io.BytesIO()
    sf.write(buffer, reference, SR, format="WAV", subtype="PCM_16")
    response = httpx.put(
        f"{server}/v1/voices/{VOICE_ID}",
        files={"audio": ("ref.wav", buffer.getvalue(), "audio/wav")},
        data={"transcript": REF_TEXT},
        timeout=120,
    )
    response.raise_for_status()


def pcm_to_wav(path: Path) -> sf.SoundFile:
    return sf.SoundFile(path, "w", samplerate=SR, channels=1, subtype="PCM_16")


def over_http_with_httpx(server: str = SERVER) -> Path:
    """Raw 16-bit PCM from /v1/audio/speech, read as the server sends it."""
    body = {
        "model": "f5-tts",
        "voice": VOICE_ID,
        "input": TEXT,
        "response_format": "pcm",
        "stream_format": "audio",
        "seed": 1,
    }
    path = OUT / "speech-stream-httpx.wav"
    start, pending = time.perf_counter(), b""
    with (
        httpx.stream("POST", f"{server}/v1/audio/speech", json=body, timeout=300) as response,
        pcm_to_wav(path) as wav,
    ):
        response.raise_for_status()
        for data in response.iter_bytes():
            data, pending = pending + data, b""
            if len(data) % 2:  # a 16-bit sample split across two reads
                data, pending = data[:-1], data[-1:]
            wav.write(np.frombuffer(data, dtype="<i2"))
            print(f"  httpx: {len(data)} bytes at {time.perf_counter() - start:.2f} s")
    return path


def with_the_openai_client(server: str = SERVER) -> Path:
    """The same request through openai's streaming response."""
    client = openai.OpenAI(api_key=os.environ.get("API_KEY", "unused"), base_url=f"{server}/v1")
    path = OUT / "speech-stream-openai.wav"
    pending = b""
    with (
        client.audio.speech.with_streaming_response.create(
            model="f5-tts",
            voice=VOICE_ID,
            input=TEXT,
            response_format="pcm",
            stream_format="audio",
            extra_body={"seed": 1},
        ) as response,
        pcm_to_wav(path) as wav,
    ):
        for data in response.iter_bytes():
            data, pending = pending + data, b""
            if len(data) % 2:
                data, pending = data[:-1], data[-1:]
            wav.write(np.frombuffer(data, dtype="<i2"))
    return path


def main() -> None:
    ray.init(address="auto", log_to_driver=False, configure_logging=False)
    reference = reference_clip()
    print("through a handle:")
    print(f"-> {through_a_handle(reference)}")
    save_voice(reference)
    print("over HTTP (httpx):")
    print(f"-> {over_http_with_httpx()}")
    print(f"openai client: -> {with_the_openai_client()}")


if __name__ == "__main__":
    main()

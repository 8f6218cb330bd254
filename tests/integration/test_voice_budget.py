"""Voice work bounded before it starts, and stopped once nobody waits for it, through Serve.

The motivating request (a 10 s reference, `ref_text=a`, `text` = "a。" x 40: 40 chunks of
33 s each, hours at 128 steps) is refused with 422 at once, by the Gateway and by the model
for handle callers. A synthesis whose Gateway timeout fires, or whose client goes away, stops
on the model replica within a model step, so the next request does not wait behind it.

Times are compared with baselines measured in the same test (one chunk of an ordinary
request, one chunk of the long one), with seconds of slack for a loaded two-core machine;
the long synthesis is 25 chunks at 32 steps, so without cancellation the next request would
wait for about 20 of them (each test checks that this margin holds on the machine).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from ray import serve

from core.errors import find_api_error
from core.types import VoiceParams
from serve_app.app import build_app
from serve_app.audio import decode_audio
from tests.integration.conftest import voice_settings, wait_until_ready
from tests.integration.test_voice_routes import reference_audio

APP = "voice-budget"
TIMEOUT_S = 15  # REQUEST_TIMEOUT_SECONDS of this app
CLIENT_GIVES_UP_S = 4  # the client that goes away, before the Gateway's timeout
# With ref_text "hello" over the 2 s reference a chunk holds 65-67 bytes: two sentences.
SENTENCE = "Nice to see you all again today. "
ONE_CHUNK = SENTENCE * 2
LONG = SENTENCE * 50  # 25 chunks
LONG_NFE = 32  # the ordinary requests use the app's default, 4


@pytest.fixture(scope="module")
def url(
    serve_url: str, tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    settings = {
        "IMAGE_ENABLED": False,
        "IMAGE_SEARCH_ENABLED": False,
        "LOCAL_STORAGE_DIR": str(tmp_path_factory.mktemp("voice-budget")),
        "TORCH_CPU_THREADS": 1,
        **voice_settings(tiny_models_dir),
        "VOICE_MAX_TEXT_CHARS": 2000,
        "REQUEST_TIMEOUT_SECONDS": TIMEOUT_S,
    }
    serve.run(build_app({"env_files": [], "settings": settings}), name=APP, route_prefix=f"/{APP}")
    try:
        wait_until_ready(f"{serve_url}/{APP}")
        yield f"{serve_url}/{APP}"
    finally:
        serve.delete(APP)


def speak(
    url: str, ref: bytes, ref_text: str, text: str, timeout: float = 180, nfe: int | None = None
) -> httpx.Response:
    fields = {"ref_text": ref_text, "text": text, "format": "wav", "seed": "1"}
    if nfe is not None:
        fields["nfe_steps"] = str(nfe)
    return httpx.post(
        f"{url}/v1/voice/generate",
        files={"ref_audio": ("ref.mp3", ref)},
        data=fields,
        timeout=timeout,
    )


def baselines(url: str, ref: bytes) -> tuple[bytes, float, float]:
    """(the ordinary request's audio, its seconds, seconds of one chunk of the long request),
    measured now; skips the test where a missed cancellation could not be told apart."""
    for _ in range(2):  # the first warms the replica up
        ordinary, ordinary_s = timed(speak, url, ref, "hello", ONE_CHUNK)
        assert ordinary.status_code == 200, ordinary.text
    chunk, chunk_s = timed(speak, url, ref, "hello", ONE_CHUNK, nfe=LONG_NFE)
    assert chunk.status_code == 200, chunk.text
    if chunk_s * 2 > TIMEOUT_S or 25 * chunk_s < TIMEOUT_S + 3 * bound(ordinary_s, chunk_s):
        pytest.skip(f"chunks take {chunk_s:.1f} s here: the margins of this test do not hold")
    return ordinary.content, ordinary_s, chunk_s


def bound(ordinary_s: float, chunk_s: float) -> float:
    """How long the next request may take: its own time twice, the long request's chunk in
    progress, and slack."""
    return 2 * ordinary_s + chunk_s + 5


def timed(call: object, *args: object, **kwargs: object) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    response = call(*args, **kwargs)  # type: ignore[operator]
    return response, time.perf_counter() - start


def test_the_motivating_request_is_refused_at_once(url: str) -> None:
    ref = reference_audio(seconds=10.0)
    refused, took = timed(speak, url, ref, "a", "a。" * 40)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_request"
    assert "does not match the reference audio" in error["message"]
    assert error["limit"] == "VOICE_REF_TEXT_MIN_BYTES_PER_SECOND"
    assert error["fields"][0]["field"] == "ref_text"
    assert took < 20, took  # decoding 10 s of MP3 and a round trip; no model work
    # a transcript that passes, with 250 short sentences: about 1000 s of speech estimated
    over, took = timed(speak, url, ref, "hello there", "가。" * 250)
    assert over.status_code == 422, over.text
    error = over.json()["error"]
    assert (error["code"], error["limit"], error["allowed"]) == (
        "over_budget",
        "VOICE_MAX_OUTPUT_SECONDS",
        600,
    )
    assert error["estimated"] > 600 and "VOICE_MAX_OUTPUT_SECONDS=600" in error["message"]
    assert took < 20, took
    ordinary = speak(url, reference_audio(), "hello", "hi there")
    assert ordinary.status_code == 200, ordinary.text


def test_the_model_refuses_it_too_for_handle_callers(url: str) -> None:
    ref = decode_audio(
        reference_audio(seconds=10.0), target_sr=24_000, max_seconds=60, max_bytes=10**7
    )
    handle = serve.get_deployment_handle("VoiceCloner", app_name=APP)
    start = time.perf_counter()
    with pytest.raises(Exception) as caught:  # a Ray error wrapping ours
        handle.synthesize.remote(
            ref.samples, ref.sample_rate, "a", "a。" * 40, VoiceParams(nfe_steps=4)
        ).result(timeout_s=60)
    error = find_api_error(caught.value)
    assert error is not None and error.status_code == 422, caught.value
    assert error.details["limit"] == "VOICE_REF_TEXT_MIN_BYTES_PER_SECOND"
    assert time.perf_counter() - start < 20
    within = handle.synthesize.remote(
        ref.samples,
        ref.sample_rate,
        "hello there, nice to see you",
        "hi",
        VoiceParams(nfe_steps=2, seed=1),
    ).result(timeout_s=120)
    assert within.samples.size > 0 and np.isfinite(within.samples).all()


def test_a_synthesis_whose_timeout_fired_stops_and_the_next_request_is_served(url: str) -> None:
    ref = reference_audio()
    audio, ordinary_s, chunk_s = baselines(url, ref)
    long, took = timed(speak, url, ref, "hello", LONG, nfe=LONG_NFE)
    assert long.status_code == 503, long.text
    assert "timed out after 15s" in long.json()["error"]["message"]
    assert took < TIMEOUT_S + 10, took
    after, waited = timed(speak, url, ref, "hello", ONE_CHUNK)
    assert after.status_code == 200, after.text
    assert after.content == audio  # same seed, same speech
    # Without cancellation it would wait for the long synthesis's remaining ~20 chunks.
    assert waited < bound(ordinary_s, chunk_s), (waited, ordinary_s, chunk_s)


def test_a_synthesis_whose_client_went_away_stops_and_the_next_request_is_served(
    url: str,
) -> None:
    ref = reference_audio()
    audio, ordinary_s, chunk_s = baselines(url, ref)
    with pytest.raises(httpx.TimeoutException):  # the client leaves
        speak(url, ref, "hello", LONG, timeout=CLIENT_GIVES_UP_S, nfe=LONG_NFE)
    after, waited = timed(speak, url, ref, "hello", ONE_CHUNK)
    assert after.status_code == 200, after.text
    assert after.content == audio
    # Without cancellation it would wait for the long synthesis's remaining ~24 chunks (and
    # past the Gateway's timeout).
    assert waited < bound(ordinary_s, chunk_s), (waited, ordinary_s, chunk_s)

"""The Python handle API, used from a second Serve application beside ours.

The "client" app (`tests/support/handle_client.py`) calls PromptOptimizer + ImageGenerator
(app "ai"), ClipEmbedder + VectorIndex (app "search") and VoiceCloner (app "voice") through
`serve.get_deployment_handle`; this test drives it through `serve.get_app_handle("client")`
and over HTTP, and checks real behaviour, errors included.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.api import (
    IMAGE_GENERATOR,
    VOICE_CLONER,
    ApiError,
    InvalidInput,
    VoiceNotPrepared,
    VoiceParams,
    api_error,
)
from tests.integration.conftest import DeployedApp, SearchApp, VoiceApp
from tests.support.handle_client import HandleClient

CLIENT_APP = "client"
SR = 24_000
TIMEOUT_S = 180


@pytest.fixture(scope="module")
def client(
    ai_app: DeployedApp, search_app: SearchApp, voice_app: VoiceApp
) -> Iterator[DeploymentHandle]:
    """The client app, deployed beside "ai", "search" and "voice"; deleted afterwards."""
    handle = serve.run(
        HandleClient.bind("ai", search_app.app_name, "voice"),
        name=CLIENT_APP,
        route_prefix="/client",
    )
    try:
        yield handle
    finally:
        serve.delete(CLIENT_APP)


@pytest.fixture(scope="module")
def ai_app(image_app: DeployedApp) -> Iterator[DeployedApp]:
    """The image app with the loopback OpenAI server answering normally (module scope)."""
    image_app.openai.reset()
    yield image_app
    image_app.openai.reset()


def call(client: DeploymentHandle, method: str, *args, **kwargs):
    return getattr(client, method).remote(*args, **kwargs).result(timeout_s=TIMEOUT_S)


def noise_png(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def voice_clip(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """A voiced-sounding float32 clip at 24 kHz: harmonics with vibrato and some noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(140 + 20 * np.sin(2 * np.pi * 3 * t)) / SR
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2 + rng.normal(0, 0.01, t.shape)
    return wave.astype(np.float32)


def test_the_client_app_runs_beside_ours(client: DeploymentHandle, serve_url: str) -> None:
    apps = serve.status().applications
    assert {"ai", "search", "voice", CLIENT_APP} <= set(apps)
    assert serve.get_app_handle(CLIENT_APP).deployment_name == "HandleClient"
    # over HTTP too: the client's ingress reports what each model deployment says of itself
    body = httpx.get(f"{serve_url}/client", timeout=60).json()
    assert body["image"]["device"] == "cpu"
    assert int(body["clip"]["dim"]) > 0
    assert body["voice"]["device"] == "cpu"


def test_prompt_then_image_through_handles(client: DeploymentHandle) -> None:
    client = serve.get_app_handle(CLIENT_APP)
    first = call(client, "poster", "햄릿", "복수와 광기의 비극", width=64, height=96, seed=1234)
    assert first["prompt_source"] == "openai"  # the loopback OpenAI server wrote it
    assert "prince" in first["prompt"]
    assert first["result_type"] == "core.types.GeneratedImage"
    assert (first["seed"], first["steps"], first["shape"], first["dtype"]) == (
        1234,
        2,
        (96, 64, 3),
        "uint8",
    )
    image = Image.open(io.BytesIO(first["png"]))
    assert (image.format, image.size, image.mode) == ("PNG", (64, 96), "RGB")

    again = call(client, "poster", "햄릿", "복수와 광기의 비극", width=64, height=96, seed=1234)
    assert again["png"] == first["png"]  # same seed and parameters, same pixels
    other = call(client, "poster", "햄릿", "복수와 광기의 비극", width=64, height=96, seed=1235)
    assert other["png"] != first["png"]
    unseeded = call(client, "poster", "햄릿", "", width=64, height=64, seed=None)
    assert 0 <= unseeded["seed"] < 2**63 and unseeded["shape"] == (64, 64, 3)


def test_embeddings_and_index_search_through_handles(
    client: DeploymentHandle, search_app: SearchApp
) -> None:
    project_id = f"h-{uuid.uuid4().hex[:10]}"
    images = [noise_png(seed) for seed in (501, 502, 503)]
    ids = []
    for i, data in enumerate(images):  # uploaded over HTTP: stored, embedded and indexed
        response = httpx.post(
            f"{search_app.url}/v1/projects/{project_id}/images",
            files={"file": (f"{i}.png", data)},
            timeout=60,
        )
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])

    result = call(
        serve.get_app_handle(CLIENT_APP),
        "embed_and_search",
        project_id,
        ["a red fox", "고양이"],
        images,
        3,
    )
    dim = result["text_shape"][1]
    assert result["text_shape"] == (2, dim) and result["text_dtype"] == "float32" and dim > 0
    assert result["image_shape"] == (3, dim)
    assert np.allclose(result["text_norms"], 1.0, atol=1e-4)
    assert np.allclose(result["image_norms"], 1.0, atol=1e-4)
    for image_id, hits in zip(ids, result["image_hits"], strict=True):
        top_id, _, top_score = hits[0]
        assert top_id == image_id  # each uploaded image is its own nearest neighbour
        assert top_score == pytest.approx(1.0, abs=1e-3)
        assert [score for *_, score in hits] == sorted((score for *_, score in hits), reverse=True)
        assert len(hits) == 3
    assert {hit_id for hit_id, _ in result["text_hits"]} == set(ids)

    # the handle-computed vector is the one the upload route stored: search over HTTP by image
    # ranks the same way
    by_image = httpx.post(
        f"{search_app.url}/v1/projects/{project_id}/images/search/by-image",
        params={"limit": 1},
        files={"file": ("q.png", images[1])},
        timeout=60,
    )
    assert by_image.status_code == 200, by_image.text
    assert by_image.json()["results"][0]["id"] == ids[1]

    unknown = call(
        serve.get_app_handle(CLIENT_APP),
        "embed_and_search",
        "no-such-project",
        ["x"],
        images[:1],
        3,
    )
    assert unknown["image_hits"] == [[]] and unknown["text_hits"] == []


def test_voice_synthesis_through_handles(client: DeploymentHandle) -> None:
    client = serve.get_app_handle(CLIENT_APP)
    reference = voice_clip(seed=3)
    first = call(client, "speak", reference, SR, "hello there", "nice to meet you", 11)
    assert first["sample_rate"] == 24_000
    assert first["seed"] == 11 and first["chunks"] >= 1
    samples = first["samples"]
    assert samples.dtype == np.float32 and samples.ndim == 1 and samples.size > 0
    assert first["duration_s"] > 0
    assert first["duration_s"] == pytest.approx(samples.size / 24_000)
    assert np.isfinite(samples).all()

    again = call(client, "speak", reference, SR, "hello there", "nice to meet you", 11)
    assert again["sha256"] == first["sha256"]
    assert np.array_equal(again["samples"], samples)  # same seed, same samples
    other = call(client, "speak", reference, SR, "hello there", "nice to meet you", 12)
    assert other["sha256"] != first["sha256"]

    # a reference at another rate is resampled by the deployment
    resampled = call(
        client, "speak", voice_clip(seed=3)[::2].copy(), SR // 2, "hello there", "hi", 11
    )
    assert resampled["sample_rate"] == 24_000 and resampled["duration_s"] > 0

    transcript = call(client, "transcribe", reference, SR)
    assert isinstance(transcript, str)  # the tiny Whisper's words are noise; the type is not


FOUR_SENTENCES = (
    "The weather is lovely today. We could walk along the river for an hour. "
    "The cafe by the bridge opens at noon! Would you like to come along?"
)


def test_speech_streams_through_handles_from_another_app(client: DeploymentHandle) -> None:
    client = serve.get_app_handle(CLIENT_APP)
    reference = voice_clip(seed=4)
    streamed = call(client, "speak_stream", reference, SR, "hello there", FOUR_SENTENCES, 5)
    count = len(streamed["indexes"])
    assert count >= 2 and streamed["indexes"] == list(range(count))
    assert streamed["counts"] == {count} and streamed["last"] == [False] * (count - 1) + [True]
    assert streamed["texts"][0] == "The weather is lovely today."
    assert streamed["sample_rate"] == SR and streamed["samples"].size > SR
    again = call(client, "speak_stream", reference, SR, "hello there", FOUR_SENTENCES, 5)
    assert again["sha256"] == streamed["sha256"]  # same seed, same stream


def test_a_prepared_voice_through_handles(client: DeploymentHandle) -> None:
    client = serve.get_app_handle(CLIENT_APP)
    key = f"handles-{uuid.uuid4().hex[:6]}@1"
    text = "Nice to meet you. Shall we go?"
    seen = call(client, "speak_prepared", voice_clip(seed=6), SR, "hello there", text, 9, key)
    assert seen["prepared_type"] == "core.prepared_voice.PreparedVoice"
    assert seen["prepared_key"] == key
    assert seen["plain"] == seen["prepared"] == seen["by_key"]  # no trimming, same samples
    assert seen["stream"]["sha256"] == seen["plain_stream"]["sha256"]
    unknown = seen["unknown_key"]
    assert unknown["cause_type"] == "VoiceNotPrepared" and unknown["status_code"] == 409

    # from the driver: the prepared voice's key works, an unknown one is the project's error
    voice = serve.get_deployment_handle(VOICE_CLONER, app_name="voice")
    speech = voice.synthesize_voice.remote(key, text, VoiceParams(nfe_steps=4, seed=9))
    assert speech.result(timeout_s=TIMEOUT_S).samples.size > 0
    with pytest.raises(VoiceNotPrepared) as caught:
        voice.synthesize_voice.remote("nobody@0", text).result(timeout_s=TIMEOUT_S)
    assert caught.value.cause.code == "voice_not_prepared"


def test_errors_cross_ray_as_the_projects_errors(client: DeploymentHandle) -> None:
    client = serve.get_app_handle(CLIENT_APP)
    # caught inside the client app: a RayTaskError whose class is also the raised error's
    seen = call(client, "probe_errors")
    expected = {
        "empty_prompt": ("InvalidInput", "invalid_request", 422, "prompt must not be empty"),
        "empty_text": ("InvalidInput", "invalid_request", 422, "text 0 is empty"),
        "not_an_image": ("UnsupportedMediaType", "unsupported_media_type", 415, "image 0"),
        "empty_speech_text": ("InvalidInput", "invalid_request", 422, "text must not be empty"),
    }
    for name, (cause_type, code, status, message) in expected.items():
        error = seen[name]
        assert error["type"] == f"RayTaskError({cause_type})", (name, error)
        assert "RayTaskError" in error["mro"] and cause_type in error["mro"], (name, error)
        assert error["is_api_error"] is True, (name, error)
        assert (error["cause_type"], error["cause_module"]) == (cause_type, "core.errors")
        assert (error["code"], error["status_code"]) == (code, status), (name, error)
        assert message in error["message"], (name, error)

    # propagated through the client app to this driver: still the project's error
    with pytest.raises(InvalidInput) as caught:
        call(client, "generate_raw", "")
    assert isinstance(caught.value, ApiError)
    cause = caught.value.cause
    assert type(cause) is InvalidInput
    assert (cause.status_code, cause.code, cause.message) == (
        422,
        "invalid_request",
        "prompt must not be empty",
    )
    assert api_error(caught.value) is cause

    # and straight from the driver to the deployment
    generator = serve.get_deployment_handle(IMAGE_GENERATOR, app_name="ai")
    with pytest.raises(InvalidInput) as direct:
        generator.generate.remote("   ").result(timeout_s=TIMEOUT_S)
    assert direct.value.cause.code == "invalid_request"

    # an unknown deployment is Ray's KeyError, not one of ours
    with pytest.raises(KeyError, match="does not exist"):
        serve.get_deployment_handle("NoSuchDeployment", app_name="ai").describe.remote().result(
            timeout_s=60
        )

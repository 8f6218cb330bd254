"""Work budgets at the Gateway, over HTTP without Ray: each model route refuses a request
whose estimated work is past its budget with 422 naming the limit, before any model call.

The FastAPI app is the Gateway's own (`create_http_app`); the module board says every module
is ready and the deployment handles fail the test if they are called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.storage import LocalObjectStore
from serve_app.audio import encode_audio
from serve_app.deploy_configs import gateway_config
from serve_app.http_app import create_http_app
from serve_app.services import Services
from serve_app.settings import load_settings

SR = 24_000


class ReadyBoard:
    """Every module ready; nothing fails."""

    async def require_ready(self, spec: object) -> None:
        return None

    async def watch(self, spec: object, poll_s: float = 1.0) -> None:
        import asyncio

        await asyncio.Event().wait()


class NoCalls:
    """A deployment handle that must not be reached."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the model was called ({name}) for a request over its budget")


def reference_mp3(seconds: float) -> bytes:
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(140 + 20 * np.sin(2 * np.pi * 3 * t)) / SR
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2
    data, _ = encode_audio(wave.astype(np.float32), SR, "mp3")
    return data


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    settings = load_settings(None, {"LOCAL_STORAGE_DIR": str(tmp_path)})
    config = gateway_config(settings)
    services = Services(
        config=config,
        store=LocalObjectStore(tmp_path),
        board=ReadyBoard(),  # type: ignore[arg-type]
        prompt_optimizer=NoCalls(),
        image_generator=NoCalls(),
        clip_embedder=NoCalls(),
        vector_index=NoCalls(),
        voice_cloner=NoCalls(),
    )
    return TestClient(create_http_app(services))


def refusal(response: Any, limit: str, code: str = "over_budget") -> dict[str, Any]:
    assert response.status_code == 422, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["limit"] == limit
    assert limit in error["message"]
    assert error["estimated"] > error["allowed"] or code != "over_budget"
    return error


def test_image_generation_over_its_pixel_steps(client: TestClient) -> None:
    body = {"title": "t", "width": 1024, "height": 1024, "steps": 101}  # each field allowed
    error = refusal(client.post("/v1/images/generate", json=body), "IMAGE_MAX_PIXEL_STEPS")
    assert error["estimated"] == 101 * 1024 * 1024 and error["allowed"] == 100 * 1024 * 1024
    assert {field["field"] for field in error["fields"]} == {"steps", "width", "height"}
    refusal(client.post("/v1/r2/images/generate", json=body), "IMAGE_MAX_PIXEL_STEPS")


def test_openai_images_count_n(client: TestClient) -> None:
    body = {"prompt": "a fox", "n": 4, "size": "1024x1024", "steps": 26}
    error = refusal(client.post("/v1/images/generations", json=body), "IMAGE_MAX_PIXEL_STEPS")
    assert error["estimated"] == 4 * 26 * 1024 * 1024
    assert "4 images x 26 steps" in error["message"]
    assert [field["field"] for field in error["fields"]] == ["n", "steps", "size"]


def test_embeddings_over_their_characters(client: TestClient) -> None:
    texts = ["x" * 1000] * 66  # each text and the count allowed, 66,000 characters in all
    response = client.post("/v1/embeddings", json={"input": texts})
    error = refusal(response, "EMBEDDINGS_MAX_TOTAL_CHARS")
    assert error["estimated"] == 66_000 and error["allowed"] == 65_536


def test_the_motivating_voice_request_is_refused_before_the_model(client: TestClient) -> None:
    """10 s of reference, ref_text "a", text "a。" x 40: 40 chunks of 33 s each."""
    response = client.post(
        "/v1/voice/generate",
        files={"ref_audio": ("ref.mp3", reference_mp3(10.0))},
        data={"ref_text": "a", "text": "a。" * 40},
    )
    error = refusal(response, "VOICE_REF_TEXT_MIN_BYTES_PER_SECOND", code="invalid_request")
    assert "does not match the reference audio" in error["message"]
    assert error["fields"][0]["field"] == "ref_text"


def test_a_voice_request_over_its_output_budget(client: TestClient) -> None:
    # 11 bytes of transcript for 10 s passes the rate check; 250 short Korean sentences
    # are about 125 chunks of 8.6 s each: over the 600 s of VOICE_MAX_OUTPUT_SECONDS
    response = client.post(
        "/v1/voice/generate",
        files={"ref_audio": ("ref.mp3", reference_mp3(10.0))},
        data={"ref_text": "hello there", "text": "가。" * 250},
    )
    error = refusal(response, "VOICE_MAX_OUTPUT_SECONDS")
    assert error["allowed"] == 600 and error["estimated"] > 1000


def test_a_voice_request_over_its_model_steps(client: TestClient) -> None:
    # 12 s of reference at 15 bytes a second (5 Hangul syllables) and the longest Korean
    # text: about 40 chunks of 10 s (400 s, within VOICE_MAX_OUTPUT_SECONDS), at 128 steps
    text = ("오늘은 날씨가 정말 좋네요. 산책하러 갈까요? " * 100)[:2000]
    response = client.post(
        "/v1/voice/generate",
        files={"ref_audio": ("ref.mp3", reference_mp3(12.0))},
        data={"ref_text": "안녕하세요" * 12, "text": text, "nfe_steps": "128"},
    )
    error = refusal(response, "VOICE_MAX_MODEL_STEPS")
    assert error["allowed"] == 8192 and error["estimated"] % (128 * 2) == 0


def test_the_budgets_are_settings() -> None:
    from serve_app.deploy_configs import voice_cloner_config
    from serve_app.settings import SettingsError

    settings = load_settings(
        None,
        {
            "VOICE_MAX_OUTPUT_SECONDS": 30,
            "VOICE_MAX_MODEL_STEPS": 500,
            "VOICE_REF_TEXT_MIN_BYTES_PER_SECOND": 2,
            "VOICE_REF_TEXT_MAX_BYTES_PER_SECOND": 40,
            "IMAGE_MAX_PIXEL_STEPS": 1000,
            "EMBEDDINGS_MAX_TOTAL_CHARS": 10,
        },
    )
    gateway = gateway_config(settings)
    model = voice_cloner_config(settings, "cpu", 1)
    assert gateway.voice_limits == model.limits  # the Gateway and the model check the same
    assert (model.limits.max_output_seconds, model.limits.max_model_steps) == (30, 500)
    assert (gateway.image_max_pixel_steps, gateway.embeddings_max_total_chars) == (1000, 10)
    with pytest.raises(SettingsError, match="VOICE_REF_TEXT_MIN_BYTES_PER_SECOND=9 must be below"):
        load_settings(
            None,
            {"VOICE_REF_TEXT_MIN_BYTES_PER_SECOND": 9, "VOICE_REF_TEXT_MAX_BYTES_PER_SECOND": 9},
        )

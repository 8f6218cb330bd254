"""The image module over real HTTP through Serve's proxy (tiny diffusion model, local store)."""

from __future__ import annotations

import io
from urllib.parse import unquote

import httpx
import pytest
from PIL import Image

from tests.integration.conftest import DeployedApp

SEED_BODY = {"title": "햄릿", "description": "복수와 광기의 비극"}


def post(app: DeployedApp, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{app.url}{path}", timeout=120, **kwargs)


def decode_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data), formats=["PNG"])
    image.load()
    return image


def test_healthz_answers(app: DeployedApp) -> None:
    response = httpx.get(f"{app.url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_lists_every_module(app: DeployedApp) -> None:
    response = httpx.get(f"{app.url}/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True
    assert body["modules"]["image"]["state"] == "ready"
    assert body["modules"]["image"]["deployments"] == {
        "PromptOptimizer": "HEALTHY",
        "ImageGenerator": "HEALTHY",
    }
    assert body["modules"]["image_search"] == {
        "state": "disabled",
        "enabled_by": "IMAGE_SEARCH_ENABLED",
        "reason": None,
        "backend": None,
        "deployments": {},
    }
    assert body["modules"]["voice"]["state"] == "disabled"
    assert body["modules"]["jobs"]["state"] == "disabled"
    assert body["storage"]["state"] == "ready"
    assert body["storage"]["backend"] == "local"


def test_seed_curl_returns_png_with_openai_prompt(app: DeployedApp) -> None:
    response = post(app, "/v1/images/generate", json=SEED_BODY)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert decode_png(response.content).size == (64, 64)
    assert response.headers["x-prompt-source"] == "openai"
    # The prompt used, percent-encoded (headers are Latin-1), and the steps' times.
    assert unquote(response.headers["x-image-prompt"]) == app.openai.reply_text
    timings = dict(part.split(";dur=") for part in response.headers["server-timing"].split(", "))
    assert list(timings) == ["prompt", "generate", "encode", "total"]
    assert all(float(ms) >= 0 for ms in timings.values())
    assert float(timings["total"]) >= float(timings["generate"])
    (chat,) = app.openai.chat_requests
    sent = str(chat.body["messages"])
    assert "햄릿" in sent and "복수와 광기의 비극" in sent
    assert chat.authorization == "Bearer sk-test-not-a-real-key"


def test_same_seed_same_bytes_and_other_seed_differs(app: DeployedApp) -> None:
    body = {**SEED_BODY, "seed": 1234, "width": 96, "height": 64, "steps": 2}
    first = post(app, "/v1/images/generate", json=body)
    second = post(app, "/v1/images/generate", json=body)
    other = post(app, "/v1/images/generate", json={**body, "seed": 4321})
    assert first.status_code == second.status_code == other.status_code == 200
    assert first.content == second.content
    assert first.content != other.content
    assert decode_png(first.content).size == (96, 64)
    assert first.headers["x-image-seed"] == "1234"


def test_stored_variant_writes_png_and_reports_how_it_was_made(app: DeployedApp) -> None:
    response = post(app, "/v1/r2/images/generate", json={**SEED_BODY, "seed": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["key"].startswith("AI/POSTER/") and body["key"].endswith(".png")
    assert body["storage"] == "local"
    assert body["prompt_source"] == "openai"
    assert body["prompt"] == app.openai.reply_text
    assert (body["seed"], body["width"], body["height"]) == (7, 64, 64)
    assert set(body["timings"]) == {"prompt_ms", "generate_ms", "encode_ms", "store_ms", "total_ms"}
    stored = (app.storage_dir / body["key"]).read_bytes()
    assert len(stored) == body["bytes"]
    decode_png(stored)
    # The URL of a locally stored result is a route of this server.
    fetched = httpx.get(f"{app.url}{body['url']}")
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "image/png"
    assert fetched.content == stored


def test_random_seed_is_reported_and_reproduces(app: DeployedApp) -> None:
    first = post(app, "/v1/r2/images/generate", json=SEED_BODY).json()
    again = post(app, "/v1/r2/images/generate", json={**SEED_BODY, "seed": first["seed"]}).json()
    assert (app.storage_dir / first["key"]).read_bytes() == (
        app.storage_dir / again["key"]
    ).read_bytes()


@pytest.mark.parametrize("mode", ["http_500", "http_400", "slow", "empty"])
def test_openai_failures_fall_back_to_template(app: DeployedApp, mode: str) -> None:
    app.openai.mode = mode
    app.openai.delay_s = 5.0 if mode == "slow" else 0.0
    response = post(app, "/v1/r2/images/generate", json=SEED_BODY)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["prompt_source"] == "fallback"
    assert "햄릿" in body["prompt"]
    assert body["prompt_fallback_reason"]
    assert "sk-test-not-a-real-key" not in response.text
    # OPENAI_TIMEOUT_SECONDS=2 with one retry bounds what a slow OpenAI can add.
    assert body["timings"]["prompt_ms"] < 2 * 2000 + 2000


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"description": "no title"}, "title"),
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"title": "x" * 301}, "title"),
        ({"title": "ok", "description": "d" * 4001}, "description"),
        ({"title": "ok", "width": 65}, "width"),
        ({"title": "ok", "height": 8}, "height"),
        ({"title": "ok", "steps": 0}, "steps"),
        ({"title": "ok", "steps": 1000}, "steps"),
        ({"title": "ok", "guidance_scale": -1}, "guidance_scale"),
        ({"title": "ok", "seed": -5}, "seed"),
        ({"title": "ok", "stpes": 3}, "stpes"),
        ({"title": "bad\x00title"}, "title"),
    ],
)
def test_invalid_fields_get_422_naming_the_field(app: DeployedApp, body: dict, field: str) -> None:
    response = post(app, "/v1/images/generate", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert field in [entry["field"] for entry in error["fields"]]
    assert field in error["message"]


def test_too_many_pixels_is_422(app: DeployedApp) -> None:
    response = post(app, "/v1/images/generate", json={"title": "ok", "width": 512, "height": 512})
    assert response.status_code == 422
    assert "IMAGE_MAX_PIXELS" in response.json()["error"]["message"]


def test_malformed_json_is_400(app: DeployedApp) -> None:
    response = post(
        app,
        "/v1/images/generate",
        content=b'{"title": "unterminated',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"title=hamlet", "application/x-www-form-urlencoded"),
        (b"", "application/json"),
        (b"[1, 2]", "application/json"),
    ],
)
def test_non_object_bodies_are_rejected_with_json(
    app: DeployedApp, content: bytes, content_type: str
) -> None:
    response = post(
        app, "/v1/images/generate", content=content, headers={"content-type": content_type}
    )
    assert response.status_code in (400, 422)
    assert response.json()["error"]["message"]


def test_unknown_route_answers_json_404(app: DeployedApp) -> None:
    response = httpx.get(f"{app.url}/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "key",
    ["AI/POSTER/../../etc/passwd", "AI/POSTER/%2e%2e/%2e%2e/x.png", "backups/db.sqlite"],
)
def test_storage_route_refuses_keys_outside_results(app: DeployedApp, key: str) -> None:
    response = httpx.get(f"{app.url}/v1/storage/{key}")
    assert response.status_code in (404, 422)
    assert "error" in response.json()


def test_server_stays_up_after_bad_requests(app: DeployedApp) -> None:
    for _ in range(3):
        post(
            app,
            "/v1/images/generate",
            content=b"\xff\xfe",
            headers={"content-type": "application/json"},
        )
    assert httpx.get(f"{app.url}/healthz").status_code == 200
    assert post(app, "/v1/images/generate", json=SEED_BODY).status_code == 200


def test_disabled_module_names_its_variable(imageless_app_url: str) -> None:
    response = httpx.post(f"{imageless_app_url}/v1/images/generate", json=SEED_BODY, timeout=30)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "module_disabled"
    assert "IMAGE_ENABLED=1" in error["message"]
    ready = httpx.get(f"{imageless_app_url}/readyz")
    assert ready.status_code == 200
    assert {name: m["state"] for name, m in ready.json()["modules"].items()} == {
        "image": "disabled",
        "image_search": "disabled",
        "voice": "disabled",
        "jobs": "disabled",
    }

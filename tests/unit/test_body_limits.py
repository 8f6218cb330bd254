"""Request bodies are bounded before any route reads them (serve_app/body_limits.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.storage import LocalObjectStore
from serve_app.body_limits import BodyLimitMiddleware, BodyLimits
from serve_app.deploy_configs import gateway_config
from serve_app.http_app import create_http_app
from serve_app.modules import ModuleBoard
from serve_app.services import Services
from serve_app.settings import load_settings

JSON_CAP, UPLOAD_CAP = 4096, 64 * 1024


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    settings = load_settings(
        None,
        {
            "LOCAL_STORAGE_DIR": str(tmp_path),
            "GATEWAY_MAX_JSON_BYTES": JSON_CAP,
            "GATEWAY_MAX_UPLOAD_BYTES": UPLOAD_CAP,
        },
    )
    config = gateway_config(settings)
    services = Services(
        config=config, store=LocalObjectStore(tmp_path), board=ModuleBoard("ai", config.enabled)
    )
    return TestClient(create_http_app(services))


def _assert_413(response: Any, setting: str) -> None:
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "payload_too_large" and setting in error["message"]


def test_a_json_body_over_the_cap_is_413_before_the_route(client: TestClient) -> None:
    body = json.dumps({"query": "x" * JSON_CAP, "limit": 5})
    response = client.post(
        "/v1/projects/p1/images/search", content=body, headers={"content-type": "application/json"}
    )
    _assert_413(response, "GATEWAY_MAX_JSON_BYTES")


def test_a_streamed_json_body_is_cut_off_at_the_cap(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"query": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = client.post(
        "/v1/projects/p1/images/search",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    _assert_413(response, "GATEWAY_MAX_JSON_BYTES")


def test_a_small_json_body_reaches_the_route(client: TestClient) -> None:
    """The body is replayed whole: the route's own validation reads and judges it."""
    response = client.post("/v1/images/generate", json={"title": "", "description": "x"})
    assert response.status_code == 422, response.text
    assert "title" in response.json()["error"]["message"]


def test_an_upload_declared_over_the_cap_is_413(client: TestClient) -> None:
    files = {"file": ("a.png", b"\x89PNG" + b"\0" * UPLOAD_CAP, "image/png")}
    response = client.post("/v1/projects/p1/images", files=files)
    _assert_413(response, "GATEWAY_MAX_UPLOAD_BYTES")


def test_bodies_in_flight_share_one_budget() -> None:
    """A second body that would pass the budget while the first is held answers 503."""
    release = asyncio.Event()
    seen: list[bytes] = []

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        seen.append(message["body"])
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = BodyLimitMiddleware(slow_app, BodyLimits(1000, 1000, 1500))

    def request(size: int) -> tuple[dict[str, Any], Any]:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/x",
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(size).encode()),
            ],
        }
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"a" * size, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        return scope, receive

    async def main() -> list[int]:
        statuses: list[int] = []

        def collector() -> Any:
            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            return send

        first = asyncio.create_task(middleware(*request(1000), collector()))
        await asyncio.sleep(0.05)
        assert middleware.in_flight_bytes == 1000
        await middleware(*request(800), collector())  # 1800 > 1500: refused at once
        release.set()
        await first
        assert middleware.in_flight_bytes == 0  # released when the response is sent
        await middleware(*request(800), collector())  # fits now
        return statuses

    assert asyncio.run(main()) == [503, 200, 200]
    assert seen == [b"a" * 1000, b"a" * 800]

"""The web console's mount at /ui, in-process: its files are served open with a strict
Content-Security-Policy, nothing else becomes open, and /v1/console/config tells the page
the server's own limits behind the key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.storage import LocalObjectStore
from core.storage.s3 import S3ObjectStore
from serve_app.console import STATIC_DIR, content_security_policy, storage_origin
from tests.unit.test_api_keys import make_client

KEY = "console-key-0123456789"


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return make_client(
        tmp_path,
        API_KEYS=KEY,
        IMAGE_MAX_PIXELS=640 * 480,
        IMAGE_DEFAULT_WIDTH=320,
        IMAGE_SEARCH_MAX_BATCH_FILES=5,
        CONSOLE_DASHBOARD_URL="https://ray.example.test:8265/",
    )


def test_the_page_is_open_and_carries_the_policy(client: TestClient) -> None:
    redirect = client.get("/ui", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"].endswith("/ui/")
    for path in ("/ui/", "/ui/index.html", "/ui/app.js", "/ui/style.css"):
        response = client.get(path)  # no key
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == content_security_policy(None)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    assert client.get("/ui/app.js").headers["content-type"].split(";")[0] in {
        "text/javascript",
        "application/javascript",
    }
    policy = directives(response.headers["content-security-policy"])
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'" and policy["connect-src"] == "'self'"
    assert policy["img-src"] == "'self' blob: data:" and policy["media-src"] == "'self' blob:"
    assert "'unsafe-inline'" not in response.headers["content-security-policy"]


def directives(policy: str) -> dict[str, str]:
    return dict(part.split(" ", 1) for part in policy.split("; "))


def s3_store(**kwargs: object) -> S3ObjectStore:
    return S3ObjectStore(
        bucket="results", endpoint_url="http://127.0.0.1:9", region="auto",
        access_key_id="id", secret_access_key="secret", **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("store", "origin"),
    [
        (lambda tmp: LocalObjectStore(tmp), None),
        (lambda _tmp: s3_store(), "http://127.0.0.1:9"),
        (lambda _tmp: s3_store(public_base_url="https://cdn.example.test/r/"),
         "https://cdn.example.test"),
    ],
)  # fmt: skip
def test_images_and_audio_may_come_from_the_object_stores_links_only(
    tmp_path: Path, store: Any, origin: str | None
) -> None:
    """With R2/S3 the page shows files from the store's presigned or public links: that
    origin, and nothing more, joins the image and media sources."""
    assert storage_origin(store(tmp_path)) == origin
    policy = directives(content_security_policy(origin))
    if origin is None:
        assert policy == directives(content_security_policy())
        return
    assert policy["img-src"] == f"'self' blob: data: {origin}"
    assert policy["media-src"] == f"'self' blob: {origin}"
    others = {k: v for k, v in policy.items() if k not in {"img-src", "media-src"}}
    assert all(origin not in value for value in others.values())
    assert others == {k: v for k, v in directives(content_security_policy()).items() if k in others}


def test_the_files_have_no_inline_script_style_or_remote_resource() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="app.js">']
    assert "<style" not in html and " style=" not in html and " on" + "click=" not in html
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), path.name  # no CDN
        assert "innerHTML" not in text and "eval(" not in text, path.name


def test_nothing_else_opens(client: TestClient) -> None:
    for method, path in (
        ("GET", "/v1/console/config"),
        ("GET", "/v1/voices/alice"),
        ("GET", "/ui/../v1/voices/alice"),
        ("GET", "/uix"),
        ("POST", "/ui/"),
        ("GET", "/openapi.json"),
    ):
        response = client.request(method, path)
        assert response.status_code in (401, 404, 405), (method, path, response.status_code)
        assert response.status_code != 200
    assert client.request("POST", "/ui/").status_code == 401  # only reads are open
    assert client.get("/ui/missing.js").status_code == 404
    assert client.get("/ui/../serve_app/settings.py").status_code in (401, 404)


def test_the_console_config_has_the_servers_limits(client: TestClient) -> None:
    response = client.get("/v1/console/config", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text
    config = response.json()
    assert config["image"]["max_pixels"] == 640 * 480
    assert config["image"]["default_width"] == 320
    assert config["image"]["side_min"] == 64 and config["image"]["side_multiple"] == 8
    assert config["image_search"]["max_batch_files"] == 5
    assert config["modules"] == {
        "image": False,
        "image_search": False,
        "voice": False,
        "jobs": False,
    }
    assert config["dashboard_url"] == "https://ray.example.test:8265/"
    assert KEY not in response.text

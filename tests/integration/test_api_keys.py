"""API keys: every route but the health probes needs `Authorization: Bearer <key>`."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from ray import serve

from serve_app.app import build_app
from tests.integration.conftest import wait_until_ready

ENV_KEY = "env-key-5a1f9c"
FILE_KEY = "file-key-77b2e0"


@pytest.fixture(scope="module")
def secured_url(serve_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("secured")
    key_file = folder / "keys.txt"
    key_file.write_text(f"# team keys\n\n{FILE_KEY}\n")
    settings = {
        "IMAGE_ENABLED": False,
        "IMAGE_SEARCH_ENABLED": False,
        "VOICE_ENABLED": False,
        "LOCAL_STORAGE_DIR": str(folder / "storage"),
        "API_KEYS": f"{ENV_KEY}, other-key",
        "API_KEYS_FILE": str(key_file),
    }
    serve.run(build_app({"env_files": [], "settings": settings}), name="secured",
              route_prefix="/secured")
    url = f"{serve_url}/secured"
    wait_until_ready(url)
    return url


def test_health_probes_stay_open(secured_url: str) -> None:
    assert httpx.get(f"{secured_url}/healthz").status_code == 200
    assert httpx.get(f"{secured_url}/readyz").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ENV_KEY}"},
     {"Authorization": "Bearer  x"}, {"Authorization": ENV_KEY}],
)
def test_missing_or_wrong_key_is_401(secured_url: str, headers: dict[str, str]) -> None:
    for method, path in (("POST", "/v1/images/generate"), ("GET", "/openapi.json"),
                         ("GET", "/v1/projects/p/images"), ("GET", "/v1/nothing")):
        response = httpx.request(method, f"{secured_url}{path}", headers=headers, json={})
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert ENV_KEY not in response.text and FILE_KEY not in response.text


@pytest.mark.parametrize("key", [ENV_KEY, "other-key", FILE_KEY])
def test_known_keys_pass(secured_url: str, key: str) -> None:
    response = httpx.post(
        f"{secured_url}/v1/images/generate",
        headers={"Authorization": f"Bearer {key}"},
        json={"title": "t"},
    )
    # Past the key check: the module is off in this app, which is the next thing said.
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "module_disabled"


def test_invalid_key_file_stops_start_up(tmp_path: Path) -> None:
    from serve_app.settings import SettingsError

    with pytest.raises(SettingsError, match="API_KEYS_FILE"):
        build_app({"env_files": [], "settings": {"API_KEYS_FILE": str(tmp_path / "missing")}})

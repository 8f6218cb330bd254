"""GET /v1/storage/{key} with the local store: results are served, private objects are not.

The FastAPI app is the Gateway's own (`create_http_app`), without Ray: this route needs only
the store and the config."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.storage import LocalObjectStore, StorageConfig
from serve_app.deploy_configs import gateway_config
from serve_app.http_app import create_http_app
from serve_app.modules import ModuleBoard
from serve_app.services import Services
from serve_app.settings import load_settings


@pytest.fixture
def client_and_store(tmp_path: Path) -> tuple[TestClient, LocalObjectStore]:
    config = gateway_config(load_settings(None, {"LOCAL_STORAGE_DIR": str(tmp_path)}))
    assert config.storage == StorageConfig(local_dir=tmp_path)
    store = LocalObjectStore(tmp_path)
    services = Services(config=config, store=store, board=ModuleBoard("ai", config.enabled))
    return TestClient(create_http_app(services)), store


def test_a_generated_voice_url_from_the_local_store_is_served(
    client_and_store: tuple[TestClient, LocalObjectStore],
) -> None:
    client, store = client_and_store
    key = "AI/VOICE/generated/user1/abc.mp3"
    store.put(key, b"ID3-not-really-audio", "audio/mpeg")
    response = client.get(store.url(key))  # the URL /v1/r2/voice/generate answers
    assert response.status_code == 200, response.text
    assert response.content == b"ID3-not-really-audio"
    assert response.headers["content-type"] == "audio/mpeg"


@pytest.mark.parametrize(
    "key",
    [
        "AI/VOICE/user1.mp3",  # a reference voice
        "AI/VOICE/user1.txt",  # its transcript
        "AI/VOICE/transcripts/abc.json",
        "backups/image_search/snapshot.db",
        "AI/VOICE/generated.mp3",  # not inside the generated folder
    ],
)
def test_private_objects_are_not_served(
    client_and_store: tuple[TestClient, LocalObjectStore], key: str
) -> None:
    client, store = client_and_store
    store.put(key, b"private", "application/octet-stream")
    response = client.get(f"/v1/storage/{key}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "object_not_found"
    assert b"private" not in response.content

"""GET /v1/voices over the Gateway's HTTP app on a real local store: which files are voices,
pages, the bound on what one request looks at, and an API key's voice scope."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.storage import LocalObjectStore
from serve_app.routes import saved_voices
from tests.unit.test_api_keys import make_client

VOICES = ["alice", "alice.v2", "bob", "shared-1", "shared-2", "zed"]
SCOPED = "scoped-voices-key-5a1c9e7b3d"
PLAIN = "plain-voices-key-0f2e4d6c8a"


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    store = LocalObjectStore(tmp_path / "storage")
    for voice in VOICES:
        store.put(f"AI/VOICE/{voice}.mp3", b"m" * (len(voice) + 10), "audio/mpeg")
    store.put("AI/VOICE/alice.txt", b"hello", "text/plain")
    store.put("AI/VOICE/bob.voice.npz", b"prepared", "application/octet-stream")
    store.put("AI/VOICE/generated/alice/1.mp3", b"speech", "audio/mpeg")  # not a voice
    store.put("AI/VOICE/transcripts/abc.json", b"{}", "application/json")
    store.put("AI/VOICE/-odd.mp3", b"x", "audio/mpeg")  # no voice id could name it
    return store


@pytest.fixture
def client(tmp_path: Path, store: LocalObjectStore) -> TestClient:
    key_file = tmp_path / "keys.yaml"
    key_file.write_text(
        f"- {{name: scoped, key: {SCOPED}, voices: [alice, 'shared-*']}}\n"
        f"- {{name: plain, key: {PLAIN}}}\n"
    )
    return make_client(tmp_path, API_KEYS_FILE=str(key_file))


def listed(client: TestClient, key: str = PLAIN, **params: Any) -> list[str]:
    """Every voice id, following next_cursor."""
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get(
            "/v1/voices", params=query, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= params.get("limit", 50)
        seen += [item["voice_id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("the cursor never ended")


def test_voices_are_listed_by_id_with_their_size(client: TestClient) -> None:
    response = client.get("/v1/voices", headers={"Authorization": f"Bearer {PLAIN}"})
    body = response.json()
    assert [item["voice_id"] for item in body["items"]] == VOICES
    assert body["next_cursor"] is None
    first = body["items"][0]
    assert first["bytes"] == len("alice") + 10 and first["last_modified"].endswith("+00:00")


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_pages_follow_the_ids(client: TestClient, limit: int) -> None:
    assert listed(client, limit=limit) == VOICES


def test_a_request_looks_at_a_bounded_number_of_files(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for only three files per request, pages end early with a cursor, and
    following it still lists every voice once."""
    monkeypatch.setattr(saved_voices, "LIST_SCAN_FILES", 3)
    monkeypatch.setattr(saved_voices, "LIST_BATCH_FILES", 2)
    first = client.get("/v1/voices", headers={"Authorization": f"Bearer {PLAIN}"}).json()
    assert len(first["items"]) < 3 and first["next_cursor"] is not None
    assert listed(client) == VOICES


def test_a_scoped_key_sees_only_its_voices(client: TestClient) -> None:
    assert listed(client, SCOPED, limit=1) == ["alice", "shared-1", "shared-2"]


@pytest.mark.parametrize("cursor", ["../x", "a/b", "", ".hidden"])
def test_a_malformed_cursor_is_422(client: TestClient, cursor: str) -> None:
    response = client.get(
        "/v1/voices", params={"cursor": cursor}, headers={"Authorization": f"Bearer {PLAIN}"}
    )
    assert response.status_code == 422 and "cursor" in response.text

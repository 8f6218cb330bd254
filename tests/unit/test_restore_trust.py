"""Nothing restored is trusted: forged rows of a snapshot (or of a database found on disk) are
quarantined and reported, future-dated snapshots are skipped, and a key that is not the image's
own is never served or deleted (Gateway file route, DELETE, VectorIndex delete sweeper).

Real SQLite files, the local object store and the VectorIndex replica class without Ray; the
forged snapshots are catalog databases with rows written by hand."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.image_keys import IMAGE_CONTENT_TYPES, image_key_problem, media_type_for_key
from core.storage import LocalObjectStore, StorageConfig
from deployments.configs import VectorIndexConfig
from deployments.vector_index import VectorIndex
from deployments.vector_store.backup import BackupManager
from deployments.vector_store.catalog import VectorCatalog
from deployments.vector_store.trust import RowRules, quarantine_untrusted_rows
from serve_app.deploy_configs import gateway_config
from serve_app.http_app import create_http_app
from serve_app.modules import ModuleBoard
from serve_app.schemas import IMAGE_ID_PATTERN, PROJECT_ID_PATTERN
from serve_app.services import Services
from serve_app.settings import load_settings
from serve_app.uploads import ACCEPTED_FORMATS, accepted_image_types
from tests.unit.test_vector_catalog import DIM, new_image, unit_vectors

Replica: Any = VectorIndex.func_or_class  # the plain class behind the Serve deployment
SEARCH = "AI/SEARCH/"
BACKUPS = "backups/image_search/"
VOICE_KEY = "AI/VOICE/user.mp3"
RULES = RowRules(search_prefix=SEARCH, vector_bytes=DIM * 4)

# (id, project, object_key, content_type, deleting): rows no upload could have written
FORGED = [
    ("voice", "p1", VOICE_KEY, "image/png", 0),
    ("backup", "p1", f"{BACKUPS}image_search-20250101T000000000000Z.sqlite3", "image/png", 0),
    ("html", "p1", f"{SEARCH}p1/html.png", "text/html", 0),
    ("html2", "p1", f"{SEARCH}p1/html2.html", "text/html", 0),
    ("other", "p1", f"{SEARCH}p2/img-0.png", "image/png", 0),  # another project's object
    ("dying", "p1", VOICE_KEY + ".bak", "image/png", 1),  # a tombstone: the sweeper's food
]


def forge(db_path: Path, rows: list[tuple[str, str, str, str, int]], **extra: Any) -> None:
    """Write rows straight into a catalog database, as a forged snapshot would hold them."""
    conn = sqlite3.connect(db_path)
    try:
        for n, (image_id, project, key, content_type, deleting) in enumerate(rows):
            conn.execute(
                "INSERT OR IGNORE INTO project (id, created_at) VALUES (?, ?)",
                (project, "2025-01-01 00:00:00.000000"),
            )
            values = {
                "id": image_id,
                "project_id": project,
                "object_key": key,
                "filename": f"{image_id}.png",
                "content_type": content_type,
                "size_bytes": 1,
                "width": 1,
                "height": 1,
                "sha256": f"forged-{image_id}",
                "created_at": "2025-01-01 00:00:00.000000",
                "label": conn.execute("SELECT coalesce(max(label), 0) + 1 FROM image").fetchone()[
                    0
                ],
                "vector": unit_vectors(1, seed=n)[0].tobytes(),
                "deleting": deleting,
            } | extra
            columns = ", ".join(values)
            marks = ", ".join("?" for _ in values)
            conn.execute(f"INSERT INTO image ({columns}) VALUES ({marks})", tuple(values.values()))
        conn.commit()
    finally:
        conn.close()


def catalog_with_good_rows(db_path: Path, count: int = 3) -> None:
    with VectorCatalog(db_path, dim=DIM, max_elements=100) as catalog:
        for i, vector in enumerate(unit_vectors(count, seed=5)):
            catalog.add(new_image(i, vector))


def image_ids(db_path: Path, table: str = "image") -> set[str]:
    conn = sqlite3.connect(db_path)
    try:
        return {row[0] for row in conn.execute(f"SELECT id FROM {table}")}
    finally:
        conn.close()


# --- the rule itself ------------------------------------------------------------------------


def test_the_key_rule_matches_what_uploads_write() -> None:
    assert accepted_image_types() == tuple(IMAGE_CONTENT_TYPES)
    assert {ct: ext for ct, ext in ACCEPTED_FORMATS.values()} == dict(IMAGE_CONTENT_TYPES)
    assert PROJECT_ID_PATTERN == r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # core.image_keys copies
    assert IMAGE_ID_PATTERN == r"^[A-Za-z0-9_-]{1,64}$"
    assert image_key_problem(SEARCH, "p1", "abc", f"{SEARCH}p1/abc.jpg", "image/jpeg") is None
    for project, image_id, key, content_type in [
        ("p1", "abc", f"{SEARCH}p1/abc.png", "image/jpeg"),  # extension of another type
        ("p1", "abc", f"{SEARCH}p1/abc.jpg", "image/svg+xml"),
        ("p1", "abc", f"{SEARCH}p2/abc.jpg", "image/jpeg"),
        ("p1", "abc", VOICE_KEY, "image/jpeg"),
        ("p1", "../x", f"{SEARCH}x.jpg", "image/jpeg"),
        ("a/b", "abc", f"{SEARCH}a/b/abc.jpg", "image/jpeg"),
    ]:
        assert image_key_problem(SEARCH, project, image_id, key, content_type), key
    # a narrower accepted set is honoured
    assert image_key_problem(SEARCH, "p1", "a", f"{SEARCH}p1/a.gif", "image/gif", ["image/png"])
    assert media_type_for_key(f"{SEARCH}p1/a.webp") == "image/webp"
    assert media_type_for_key("x/a.html") is None


# --- restoring a forged snapshot ------------------------------------------------------------


def test_forged_rows_of_a_snapshot_are_quarantined_and_reported(
    local_store: LocalObjectStore, tmp_path: Path
) -> None:
    source = tmp_path / "source.db"
    catalog_with_good_rows(source)
    forge(source, FORGED)
    manager = BackupManager(local_store, BACKUPS, keep=5, row_rules=RULES)
    key = manager.backup(source)

    restored = tmp_path / "restored" / "image_search.db"
    report = manager.restore(restored)

    assert report.key == key and report.skipped == ()
    assert report.quarantine is not None
    assert (report.quarantine.checked, report.quarantine.quarantined) == (3 + len(FORGED), 6)
    assert image_ids(restored) == {"img-0", "img-1", "img-2"}
    assert image_ids(restored, "quarantined_image") == {row[0] for row in FORGED}
    shown = report.quarantine.as_dict()
    assert shown["quarantined"] == 6 and len(shown["examples"]) == 5
    assert any(VOICE_KEY in example["reason"] for example in shown["examples"])
    conn = sqlite3.connect(restored)
    reasons = dict(conn.execute("SELECT id, reason FROM quarantined_image").fetchall())
    conn.close()
    assert "not an accepted image type" in reasons["html"]
    assert "is not its own" in reasons["other"]
    # the restored database opens, and holds only the good rows
    with VectorCatalog(restored, dim=DIM, max_elements=100) as catalog:
        assert catalog.stats() == {"p1": 3}
        assert catalog.pending_deletes() == []  # the forged tombstone is not there to sweep


def test_without_rules_a_restore_checks_no_rows(
    local_store: LocalObjectStore, tmp_path: Path
) -> None:
    source = tmp_path / "source.db"
    catalog_with_good_rows(source, count=1)
    manager = BackupManager(local_store, BACKUPS, keep=5)
    manager.backup(source)
    assert manager.restore(tmp_path / "r.db").quarantine is None


def test_odd_rows_are_quarantined_too(tmp_path: Path) -> None:
    db = tmp_path / "odd.db"
    catalog_with_good_rows(db, count=1)
    forge(db, [("short", "p1", f"{SEARCH}p1/short.png", "image/png", 0)], vector=b"\0" * 8)
    forge(db, [("name", "p1", f"{SEARCH}p1/name.png", "image/png", 0)], filename="../x\n")
    forge(db, [("width", "p1", f"{SEARCH}p1/width.png", "image/png", 0)], width="wide")
    forge(db, [("when", "p1", f"{SEARCH}p1/when.png", "image/png", 0)], created_at="soon")
    report = quarantine_untrusted_rows(db, RULES)
    assert report.quarantined == 4
    assert image_ids(db) == {"img-0"}
    assert quarantine_untrusted_rows(db, RULES).quarantined == 0  # idempotent


def test_triggers_of_a_snapshot_are_dropped(tmp_path: Path) -> None:
    """A trigger could rewrite a key after the check (on the delete's tombstone update)."""
    db = tmp_path / "trigger.db"
    catalog_with_good_rows(db, count=1)
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TRIGGER swap AFTER UPDATE OF deleting ON image BEGIN "
        f"UPDATE image SET object_key = '{VOICE_KEY}' WHERE id = NEW.id; END"
    )
    conn.commit()
    conn.close()
    report = quarantine_untrusted_rows(db, RULES)
    assert report.dropped_triggers == ("swap",) and report.quarantined == 0
    conn = sqlite3.connect(db)
    triggers = conn.execute("SELECT count(*) FROM sqlite_master WHERE type='trigger'").fetchone()
    assert triggers == (0,)
    conn.close()


def test_a_snapshot_whose_rows_cannot_be_checked_is_skipped(
    local_store: LocalObjectStore, tmp_path: Path
) -> None:
    good = tmp_path / "good.db"
    catalog_with_good_rows(good, count=1)
    manager = BackupManager(local_store, BACKUPS, keep=5, row_rules=RULES)
    older = manager.backup(good)
    broken = tmp_path / "broken.db"
    conn = sqlite3.connect(broken)
    conn.executescript(
        "CREATE TABLE project (id TEXT); CREATE TABLE image (id TEXT, project_id TEXT);"
        "INSERT INTO image VALUES ('x', 'p1');"
    )
    conn.close()
    newer = manager.backup(broken)
    report = manager.restore(tmp_path / "restored.db")
    assert report.key == older
    assert [key for key, _ in report.skipped] == [newer]
    assert "rows cannot be checked" in report.skipped[0][1]


# --- future-dated snapshots -----------------------------------------------------------------


def stamped_key(when: datetime) -> str:
    return f"{BACKUPS}image_search-{when.strftime('%Y%m%dT%H%M%S%fZ')}.sqlite3"


def test_a_future_dated_snapshot_is_skipped_and_never_pushes_real_ones_out(
    local_store: LocalObjectStore, tmp_path: Path
) -> None:
    forged_db = tmp_path / "forged.db"
    catalog_with_good_rows(forged_db, count=1)
    forge(forged_db, FORGED[:1])
    future = stamped_key(datetime.now(UTC) + timedelta(days=365))
    local_store.put(future, forged_db.read_bytes(), "application/vnd.sqlite3")

    real_db = tmp_path / "real.db"
    catalog_with_good_rows(real_db, count=2)
    manager = BackupManager(local_store, BACKUPS, keep=1, row_rules=RULES)
    first = manager.backup(real_db)
    newest = manager.backup(real_db)  # keep=1: prunes `first`, not the future-dated one

    assert manager.list_snapshots() == [future, newest]  # ranked by the timestamp
    assert local_store.head(first) is None
    assert manager.is_future(future) and not manager.is_future(newest)

    report = manager.restore(tmp_path / "restored.db")
    assert report.key == newest
    ((skipped, reason),) = report.skipped
    assert skipped == future and "future" in reason
    assert report.quarantine is not None and report.quarantine.quarantined == 0


def test_a_snapshot_within_the_clock_skew_allowance_is_used(
    local_store: LocalObjectStore, tmp_path: Path
) -> None:
    db = tmp_path / "db.db"
    catalog_with_good_rows(db, count=1)
    soon = stamped_key(datetime.now(UTC) + timedelta(seconds=60))
    local_store.put(soon, db.read_bytes(), "application/vnd.sqlite3")
    manager = BackupManager(local_store, BACKUPS, keep=3, max_clock_skew_s=300)
    assert manager.restore(tmp_path / "restored.db").key == soon
    strict = BackupManager(local_store, BACKUPS, keep=3, max_clock_skew_s=10)
    assert strict.restore(tmp_path / "other.db").key is None


def test_a_stamp_that_is_no_date_is_not_a_snapshot(local_store: LocalObjectStore) -> None:
    local_store.put(f"{BACKUPS}image_search-20251340T000000000000Z.sqlite3", b"x", "x/y")
    assert BackupManager(local_store, BACKUPS, keep=1).list_snapshots() == []


# --- the VectorIndex at start, and its delete sweeper ---------------------------------------


@pytest.fixture
def make_replica(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    replicas: list[Any] = []

    def make(db_path: Path) -> Any:
        monkeypatch.setattr(Replica, "delete_grace_s", 0.0)
        monkeypatch.setattr(Replica, "delete_sweep_interval_s", 3600.0)
        config = VectorIndexConfig(
            db_path=db_path,
            dim=DIM,
            max_elements=100,
            storage=StorageConfig(kind="local", local_dir=tmp_path / "objects"),
            backup_enabled=False,
            persist_index=False,
        )
        replica = Replica(config)
        replicas.append(replica)
        return replica

    yield make
    for replica in replicas:
        replica.__del__()


@pytest.fixture
def objects(tmp_path: Path) -> LocalObjectStore:
    store = LocalObjectStore(tmp_path / "objects")
    store.put(VOICE_KEY, b"a user's reference voice", "audio/mpeg")
    store.put(VOICE_KEY + ".bak", b"another private object", "audio/mpeg")
    store.put(f"{SEARCH}p2/img-0.png", b"p2's image", "image/png")
    return store


def test_the_index_restores_a_forged_snapshot_without_its_forged_rows(
    make_replica: Any, objects: LocalObjectStore, tmp_path: Path
) -> None:
    source = tmp_path / "source.db"
    catalog_with_good_rows(source)
    forge(source, FORGED)
    BackupManager(objects, BACKUPS, keep=5).backup(source)

    replica = make_replica(tmp_path / "live" / "image_search.db")

    startup = replica.startup_report()
    assert startup["database"] == "restored"
    assert startup["quarantined_rows"]["quarantined"] == len(FORGED)
    assert startup["quarantined_rows"]["examples"][0]["object_key"]
    assert replica.stats() == {"p1": 3}
    assert replica.get("p1", "voice") is None
    assert replica._finish_pending_deletes() == 0  # the forged tombstone went to quarantine
    assert objects.get(VOICE_KEY) == b"a user's reference voice"
    assert objects.get(VOICE_KEY + ".bak") == b"another private object"


def test_the_index_checks_a_database_found_on_disk(
    make_replica: Any, objects: LocalObjectStore, tmp_path: Path
) -> None:
    db = tmp_path / "live" / "image_search.db"
    db.parent.mkdir()
    catalog_with_good_rows(db)
    forge(db, FORGED[:2])
    replica = make_replica(db)
    startup = replica.startup_report()
    assert startup["database"] == "existing"
    assert startup["quarantined_rows"]["quarantined"] == 2
    assert replica.stats() == {"p1": 3}


def test_the_sweeper_never_deletes_a_key_that_is_not_the_images_own(
    make_replica: Any, objects: LocalObjectStore, tmp_path: Path
) -> None:
    """A tombstone that got past the start-up check (written while running): its row goes,
    the object its key names stays."""
    db = tmp_path / "live" / "image_search.db"
    replica = make_replica(db)
    replica.add(new_image(0, unit_vectors(1, seed=1)[0]))
    objects.put(f"{SEARCH}p1/img-0.png", b"own", "image/png")
    forge(db, [FORGED[-1], ("p2img", "p1", f"{SEARCH}p2/img-0.png", "image/png", 1)])
    replica.begin_delete("p1", "img-0")

    assert replica._finish_pending_deletes() == 1  # only the image's own object is deleted
    assert objects.head(f"{SEARCH}p1/img-0.png") is None
    assert objects.get(VOICE_KEY + ".bak") == b"another private object"
    assert objects.get(f"{SEARCH}p2/img-0.png") == b"p2's image"
    assert replica._catalog.pending_deletes() == []  # the forged rows are gone


# --- the Gateway: serving a file, deleting an image -----------------------------------------


class _Method:
    def __init__(self, target: Any, name: str) -> None:
        self._call = getattr(target, name)

    def remote(self, *args: Any) -> Any:
        async def call() -> Any:
            return self._call(*args)

        return call()


class _Handle:
    """A DeploymentHandle stand-in that calls the replica object in this process."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> _Method:
        return _Method(self._target, name)


@pytest.fixture
def gateway(
    make_replica: Any, objects: LocalObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[TestClient, Path]:
    db = tmp_path / "live" / "image_search.db"
    replica = make_replica(db)
    replica.add(new_image(0, unit_vectors(1, seed=1)[0]))
    objects.put(f"{SEARCH}p1/img-0.png", b"\x89PNG own image", "image/png")
    config = gateway_config(load_settings(None, {"LOCAL_STORAGE_DIR": str(tmp_path / "objects")}))
    board = ModuleBoard("ai", config.enabled)

    async def ready(spec: Any) -> None:
        return None

    monkeypatch.setattr(board, "require_ready", ready)
    services = Services(config=config, store=objects, board=board, vector_index=_Handle(replica))
    return TestClient(create_http_app(services)), db


def test_a_row_naming_another_object_is_not_served(gateway: tuple[TestClient, Path]) -> None:
    client, db = gateway
    own = client.get("/v1/projects/p1/images/img-0/file")
    assert own.status_code == 200 and own.headers["content-type"] == "image/png"

    forge(db, [FORGED[0], FORGED[2], ("p2img", "p1", f"{SEARCH}p2/img-0.png", "image/png", 0)])
    for image_id in ("voice", "html", "p2img"):
        response = client.get(f"/v1/projects/p1/images/{image_id}/file")
        assert response.status_code == 404, (image_id, response.text)
        assert response.json()["error"]["code"] == "object_not_found"
        assert b"reference voice" not in response.content and b"p2's" not in response.content


def test_deleting_a_row_naming_another_object_keeps_that_object(
    gateway: tuple[TestClient, Path], objects: LocalObjectStore
) -> None:
    client, db = gateway
    forge(db, [FORGED[0], ("p2img", "p1", f"{SEARCH}p2/img-0.png", "image/png", 0)])
    for image_id in ("voice", "p2img"):
        response = client.delete(f"/v1/projects/p1/images/{image_id}")
        assert response.status_code == 200, response.text
    assert objects.get(VOICE_KEY) == b"a user's reference voice"
    assert objects.get(f"{SEARCH}p2/img-0.png") == b"p2's image"
    assert client.delete("/v1/projects/p1/images/voice").status_code == 404  # the row is gone
    assert client.delete("/v1/projects/p1/images/img-0").status_code == 200
    assert objects.head(f"{SEARCH}p1/img-0.png") is None  # an own key is deleted as before

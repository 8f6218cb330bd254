"""SQLite snapshots to object storage (local directory and S3 on moto) and restoring them."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core.records import NewImage
from core.storage import ObjectStore
from deployments.vector_store.backup import BackupManager, snapshot_to_file, verify_database
from deployments.vector_store.catalog import VectorCatalog

DIM = 16
PREFIX = "backups/image_search/"


def unit_vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


VECTORS = unit_vectors(3000, seed=42)


def new_image(i: int, project: str = "p1") -> NewImage:
    return NewImage(
        id=f"img-{i}",
        project_id=project,
        object_key=f"AI/SEARCH/{project}/img-{i}.png",
        filename=f"{i}.png",
        content_type="image/png",
        size_bytes=10,
        width=8,
        height=8,
        sha256=f"sha-{i}",
        vector=VECTORS[i],
    )


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each backup test runs against the local directory store and against S3 (moto)."""
    name = "local_store" if request.param == "local" else "s3_store"
    return request.getfixturevalue(name)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "live" / "image_search.db"


@pytest.fixture
def catalog(db_path: Path) -> Iterator[VectorCatalog]:
    cat = VectorCatalog(db_path, dim=DIM, max_elements=10_000, hnsw_m=8, ef_construction=32)
    try:
        yield cat
    finally:
        cat.close()


def row_ids(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT id FROM image")}
    finally:
        conn.close()


def test_snapshot_to_file_is_a_consistent_copy(
    catalog: VectorCatalog, db_path: Path, tmp_path: Path
) -> None:
    for i in range(20):
        catalog.add(new_image(i))
    target = tmp_path / "snap.sqlite3"
    snapshot_to_file(db_path, target)
    assert verify_database(target) is None
    assert row_ids(target) == {f"img-{i}" for i in range(20)}
    conn = sqlite3.connect(target)
    try:  # a self-contained file, not a WAL database
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()
    with pytest.raises(FileNotFoundError):
        snapshot_to_file(tmp_path / "missing.db", tmp_path / "x.sqlite3")
    assert not (tmp_path / "missing.db").exists()


def test_backup_during_writes_holds_every_acknowledged_row(
    store: ObjectStore, catalog: VectorCatalog, db_path: Path, tmp_path: Path
) -> None:
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        i = 0
        try:
            while not stop.is_set() and i < len(VECTORS):
                record = catalog.add(new_image(i))
                with lock:
                    acknowledged.append(record.id)
                i += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while True:
            with lock:
                if len(acknowledged) >= 100:
                    break
            stop.wait(0.01)
        manager = BackupManager(store, PREFIX, keep=5)
        keys: list[tuple[str, set[str]]] = []
        for _ in range(3):
            with lock:
                before = set(acknowledged)
            keys.append((manager.backup(db_path), before))
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors
    for key, before in keys:
        assert key.startswith(PREFIX + "image_search-") and key.endswith("Z.sqlite3")
        copy = tmp_path / "check.sqlite3"
        copy.write_bytes(store.get(key))
        assert verify_database(copy) is None
        ids = row_ids(copy)
        assert before <= ids, f"snapshot {key} misses {len(before - ids)} acknowledged rows"
        copy.unlink()
    assert manager.list_snapshots() == sorted((k for k, _ in keys), reverse=True)


def test_keep_prunes_to_newest(store: ObjectStore, catalog: VectorCatalog, db_path: Path) -> None:
    catalog.add(new_image(0))
    manager = BackupManager(store, PREFIX, keep=2)
    made = [manager.backup(db_path) for _ in range(4)]
    assert manager.list_snapshots() == [made[3], made[2]]
    # objects that are not snapshots are left alone
    store.put(PREFIX + "notes.txt", b"hello", "text/plain")
    manager.backup(db_path)
    assert len(manager.list_snapshots()) == 2
    assert store.head(PREFIX + "notes.txt") is not None


def test_restore_latest_into_empty_path(
    store: ObjectStore, catalog: VectorCatalog, db_path: Path, tmp_path: Path
) -> None:
    manager = BackupManager(store, PREFIX, keep=3)
    for i in range(10):
        catalog.add(new_image(i, project="a" if i % 2 else "b"))
    manager.backup(db_path)
    for i in range(10, 25):
        catalog.add(new_image(i, project="a" if i % 2 else "b"))
    catalog.begin_delete("a", "img-11")
    catalog.finish_delete("a", "img-11")
    newest = manager.backup(db_path)

    target = tmp_path / "restored" / "image_search.db"
    assert manager.restore_latest(target) == newest
    with VectorCatalog(target, dim=DIM, max_elements=10_000) as restored:
        assert restored.stats() == {"a": 11, "b": 13}
        for i in range(25):
            project = "a" if i % 2 else "b"
            if i == 11:
                assert restored.get(project, "img-11") is None
                continue
            assert restored.get(project, f"img-{i}") is not None
            assert restored.search(project, VECTORS[i], 1)[0].record.id == f"img-{i}"


def test_restore_falls_back_when_newest_is_corrupt(
    store: ObjectStore, catalog: VectorCatalog, db_path: Path, tmp_path: Path
) -> None:
    manager = BackupManager(store, PREFIX, keep=5)
    for i in range(5):
        catalog.add(new_image(i))
    older = manager.backup(db_path)
    catalog.add(new_image(5))
    newest = manager.backup(db_path)
    good = store.get(newest)
    corrupt = bytearray(good)
    corrupt[100:4096] = b"\xa5" * (4096 - 100)  # header and schema page trashed
    store.put(newest, bytes(corrupt), "application/vnd.sqlite3")

    target = tmp_path / "restored.db"
    assert manager.restore_latest(target) == older
    assert row_ids(target) == {f"img-{i}" for i in range(5)}
    assert not list(target.parent.glob(".restored.db.restore-*"))  # no temp files left

    # a snapshot that is SQLite but lacks the catalog's tables is skipped too
    stray = tmp_path / "stray.db"
    conn = sqlite3.connect(stray)
    conn.execute("CREATE TABLE unrelated (x)")
    conn.commit()
    conn.close()
    store.put(newest, stray.read_bytes(), "application/vnd.sqlite3")
    store.delete(older)
    assert manager.restore_latest(tmp_path / "none.db") is None
    assert not (tmp_path / "none.db").exists()


def test_restore_never_overwrites(
    store: ObjectStore, catalog: VectorCatalog, db_path: Path, tmp_path: Path
) -> None:
    manager = BackupManager(store, PREFIX, keep=2)
    catalog.add(new_image(0))
    manager.backup(db_path)
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"precious")
    assert manager.restore_latest(existing) is None
    assert existing.read_bytes() == b"precious"
    # the live database is left alone as well
    catalog.add(new_image(1))
    assert manager.restore_latest(db_path) is None
    assert catalog.get("p1", "img-1") is not None


def test_restore_with_no_snapshots(store: ObjectStore, tmp_path: Path) -> None:
    manager = BackupManager(store, PREFIX, keep=1)
    assert manager.list_snapshots() == []
    assert manager.restore_latest(tmp_path / "x.db") is None
    assert not (tmp_path / "x.db").exists()
    with pytest.raises(ValueError):
        BackupManager(store, PREFIX, keep=0)

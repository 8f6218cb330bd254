"""`BackupManager.restore` says which snapshot it restored and which damaged ones it skipped."""

from __future__ import annotations

from pathlib import Path

from core.storage import ObjectStore
from deployments.vector_store.backup import BackupManager, RestoreReport
from deployments.vector_store.catalog import VectorCatalog
from tests.unit.test_backup import DIM, PREFIX, new_image


def test_restore_reports_the_key_and_the_skipped_snapshots(
    local_store: ObjectStore, tmp_path: Path
) -> None:
    db_path = tmp_path / "live" / "image_search.db"
    manager = BackupManager(local_store, PREFIX, keep=5)
    with VectorCatalog(db_path, dim=DIM, max_elements=100) as catalog:
        catalog.add(new_image(1))
        older = manager.backup(db_path)
        catalog.add(new_image(2))
        newest = manager.backup(db_path)
    local_store.put(newest, b"SQLite format 3\x00" + b"\x5a" * 4000, "application/vnd.sqlite3")

    report = manager.restore(tmp_path / "restored.db")
    assert report.key == older
    ((skipped_key, reason),) = report.skipped
    assert skipped_key == newest and reason

    assert manager.restore(tmp_path / "restored.db") == RestoreReport()  # exists: untouched
    local_store.delete(older)
    nothing = manager.restore(tmp_path / "again.db")
    assert nothing.key is None and [key for key, _ in nothing.skipped] == [newest]
    assert not (tmp_path / "again.db").exists()

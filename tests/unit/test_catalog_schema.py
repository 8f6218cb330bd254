"""The catalog's schema version and migrations, on the database and the backup snapshot that
the code of the release before schema versions wrote (tests/fixtures/catalog_v1, made by
commit bca19de), and on databases this code creates."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from core.errors import EmbeddingSpaceChanged
from core.records import EmbeddingSpace
from core.storage import ObjectStore
from deployments.vector_store import schema
from deployments.vector_store.backup import SNAPSHOT_CONTENT_TYPE, BackupManager
from deployments.vector_store.catalog import VectorCatalog
from deployments.vector_store.schema import LATEST, LegacyModel, SchemaTooNew, upgrade
from deployments.vector_store.trust import RowRules

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "catalog_v1"
LEGACY = LegacyModel("ViT-B-32", "laion2b_s34b_b79k")
LEGACY_SPACE = EmbeddingSpace(model="ViT-B-32", pretrained="laion2b_s34b_b79k", dim=8)
PREFIX = "backups/image_search/"


def legacy_vector(seed: int) -> np.ndarray:
    """The vector the fixture's maker stored for image number `seed`."""
    v = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
    return v / np.linalg.norm(v)


def copy_fixture(name: str, tmp_path: Path) -> Path:
    target = tmp_path / "db" / "image_search.db"
    target.parent.mkdir(parents=True)
    shutil.copyfile(FIXTURES / name, target)
    return target


def version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def shape(path: Path) -> dict[str, object]:
    """Every table's columns (name, type, not null, default) and every index's definition."""
    with sqlite3.connect(path) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'sqlite_sequence'"
            )
        ]
        columns = {
            t: sorted((c[1], c[2], c[3], c[4]) for c in conn.execute(f"PRAGMA table_info({t})"))
            for t in tables
        }
        indexes = sorted(
            (r[0], r[1])
            for r in conn.execute("SELECT tbl_name, name FROM sqlite_master WHERE type = 'index'")
        )
    return {"columns": columns, "indexes": indexes}


def test_the_fixture_is_from_before_schema_versions() -> None:
    assert version(FIXTURES / "catalog.sqlite3") == 0
    with sqlite3.connect(FIXTURES / "catalog.sqlite3") as conn:
        columns = {c[1] for c in conn.execute("PRAGMA table_info(image)")}
    assert "space_key" not in columns


def test_a_database_of_the_last_release_opens_upgraded_and_intact(tmp_path: Path) -> None:
    db = copy_fixture("catalog.sqlite3", tmp_path)
    with VectorCatalog(
        db, dim=8, max_elements=100, model=LEGACY.model, pretrained=LEGACY.pretrained
    ) as catalog:
        assert catalog.upgrade_report.before == 0
        assert catalog.upgrade_report.after == LATEST
        assert catalog.active_space == LEGACY_SPACE
        assert not catalog.reembedding
        assert catalog.stats() == {"cats": 5, "dogs": 2}
        hits = catalog.search("cats", legacy_vector(3), 1)
        assert hits[0].record.id == "cats-img-3"
        assert hits[0].record.filename == "사진 3.png"
        assert hits[0].record.space_key == LEGACY_SPACE.key
        # the delete left half-done by the old release is still there to finish
        assert [r.id for r in catalog.pending_deletes()] == ["dogs-img-7"]
    assert version(db) == LATEST


def test_migrated_and_new_databases_have_the_same_schema(tmp_path: Path) -> None:
    migrated = copy_fixture("catalog.sqlite3", tmp_path)
    VectorCatalog(migrated, dim=8, max_elements=100).close()
    fresh = tmp_path / "fresh.db"
    VectorCatalog(fresh, dim=8, max_elements=100).close()
    assert version(fresh) == LATEST
    assert shape(migrated) == shape(fresh)


def test_upgrading_twice_changes_nothing(tmp_path: Path) -> None:
    db = copy_fixture("catalog.sqlite3", tmp_path)
    first = upgrade(db, LEGACY)
    assert first.before == 0 and first.after == LATEST and len(first.applied) == 1
    assert "ViT-B-32/laion2b_s34b_b79k (8-d)" in first.applied[0]
    second = upgrade(db, LEGACY)
    assert second.before == LATEST and second.applied == ()


def test_a_failing_step_leaves_the_database_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = copy_fixture("catalog.sqlite3", tmp_path)
    real_step = schema._STEPS[0]

    def crashing(conn: sqlite3.Connection, legacy: LegacyModel) -> str:
        real_step(conn, legacy)
        raise RuntimeError("power cut")

    monkeypatch.setattr(schema, "_STEPS", (crashing,))
    with pytest.raises(RuntimeError, match="power cut"):
        upgrade(db, LEGACY)
    assert version(db) == 0
    with sqlite3.connect(db) as conn:
        assert "space_key" not in {c[1] for c in conn.execute("PRAGMA table_info(image)")}
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "embedding_space" not in tables
    monkeypatch.undo()
    assert upgrade(db, LEGACY).after == LATEST  # and the next start succeeds


def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    db = copy_fixture("catalog.sqlite3", tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    with pytest.raises(SchemaTooNew, match="newer release"):
        VectorCatalog(db, dim=8, max_elements=100)


def test_legacy_vectors_of_a_changed_model_are_kept_until_re_embedded(tmp_path: Path) -> None:
    db = copy_fixture("catalog.sqlite3", tmp_path)
    with VectorCatalog(db, dim=4, max_elements=100, model="xlm-roberta-base-ViT-B-32") as catalog:
        assert catalog.active_space == LEGACY_SPACE
        assert catalog.target_space.dim == 4
        assert catalog.reembedding
        assert catalog.reembed_counts() == (0, 7)
        assert catalog.search("cats", legacy_vector(0), 1)[0].record.id == "cats-img-0"
        with pytest.raises(EmbeddingSpaceChanged) as raised:
            catalog.search("cats", legacy_vector(0), 1, space_key=catalog.target_space.key)
        assert raised.value.details["active"] == LEGACY_SPACE.key


@pytest.mark.parametrize("store_name", ["local_store", "s3_store"])
def test_a_snapshot_of_the_last_release_restores_upgraded(
    tmp_path: Path, store_name: str, request: pytest.FixtureRequest
) -> None:
    store: ObjectStore = request.getfixturevalue(store_name)
    key = f"{PREFIX}image_search-20261101T000000000000Z.sqlite3"
    store.put(key, (FIXTURES / "snapshot.sqlite3").read_bytes(), SNAPSHOT_CONTENT_TYPE)
    db = tmp_path / "restored" / "image_search.db"
    rules = RowRules(search_prefix="image-search/")
    report = BackupManager(store, PREFIX, keep=3, row_rules=rules, legacy=LEGACY).restore(db)
    assert report.key == key
    assert report.quarantine is not None and report.quarantine.quarantined == 0
    assert version(db) == LATEST
    with VectorCatalog(db, dim=8, max_elements=100, model=LEGACY.model) as catalog:
        # the model name differs from the legacy one: the catalog holds on to its vectors
        assert catalog.active_space == LEGACY_SPACE
        assert catalog.stats() == {"cats": 5, "dogs": 2}


def test_a_snapshot_from_a_newer_release_is_skipped(
    tmp_path: Path, local_store: ObjectStore
) -> None:
    newer = tmp_path / "newer.sqlite3"
    shutil.copyfile(FIXTURES / "snapshot.sqlite3", newer)
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST + 5}")
    older_key = f"{PREFIX}image_search-20261101T000000000000Z.sqlite3"
    newer_key = f"{PREFIX}image_search-20261102T000000000000Z.sqlite3"
    local_store.put(older_key, (FIXTURES / "snapshot.sqlite3").read_bytes(), SNAPSHOT_CONTENT_TYPE)
    local_store.put(newer_key, newer.read_bytes(), SNAPSHOT_CONTENT_TYPE)
    db = tmp_path / "restored.db"
    report = BackupManager(local_store, PREFIX, keep=3, legacy=LEGACY).restore(db)
    assert report.key == older_key
    assert report.skipped == (
        (newer_key, f"written by a newer server (schema version {LATEST + 5})"),
    )


def test_rows_are_checked_against_the_dimension_of_their_own_model(tmp_path: Path) -> None:
    """After a model change, rows of the old and new dimension are both valid; a row whose
    vector fits neither its model nor names a known one is quarantined."""
    from deployments.vector_store.trust import quarantine_untrusted_rows

    db = copy_fixture("catalog.sqlite3", tmp_path)
    upgrade(db, LEGACY)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE image SET vector = zeroblob(16) WHERE id = 'cats-img-1'")
        conn.execute("UPDATE image SET space_key = 'nobody|x|8' WHERE id = 'cats-img-2'")
    report = quarantine_untrusted_rows(db, RowRules(search_prefix="image-search/"))
    reasons = {i: r for i, _p, _k, r in report.examples}
    assert report.quarantined == 2
    assert reasons["cats-img-1"] == "vector has 16 bytes, not 32"
    assert reasons["cats-img-2"].startswith("vector of an unknown model")

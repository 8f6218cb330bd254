"""VectorCatalog's saved hnswlib indexes: loaded only when they match SQLite, else rebuilt."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import hnswlib
import numpy as np
import pytest

from core.errors import ServiceUnavailable
from deployments.vector_store import hnsw_index
from deployments.vector_store.catalog import VectorCatalog
from tests.unit.test_vector_catalog import DIM, new_image, unit_vectors


def open_catalog(db_path: Path, **kwargs: object) -> VectorCatalog:
    options: dict[str, object] = {
        "dim": DIM,
        "max_elements": 1000,
        "hnsw_m": 16,
        "ef_construction": 100,
    }
    options.update(kwargs)
    return VectorCatalog(db_path, **options)  # type: ignore[arg-type]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "catalog" / "image_search.db"


def assert_all_found(cat: VectorCatalog, vectors: np.ndarray, ids: list[int], project: str = "p1"):
    for i in ids:
        hits = cat.search(project, vectors[i], 1)
        assert hits and hits[0].record.id == f"img-{i}", (i, hits[:1])


def test_saved_index_is_loaded_on_open(db_path: Path) -> None:
    vectors = unit_vectors(60, seed=1)
    with open_catalog(db_path) as cat:
        for i in range(40):
            cat.add(new_image(i, vectors[i], project="a" if i % 2 else "b"))
        cat.begin_delete("a", "img-1")  # tombstoned, unfinished
        assert cat.unsaved_changes() == 41
    # close() saved both projects, each in its own file named by a hash of the id
    files = sorted(p.name for p in cat.index_dir.iterdir())
    assert files == sorted(cat.index_path(p).name for p in ("a", "b"))
    with open_catalog(db_path) as cat:
        assert cat.open_report == {"a": "loaded", "b": "loaded"}
        assert cat.stats() == {"a": 19, "b": 20}
        assert cat.unsaved_changes() == 0
        for i in range(40):
            project = "a" if i % 2 else "b"
            ids = {h.record.id for h in cat.search(project, vectors[i], 3)}
            if i == 1:
                assert "img-1" not in ids
            else:
                assert cat.search(project, vectors[i], 1)[0].record.id == f"img-{i}"
        # writes after a load work, with fresh labels
        for i in range(40, 60):
            cat.add(new_image(i, vectors[i], project="a"))
        assert_all_found(cat, vectors, list(range(40, 60)), project="a")
        labels = [r.label for r in cat.list_images("a", 100, None).items]
        assert len(labels) == len(set(labels))
        assert cat.save_indexes() == ["a"]  # only the changed project is written again
        assert cat.save_indexes() == []


def test_a_file_older_than_the_database_is_ignored_and_rebuilt(db_path: Path) -> None:
    vectors = unit_vectors(30, seed=2)
    cat = open_catalog(db_path)
    for i in range(20):
        cat.add(new_image(i, vectors[i]))
    assert cat.save_indexes() == ["p1"]
    for i in range(20, 30):  # committed to SQLite after the last save...
        cat.add(new_image(i, vectors[i]))
    cat.begin_delete("p1", "img-3")
    cat.close(save=False)  # ...and then the process dies before the next save
    with open_catalog(db_path) as reopened:
        assert reopened.open_report["p1"].startswith("rebuilt (stale")
        assert reopened.stats() == {"p1": 29}
        assert_all_found(reopened, vectors, [i for i in range(30) if i != 3])
        assert "img-3" not in {h.record.id for h in reopened.search("p1", vectors[3], 5)}
    with open_catalog(db_path) as again:  # the rebuilt index was saved at close
        assert again.open_report == {"p1": "loaded"}
        assert again.stats() == {"p1": 29}


def test_rows_changed_without_a_generation_bump_are_noticed(db_path: Path) -> None:
    """A writer that does not know the marker (an older release) still invalidates the file."""
    vectors = unit_vectors(12, seed=3)
    with open_catalog(db_path) as cat:
        for i in range(10):
            cat.add(new_image(i, vectors[i]))
    with sqlite3.connect(db_path) as conn:
        conn.execute("DELETE FROM image WHERE id = 'img-4'")
    with open_catalog(db_path) as reopened:
        assert (
            reopened.open_report["p1"] == "rebuilt (stale: the rows differ from the saved index's)"
        )
        assert reopened.stats() == {"p1": 9}
        assert "img-4" not in {h.record.id for h in reopened.search("p1", vectors[4], 9)}


@pytest.mark.parametrize("damage", ["flipped bytes", "truncated", "another index", "missing"])
def test_a_damaged_or_foreign_file_is_ignored_and_rebuilt(db_path: Path, damage: str) -> None:
    vectors = unit_vectors(25, seed=4)
    with open_catalog(db_path) as cat:
        for i in range(25):
            cat.add(new_image(i, vectors[i]))
        path = cat.index_path("p1")
    data = bytearray(path.read_bytes())
    if damage == "flipped bytes":
        data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
        path.write_bytes(bytes(data))
    elif damage == "truncated":
        path.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "another index":  # a valid hnswlib file of the same size, other vectors
        other = hnswlib.Index(space="ip", dim=DIM)
        other.init_index(max_elements=1024, M=16, ef_construction=100, allow_replace_deleted=True)
        other.add_items(unit_vectors(25, seed=99), np.arange(25))
        other.save_index(str(path))
    else:
        path.unlink()
    with open_catalog(db_path) as reopened:
        assert reopened.open_report["p1"].startswith("rebuilt (")
        assert reopened.stats() == {"p1": 25}
        assert_all_found(reopened, vectors, list(range(25)))
    with open_catalog(db_path) as again:
        assert again.open_report == {"p1": "loaded"}


def test_a_crash_between_rename_and_marker_rebuilds(db_path: Path) -> None:
    """The file is renamed into place before SQLite records it: a crash in between leaves a
    new file under an old marker, which must not be trusted."""
    vectors = unit_vectors(15, seed=5)
    cat = open_catalog(db_path)
    for i in range(10):
        cat.add(new_image(i, vectors[i]))
    cat.save_indexes()
    for i in range(10, 15):
        cat.add(new_image(i, vectors[i]))
    cat._indexes["p1"].index.save_index(str(cat.index_path("p1")))  # renamed, not recorded
    cat.close(save=False)
    with open_catalog(db_path) as reopened:
        assert reopened.open_report["p1"].startswith("rebuilt (stale")
        assert_all_found(reopened, vectors, list(range(15)))


def test_other_index_parameters_rebuild(db_path: Path) -> None:
    vectors = unit_vectors(10, seed=6)
    with open_catalog(db_path) as cat:
        for i in range(10):
            cat.add(new_image(i, vectors[i]))
    with open_catalog(db_path, hnsw_m=8) as reopened:
        assert reopened.open_report["p1"].startswith("rebuilt (saved with other parameters")
        assert_all_found(reopened, vectors, list(range(10)))


def test_deleted_labels_of_a_loaded_index_are_never_handed_out_again(db_path: Path) -> None:
    vectors = unit_vectors(40, seed=7)
    with open_catalog(db_path) as cat:
        for i in range(20):
            cat.add(new_image(i, vectors[i]))
        for victim in ("img-19", "img-18", "img-5"):  # the largest labels go from SQLite
            cat.begin_delete("p1", victim)
            cat.finish_delete("p1", victim)
    with open_catalog(db_path) as reopened:
        assert reopened.open_report == {"p1": "loaded"}
        assert reopened._indexes["p1"].next_label == 20  # not max(label in SQLite) + 1 = 18
        for i in range(20, 40):  # reuse the deleted slots
            reopened.add(new_image(i, vectors[i]))
        alive = [i for i in range(40) if i not in (5, 18, 19)]
        assert_all_found(reopened, vectors, alive)
        labels = [r.label for r in reopened.list_images("p1", 100, None).items]
        assert len(labels) == len(set(labels)) == 37


def test_legacy_database_without_markers_rebuilds_then_saves(db_path: Path) -> None:
    vectors = unit_vectors(10, seed=8)
    with open_catalog(db_path, persist_indexes=False) as cat:
        for i in range(10):
            cat.add(new_image(i, vectors[i]))
        assert cat.open_report == {}
    assert not (db_path.parent / (db_path.name + ".hnsw")).exists()  # nothing saved
    with sqlite3.connect(db_path) as conn:
        conn.execute("DROP TABLE index_state")  # a database from before persistence
    with open_catalog(db_path) as cat:
        assert cat.open_report == {"p1": "rebuilt (no saved index)"}
    with open_catalog(db_path) as cat:
        assert cat.open_report == {"p1": "loaded"}
        assert_all_found(cat, vectors, list(range(10)))
    with open_catalog(db_path, persist_indexes=False) as cat:
        assert cat.open_report == {"p1": "rebuilt (persistence off)"}


def test_save_is_due_after_enough_changes(db_path: Path) -> None:
    vectors = unit_vectors(6, seed=9)
    with open_catalog(db_path, save_after_changes=5) as cat:
        for i in range(4):
            cat.add(new_image(i, vectors[i]))
        assert not cat.save_due.is_set()
        cat.add_many([new_image(4, vectors[4]), new_image(5, vectors[5])])
        cat.begin_delete("p1", "img-0")
        assert cat.unsaved_changes() == 6 and cat.save_due.is_set()
        assert cat.save_indexes() == ["p1"]
        assert not cat.save_due.is_set() and cat.unsaved_changes() == 0


def test_a_rolled_back_first_write_saves_nothing(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors = unit_vectors(2, seed=10)

    def broken_add(self: object, vectors: np.ndarray, labels: np.ndarray) -> None:
        raise RuntimeError("injected hnswlib failure")

    with open_catalog(db_path) as cat:
        monkeypatch.setattr(hnsw_index.ProjectIndex, "add", broken_add)
        with pytest.raises(ServiceUnavailable):
            cat.add(new_image(0, vectors[0], project="never"))
        monkeypatch.undo()
        assert cat.save_indexes() == []
        cat.add(new_image(1, vectors[1]))
        assert cat.save_indexes() == ["p1"]
    with open_catalog(db_path) as reopened:
        assert reopened.open_report == {"p1": "loaded"}
        assert not reopened.project_exists("never")

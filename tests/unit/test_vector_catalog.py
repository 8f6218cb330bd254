"""VectorCatalog: SQLite + hnswlib, on real files, with random unit vectors (seeded)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core.errors import Conflict, InvalidInput, ServiceUnavailable
from core.records import ImageRecord, NewImage
from deployments.vector_store import hnsw_index
from deployments.vector_store.catalog import VectorCatalog

DIM = 32


def unit_vectors(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def new_image(
    i: int | str, vector: np.ndarray, project: str = "p1", sha: str | None = None
) -> NewImage:
    return NewImage(
        id=f"img-{i}",
        project_id=project,
        object_key=f"AI/SEARCH/{project}/img-{i}.png",
        filename=f"photo-{i}.png",
        content_type="image/png",
        size_bytes=100 + (hash(str(i)) % 100),
        width=64,
        height=48,
        sha256=sha or f"sha-{project}-{i}",
        vector=vector,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "catalog" / "image_search.db"


@pytest.fixture
def catalog(db_path: Path) -> Iterator[VectorCatalog]:
    cat = VectorCatalog(db_path, dim=DIM, max_elements=1000, hnsw_m=16, ef_construction=100)
    try:
        yield cat
    finally:
        cat.close()


def fill(catalog: VectorCatalog, n: int, seed: int = 0, project: str = "p1") -> np.ndarray:
    vectors = unit_vectors(n, seed)
    for i, v in enumerate(vectors):
        catalog.add(new_image(i, v, project))
    return vectors


def test_added_vector_is_its_own_top_hit(catalog: VectorCatalog) -> None:
    vectors = fill(catalog, 50, seed=1)
    for i in (0, 17, 49):
        hits = catalog.search("p1", vectors[i], 5)
        assert hits[0].record.id == f"img-{i}"
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert isinstance(hits[0].score, float)
        assert isinstance(hits[0].record, ImageRecord)


def test_search_returns_min_of_limit_and_live_sorted(catalog: VectorCatalog) -> None:
    vectors = fill(catalog, 7, seed=2)
    query = unit_vectors(1, seed=99)[0]
    hits = catalog.search("p1", query, 100)
    assert len(hits) == 7
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    expected = sorted(((float(vectors[i] @ query), f"img-{i}") for i in range(7)), reverse=True)
    assert [h.record.id for h in hits] == [name for _s, name in expected]
    assert scores == pytest.approx([s for s, _n in expected], abs=1e-5)
    assert len(catalog.search("p1", query, 3)) == 3
    assert catalog.search("empty-project", query, 10) == []


def test_add_returns_record_and_get_finds_it(catalog: VectorCatalog) -> None:
    vector = unit_vectors(1, seed=3)[0]
    record = catalog.add(new_image("a", vector))
    assert record.duplicate is False
    assert record.project_id == "p1" and record.object_key == "AI/SEARCH/p1/img-a.png"
    assert record.created_at.tzinfo is not None
    assert catalog.get("p1", "img-a") == record
    assert catalog.get("p1", "missing") is None
    assert catalog.get("other", "img-a") is None
    assert catalog.project_exists("p1") and not catalog.project_exists("other")
    assert catalog.stats() == {"p1": 1}


def test_duplicate_sha_returns_existing_record_and_adds_nothing(catalog: VectorCatalog) -> None:
    v1, v2 = unit_vectors(2, seed=4)
    first = catalog.add(new_image(1, v1, sha="same"))
    again = catalog.add(new_image(2, v2, sha="same"))
    assert again.duplicate is True and again.id == first.id == "img-1"
    assert catalog.get("p1", "img-2") is None
    assert catalog.stats() == {"p1": 1}
    assert catalog.find_duplicate("p1", "same") == first.model_copy(update={"duplicate": True})
    assert catalog.find_duplicate("p1", "other") is None
    # the same bytes in another project are not a duplicate
    assert catalog.add(new_image(3, v2, project="p2", sha="same")).duplicate is False


def test_capacity_conflict_names_the_limit(db_path: Path) -> None:
    with VectorCatalog(db_path, dim=DIM, max_elements=3) as cat:
        vectors = unit_vectors(5, seed=5)
        for i in range(3):
            cat.add(new_image(i, vectors[i]))
        with pytest.raises(Conflict) as err:
            cat.add(new_image(3, vectors[3]))
        assert "IMAGE_SEARCH_MAX_ELEMENTS=3" in err.value.message
        assert "p1" in err.value.message
        # a duplicate of a stored image is still answered when full
        assert cat.add(new_image(9, vectors[4], sha="sha-p1-0")).duplicate is True
        # deleting frees a slot
        cat.begin_delete("p1", "img-0")
        cat.finish_delete("p1", "img-0")
        cat.add(new_image(3, vectors[3]))
        assert cat.stats() == {"p1": 3}
        with pytest.raises(Conflict):
            cat.add_many([new_image(10, vectors[4])])


def test_invalid_vectors_are_refused(catalog: VectorCatalog) -> None:
    with pytest.raises(InvalidInput):
        catalog.add(new_image(1, np.ones(DIM + 1, dtype=np.float32)))
    with pytest.raises(InvalidInput):
        catalog.add(new_image(2, np.full(DIM, np.nan, dtype=np.float32)))
    bad = np.ones(DIM, dtype=np.float32)
    bad[3] = np.inf
    with pytest.raises(InvalidInput):
        catalog.add(new_image(3, bad))
    with pytest.raises(InvalidInput):
        catalog.add(new_image(4, np.zeros(DIM, dtype=np.float32)))
    with pytest.raises(InvalidInput):
        catalog.search("p1", np.ones((2, DIM), dtype=np.float32), 3)
    with pytest.raises(InvalidInput):
        catalog.search("p1", np.ones(DIM, dtype=np.float32), 0)
    assert catalog.stats() == {}


def test_id_or_object_key_taken_is_a_conflict(catalog: VectorCatalog) -> None:
    v1, v2 = unit_vectors(2, seed=6)
    catalog.add(new_image(1, v1))
    with pytest.raises(Conflict):
        catalog.add(new_image(1, v2, sha="different"))
    assert catalog.stats() == {"p1": 1}
    catalog.add(new_image(2, v2))  # the catalog still works


def test_delete_flow(catalog: VectorCatalog) -> None:
    vectors = fill(catalog, 10, seed=7)
    record = catalog.begin_delete("p1", "img-4")
    assert record is not None and record.id == "img-4" and record.deleting is True
    assert catalog.get("p1", "img-4") is None
    page = catalog.list_images("p1", 100, None)
    assert "img-4" not in {r.id for r in page.items} and page.total == 9
    hits = catalog.search("p1", vectors[4], 10)
    assert len(hits) == 9 and "img-4" not in {h.record.id for h in hits}
    assert catalog.stats() == {"p1": 9}
    assert [r.id for r in catalog.pending_deletes()] == ["img-4"]
    # a retried DELETE sees the tombstone again and can finish
    again = catalog.begin_delete("p1", "img-4")
    assert again is not None and again.id == "img-4"
    catalog.finish_delete("p1", "img-4")
    assert catalog.pending_deletes() == []
    assert catalog.begin_delete("p1", "img-4") is None
    catalog.finish_delete("p1", "img-4")  # idempotent
    assert catalog.begin_delete("p1", "never-existed") is None
    # the same bytes can be uploaded again after the delete
    again_added = catalog.add(new_image("4b", vectors[4], sha="sha-p1-4"))
    assert again_added.duplicate is False
    assert catalog.search("p1", vectors[4], 1)[0].record.id == "img-4b"


def test_pending_deletes_waits_for_the_grace_period(db_path: Path) -> None:
    """A tombstone is offered to the sweeper only once it is `older_than_s` old; one found in
    the database at open counts from the open; a finished one is gone."""
    grace = 0.3
    vectors = unit_vectors(3, seed=17)
    with VectorCatalog(db_path, dim=DIM, max_elements=10) as cat:
        for i, v in enumerate(vectors):
            cat.add(new_image(i, v))
        cat.begin_delete("p1", "img-1")
        assert cat.pending_deletes(older_than_s=grace) == []  # its DELETE may still be running
        assert [r.id for r in cat.pending_deletes()] == ["img-1"]
        time.sleep(grace + 0.05)
        cat.begin_delete("p1", "img-2")  # a fresh one, next to the old one
        assert [r.id for r in cat.pending_deletes(older_than_s=grace)] == ["img-1"]
        cat.finish_delete("p1", "img-1")
        assert cat.pending_deletes(older_than_s=grace) == []
    with VectorCatalog(db_path, dim=DIM, max_elements=10) as reopened:
        assert reopened.pending_deletes(older_than_s=grace) == []  # counts from the open
        time.sleep(grace + 0.05)
        pending = reopened.pending_deletes(older_than_s=grace)
        assert [r.id for r in pending] == ["img-2"] and pending[0].deleting is True


def test_reupload_while_delete_pending_is_not_a_duplicate(catalog: VectorCatalog) -> None:
    v = unit_vectors(1, seed=8)[0]
    catalog.add(new_image(1, v, sha="bytes"))
    catalog.begin_delete("p1", "img-1")
    fresh = catalog.add(new_image(2, v, sha="bytes"))
    assert fresh.duplicate is False and fresh.id == "img-2"
    catalog.finish_delete("p1", "img-1")
    assert [h.record.id for h in catalog.search("p1", v, 5)] == ["img-2"]


def test_restart_rebuilds_from_sqlite(db_path: Path) -> None:
    vectors = unit_vectors(40, seed=9)
    with VectorCatalog(db_path, dim=DIM, max_elements=100) as cat:
        for i, v in enumerate(vectors[:30]):
            cat.add(new_image(i, v, project="a" if i % 2 else "b"))
        cat.begin_delete("a", "img-1")  # tombstoned, unfinished
        cat.begin_delete("b", "img-2")
        cat.finish_delete("b", "img-2")
        before = cat.stats()
    with VectorCatalog(db_path, dim=DIM, max_elements=100) as cat:
        assert cat.stats() == before == {"a": 14, "b": 14}
        assert [r.id for r in cat.pending_deletes()] == ["img-1"]
        for i in range(30):
            project = "a" if i % 2 else "b"
            hits = cat.search(project, vectors[i], 3)
            if i in (1, 2):
                assert f"img-{i}" not in {h.record.id for h in hits}
            else:
                assert hits[0].record.id == f"img-{i}"
                assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        # adding after a restart allocates fresh labels and works
        for i, v in enumerate(vectors[30:], start=30):
            cat.add(new_image(i, v, project="a"))
        assert cat.search("a", vectors[35], 1)[0].record.id == "img-35"
        labels = [r.label for r in cat.list_images("a", 100, None).items]
        assert len(labels) == len(set(labels))
    with VectorCatalog(db_path, dim=DIM, max_elements=100) as cat:
        assert cat.stats() == {"a": 24, "b": 14}


def test_list_pagination_newest_first(catalog: VectorCatalog) -> None:
    vectors = unit_vectors(23, seed=10)
    for i, v in enumerate(vectors[:15]):
        catalog.add(new_image(f"{i:02d}", v))
    # a batch shares one created_at: the id breaks the tie
    catalog.add_many([new_image(f"{i:02d}", v) for i, v in enumerate(vectors[15:], start=15)])
    catalog.add(new_image("x", unit_vectors(1, seed=11)[0], project="other"))
    catalog.begin_delete("p1", "img-03")

    seen: list[ImageRecord] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = catalog.list_images("p1", 5, cursor)
        pages += 1
        assert page.total == 22
        assert len(page.items) <= 5
        seen.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 5
    ids = [r.id for r in seen]
    assert len(ids) == len(set(ids)) == 22
    assert "img-03" not in ids
    keys = [(r.created_at, r.id) for r in seen]
    assert keys == sorted(keys, reverse=True)
    assert ids[0] == "img-22" and ids[-1] == "img-00"

    exact = catalog.list_images("p1", 22, None)
    assert len(exact.items) == 22 and exact.next_cursor is None
    for bad in ("not base64 !!", "Zm9v", "", "////"):
        if bad == "":
            continue  # an empty cursor is the first page
        with pytest.raises(InvalidInput):
            catalog.list_images("p1", 5, bad)
    with pytest.raises(InvalidInput):
        catalog.list_images("p1", 0, None)
    empty = catalog.list_images("nobody", 10, None)
    assert empty.items == [] and empty.total == 0 and empty.next_cursor is None


def test_add_many(catalog: VectorCatalog) -> None:
    vectors = unit_vectors(8, seed=12)
    catalog.add(new_image(0, vectors[0]))
    batch = [new_image(i, vectors[i]) for i in range(1, 6)]
    batch.append(new_image(6, vectors[6], sha="sha-p1-0"))  # duplicate of a stored image
    batch.append(new_image(7, vectors[7], sha="sha-p1-2"))  # duplicate within the batch
    records = catalog.add_many(batch)
    assert [r.id for r in records] == [
        "img-1",
        "img-2",
        "img-3",
        "img-4",
        "img-5",
        "img-0",
        "img-2",
    ]
    assert [r.duplicate for r in records] == [False] * 5 + [True, True]
    assert catalog.stats() == {"p1": 6}
    for i in range(6):
        assert catalog.search("p1", vectors[i], 1)[0].record.id == f"img-{i}"
    assert catalog.add_many([]) == []
    with pytest.raises(InvalidInput):
        catalog.add_many([new_image(20, vectors[0], project="a"), new_image(21, vectors[1])])
    with pytest.raises(InvalidInput):
        catalog.add_many([new_image(22, vectors[0]), new_image(22, vectors[1], sha="z")])


def test_add_many_capacity_is_checked_for_the_whole_batch(db_path: Path) -> None:
    with VectorCatalog(db_path, dim=DIM, max_elements=4) as cat:
        vectors = unit_vectors(6, seed=13)
        cat.add(new_image(0, vectors[0]))
        with pytest.raises(Conflict, match="IMAGE_SEARCH_MAX_ELEMENTS=4"):
            cat.add_many([new_image(i, vectors[i]) for i in range(1, 5)])
        assert cat.stats() == {"p1": 1}
        records = cat.add_many([new_image(i, vectors[i]) for i in range(1, 4)])
        assert len(records) == 3 and cat.stats() == {"p1": 4}


def test_index_failure_leaves_nothing_behind(
    catalog: VectorCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors = unit_vectors(4, seed=14)
    catalog.add(new_image(0, vectors[0]))

    def broken_add(self: object, vectors: np.ndarray, labels: np.ndarray) -> None:
        raise RuntimeError("injected hnswlib failure")

    monkeypatch.setattr(hnsw_index.ProjectIndex, "add", broken_add)
    with pytest.raises(ServiceUnavailable):
        catalog.add(new_image(1, vectors[1]))
    with pytest.raises(ServiceUnavailable):
        catalog.add(new_image(9, vectors[3], project="new-project"))
    monkeypatch.undo()

    assert catalog.get("p1", "img-1") is None
    assert catalog.stats() == {"p1": 1}
    assert not catalog.project_exists("new-project")
    assert [h.record.id for h in catalog.search("p1", vectors[1], 5)] == ["img-0"]
    record = catalog.add(new_image(1, vectors[1]))  # the same image now goes in
    assert record.duplicate is False
    assert catalog.search("p1", vectors[1], 1)[0].record.id == "img-1"


def test_failure_after_the_vector_landed_hides_it(
    catalog: VectorCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors = unit_vectors(3, seed=15)
    catalog.add(new_image(0, vectors[0]))
    real_add = hnsw_index.ProjectIndex.add

    def add_then_fail(self: hnsw_index.ProjectIndex, v: np.ndarray, lab: np.ndarray) -> None:
        real_add(self, v, lab)
        raise RuntimeError("injected failure after add_items")

    monkeypatch.setattr(hnsw_index.ProjectIndex, "add", add_then_fail)
    with pytest.raises(ServiceUnavailable):
        catalog.add(new_image(1, vectors[1]))
    monkeypatch.undo()
    assert catalog.get("p1", "img-1") is None
    assert [h.record.id for h in catalog.search("p1", vectors[1], 5)] == ["img-0"]
    catalog.add(new_image(2, vectors[2]))
    assert [h.record.id for h in catalog.search("p1", vectors[2], 5)][0] == "img-2"
    assert catalog.stats() == {"p1": 2}


def test_closed_catalog_refuses_calls(db_path: Path) -> None:
    cat = VectorCatalog(db_path, dim=DIM, max_elements=10)
    cat.close()
    cat.close()
    with pytest.raises(ServiceUnavailable):
        cat.get("p1", "x")


def test_concurrent_add_search_delete(db_path: Path) -> None:
    cat = VectorCatalog(db_path, dim=DIM, max_elements=5000, hnsw_m=16, ef_construction=64)
    vectors = unit_vectors(4000, seed=16)
    for i in range(50):
        cat.add(new_image(i, vectors[i]))
    deleted: set[str] = set()
    added: list[str] = [f"img-{i}" for i in range(50)]
    errors: list[BaseException] = []
    guard = threading.Lock()
    stop = time.monotonic() + 2.0
    next_id = iter(range(50, 4000))
    id_lock = threading.Lock()

    def adder() -> None:
        while time.monotonic() < stop:
            with id_lock:
                i = next(next_id, None)
            if i is None:
                return
            cat.add(new_image(i, vectors[i]))
            with guard:
                added.append(f"img-{i}")

    def searcher(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while time.monotonic() < stop:
            with guard:
                gone = set(deleted)
            query = vectors[int(rng.integers(0, 4000))]
            hits = cat.search("p1", query, int(rng.integers(1, 30)))
            bad = gone & {h.record.id for h in hits}
            assert not bad, f"search returned deleted images {bad}"
            scores = [h.score for h in hits]
            assert scores == sorted(scores, reverse=True)

    def deleter(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while time.monotonic() < stop:
            with guard:
                candidates = [a for a in added if a not in deleted]
            if not candidates:
                continue
            victim = candidates[int(rng.integers(0, len(candidates)))]
            if cat.begin_delete("p1", victim) is not None:
                with guard:
                    deleted.add(victim)
                if rng.random() < 0.7:
                    cat.finish_delete("p1", victim)
            assert cat.get("p1", victim) is None

    def run(target, *args) -> None:  # type: ignore[no-untyped-def]
        try:
            target(*args)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(adder,)),
        threading.Thread(target=run, args=(adder,)),
        threading.Thread(target=run, args=(searcher, 1)),
        threading.Thread(target=run, args=(searcher, 2)),
        threading.Thread(target=run, args=(deleter, 3)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert deleted and len(added) > 60
    live = set(added) - deleted
    assert cat.stats() == {"p1": len(live)}
    page_ids: set[str] = set()
    cursor: str | None = None
    while True:
        page = cat.list_images("p1", 500, cursor)
        page_ids |= {r.id for r in page.items}
        cursor = page.next_cursor
        if cursor is None:
            break
    assert page_ids == live
    cat.close()
    with VectorCatalog(db_path, dim=DIM, max_elements=5000) as reopened:
        assert reopened.stats() == {"p1": len(live)}
        some = sorted(live)[0]
        i = int(some.split("-")[1])
        assert reopened.search("p1", vectors[i], 1)[0].record.id == some


def test_similar_is_a_search_by_the_stored_vector_without_the_image_itself(
    catalog: VectorCatalog,
) -> None:
    vectors = unit_vectors(8, seed=31)
    for i, vector in enumerate(vectors):
        catalog.add(new_image(i, vector))
    catalog.add(new_image("other", vectors[0], project="p2"))  # another project: never a hit
    similar = catalog.similar("p1", "img-3", 4)
    assert similar is not None
    by_vector = catalog.search("p1", vectors[3], 5)
    assert by_vector[0].record.id == "img-3"
    assert [h.record.id for h in similar] == [h.record.id for h in by_vector[1:]]
    assert [h.score for h in similar] == pytest.approx([h.score for h in by_vector[1:]])
    assert all(h.record.project_id == "p1" for h in similar)
    assert len(catalog.similar("p1", "img-3", 100) or []) == 7  # every other live image
    assert catalog.similar("p1", "nope", 3) is None
    assert catalog.similar("p2", "img-3", 3) is None  # ids are per project
    catalog.begin_delete("p1", "img-5")
    assert catalog.similar("p1", "img-5", 3) is None  # being deleted: gone
    assert "img-5" not in [h.record.id for h in catalog.similar("p1", "img-3", 100) or []]
    with pytest.raises(InvalidInput):
        catalog.similar("p1", "img-3", 0)


def fill_project(catalog: VectorCatalog, project: str, n: int) -> None:
    for i, vector in enumerate(unit_vectors(n, seed=len(project))):
        catalog.add(new_image(f"{project}-{i}", vector, project))


def test_projects_are_listed_by_id_with_their_live_counts(catalog: VectorCatalog) -> None:
    for project, n in (("b_2", 3), ("a-1", 2), ("abc", 1), ("c", 2)):
        fill_project(catalog, project, n)
    catalog.begin_delete("c", "img-c-0")  # being deleted: not counted
    catalog.begin_delete("c", "img-c-1")
    catalog.finish_delete("c", "img-c-1")

    page = catalog.list_projects(limit=10)
    assert [(p.project_id, p.images) for p in page.items] == [
        ("a-1", 2),
        ("abc", 1),
        ("b_2", 3),
        ("c", 0),
    ]
    assert page.next_cursor is None
    newest = catalog.list_images("b_2", 1).items[0]
    (b2,) = [p for p in page.items if p.project_id == "b_2"]
    assert b2.last_added_at == newest.created_at and b2.created_at <= newest.created_at
    assert page.items[-1].last_added_at is None  # no live image left

    first = catalog.list_projects(limit=3)
    assert [p.project_id for p in first.items] == ["a-1", "abc", "b_2"]
    assert first.next_cursor == "b_2"
    rest = catalog.list_projects(limit=3, after=first.next_cursor)
    assert [p.project_id for p in rest.items] == ["c"] and rest.next_cursor is None


@pytest.mark.parametrize(
    ("scope", "listed"),
    [
        (["*"], ["a-1", "a_x", "abc", "b"]),
        (["a*"], ["a-1", "a_x", "abc"]),
        (["a_*"], ["a_x"]),  # '_' is a character here, not SQL LIKE's wildcard
        (["abc", "b"], ["abc", "b"]),
        (["b*", "a-1"], ["a-1", "b"]),
        ([], []),
        (["zzz"], []),
    ],
)
def test_projects_are_listed_within_a_keys_scope(
    catalog: VectorCatalog, scope: list[str], listed: list[str]
) -> None:
    for project in ("a-1", "a_x", "abc", "b"):
        fill_project(catalog, project, 1)
    page = catalog.list_projects(limit=2, scope=scope)
    seen = [p.project_id for p in page.items]
    while page.next_cursor is not None:
        page = catalog.list_projects(limit=2, after=page.next_cursor, scope=scope)
        seen += [p.project_id for p in page.items]
    assert seen == listed

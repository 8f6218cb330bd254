"""VectorCatalog.duplicates: groups of near-identical images on real SQLite + hnswlib."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core.errors import Conflict, InvalidInput
from core.records import DuplicatePage
from deployments.vector_store import duplicates as dup
from deployments.vector_store.catalog import VectorCatalog
from tests.unit.test_vector_catalog import DIM, new_image, unit_vectors


def near(base: np.ndarray, cosine: float, seed: int) -> np.ndarray:
    """A unit vector at exactly `cosine` from unit `base`."""
    rng = np.random.default_rng(seed)
    other = rng.standard_normal(base.shape)
    other -= (other @ base) * base
    other /= np.linalg.norm(other)
    return (cosine * base + np.sqrt(1 - cosine**2) * other).astype(np.float32)


# Planted groups: name -> number of copies of one base image (the base is the oldest).
PLANTED = {"a": 4, "b": 3, "c": 2, "d": 2, "e": 2}


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[VectorCatalog]:
    cat = VectorCatalog(tmp_path / "db" / "c.db", dim=DIM, max_elements=1000, hnsw_m=16)
    try:
        yield cat
    finally:
        cat.close()


def plant(catalog: VectorCatalog, singles: int = 30) -> dict[str, list[str]]:
    """Singletons plus the PLANTED groups, added interleaved; returns each group's ids,
    oldest first."""
    bases = unit_vectors(len(PLANTED) + singles, seed=5)
    groups: dict[str, list[str]] = {name: [] for name in PLANTED}
    order: list[tuple[str, np.ndarray]] = []
    for g, (name, copies) in enumerate(PLANTED.items()):
        order.append((f"{name}0", bases[g]))
        order += [
            (f"{name}{c}", near(bases[g].astype(np.float64), 0.97, c)) for c in range(1, copies)
        ]
    order += [(f"s{i}", v) for i, v in enumerate(bases[len(PLANTED) :])]
    # Interleaved at random, each group's images keeping their order (the base is the oldest).
    shuffled = [order[i] for i in np.random.default_rng(1).permutation(len(order))]
    for name in PLANTED:
        at = [i for i, item in enumerate(shuffled) if item[0][0] == name]
        for i, item in zip(at, sorted((shuffled[i] for i in at), key=lambda x: x[0]), strict=True):
            shuffled[i] = item
    for name, vector in shuffled:
        record = catalog.add(new_image(name, vector))
        if not name.startswith("s"):
            groups[name[0]].append(record.id)
    return groups


def all_pages(catalog: VectorCatalog, limit: int, **kwargs: object) -> list[DuplicatePage]:
    pages = [catalog.duplicates("p1", limit=limit, **kwargs)]  # type: ignore[arg-type]
    while pages[-1].next_cursor:
        pages.append(
            catalog.duplicates("p1", limit=limit, cursor=pages[-1].next_cursor, **kwargs)  # type: ignore[arg-type]
        )
    return pages


def ids(page: DuplicatePage) -> list[list[str]]:
    return [[hit.record.id for hit in group.members] for group in page.groups]


def test_planted_groups_are_found_largest_first_and_paged_exactly_once(
    catalog: VectorCatalog,
) -> None:
    planted = plant(catalog)
    first = catalog.duplicates("p1", threshold=0.95, limit=100)
    assert first.total == len(PLANTED) and first.next_cursor is None
    assert first.scanned == 30 + sum(PLANTED.values())
    assert (first.threshold, first.neighbours) == (0.95, dup.DEFAULT_NEIGHBOURS)
    found = ids(first)
    assert sorted(map(sorted, found)) == sorted(sorted(g) for g in planted.values())
    assert [len(g) for g in found] == [4, 3, 2, 2, 2]
    for group in first.groups:
        oldest = min(group.members, key=lambda h: (h.record.created_at, h.record.id))
        assert group.members[0].record.id == oldest.record.id
        assert group.members[0].score == pytest.approx(1.0)
        assert all(h.score == pytest.approx(0.97, abs=1e-3) for h in group.members[1:])
        assert group.size == len(group.members)
    # Size ties (the pairs) come oldest first.
    firsts = [g.members[0].record.created_at for g in first.groups[2:]]
    assert firsts == sorted(firsts)
    # limit 2: three pages, every group exactly once, in the same order.
    pages = all_pages(catalog, limit=2, threshold=0.95)
    assert [len(p.groups) for p in pages] == [2, 2, 1]
    assert [g for p in pages for g in ids(p)] == found
    assert {p.total for p in pages} == {5} and {p.generation for p in pages} == {first.generation}
    # Above the planted 0.97 nothing groups.
    assert catalog.duplicates("p1", threshold=0.99).total == 0


def test_an_add_or_delete_makes_the_next_first_page_scan_again(
    catalog: VectorCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = plant(catalog)
    scans: list[int] = []
    real_scan = dup.scan_groups

    def counted(*args: object, **kwargs: object) -> tuple[dup.Group, ...]:
        scans.append(1)
        return real_scan(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dup, "scan_groups", counted)
    before = catalog.duplicates("p1")
    again = catalog.duplicates("p1", limit=1)
    assert again.generation == before.generation and len(scans) == 1  # kept: no second scan
    assert len(catalog.duplicates("p1", threshold=0.96).groups) == 5 and len(scans) == 2
    # A new copy of a singleton makes a new pair.
    catalog.add(new_image("s3-copy", unit_vectors(36, seed=5)[len(PLANTED) + 3]))
    after_add = catalog.duplicates("p1")
    assert after_add.generation > before.generation and after_add.total == before.total + 1
    assert ["img-s3", "img-s3-copy"] in ids(after_add)
    assert len(scans) == 3
    # Deleting one image of a pair dissolves it; deleting a copy of "a" leaves a group of 3.
    catalog.begin_delete("p1", "img-s3-copy")
    catalog.begin_delete("p1", planted["a"][3])
    after_delete = catalog.duplicates("p1")
    assert after_delete.total == before.total
    flat = [i for group in ids(after_delete) for i in group]
    assert "img-s3-copy" not in flat and planted["a"][3] not in flat
    assert planted["a"][:3] in ids(after_delete)  # still oldest first
    catalog.finish_delete("p1", planted["a"][3])
    assert catalog.duplicates("p1").generation > after_delete.generation


def test_a_cursor_continues_its_scan_without_images_deleted_since(catalog: VectorCatalog) -> None:
    planted = plant(catalog)
    first = catalog.duplicates("p1", limit=1)
    assert ids(first)[0][0] == planted["a"][0]
    # Delete one image of each pair; the pages of the old scan skip the pairs, and never show
    # the deleted images; "b" loses one image but stays a group.
    gone = {planted["b"][2], planted["c"][1], planted["d"][0], planted["e"][1]}
    for image_id in gone:
        catalog.begin_delete("p1", image_id)
    pages = [first]
    while pages[-1].next_cursor:
        pages.append(catalog.duplicates("p1", limit=1, cursor=pages[-1].next_cursor))
    assert len(pages) == 5 and {p.total for p in pages} == {5}
    assert {p.generation for p in pages} == {first.generation}
    shown = [i for p in pages[1:] for g in ids(p) for i in g]
    assert not gone & set(shown)
    assert [len(p.groups) for p in pages[1:]] == [1, 0, 0, 0]  # "b" (2 left), then the pairs
    assert pages[1].groups[0].size == 3  # the scan's size
    # A fresh first page sees the project as it is now.
    now = catalog.duplicates("p1", limit=10)
    assert now.generation > first.generation and now.total == 2


def test_a_cursor_whose_scan_is_gone(catalog: VectorCatalog) -> None:
    plant(catalog)
    first = catalog.duplicates("p1", limit=2)
    assert first.next_cursor is not None
    catalog._duplicate_scans = dup.ScanCache()  # as after eviction or a restart
    # The project did not change: the same scan is made again, the cursor goes on.
    second = catalog.duplicates("p1", limit=2, cursor=first.next_cursor)
    assert second.generation == first.generation and len(second.groups) == 2
    catalog.add(new_image("late", unit_vectors(1, seed=77)[0]))
    catalog._duplicate_scans = dup.ScanCache()
    with pytest.raises(Conflict, match="start again without a cursor"):
        catalog.duplicates("p1", limit=2, cursor=first.next_cursor)
    with pytest.raises(InvalidInput, match="another duplicates listing"):
        catalog.duplicates("p1", limit=2, cursor=first.next_cursor, threshold=0.9)
    with pytest.raises(InvalidInput, match="another duplicates listing"):
        catalog.duplicates("p2", limit=2, cursor=first.next_cursor)


def test_parameters_and_empty_projects(catalog: VectorCatalog) -> None:
    for kwargs in ({"threshold": 0.5}, {"threshold": 1.01}, {"limit": 0}, {"k": 0}, {"k": 65}):
        with pytest.raises(InvalidInput):
            catalog.duplicates("p1", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="malformed cursor"):
        catalog.duplicates("p1", cursor="nope")
    empty = catalog.duplicates("nobody")
    assert (empty.total, empty.groups, empty.next_cursor, empty.scanned) == (0, [], None, 0)
    catalog.add(new_image(1, unit_vectors(1, seed=2)[0]))
    one = catalog.duplicates("p1")
    assert (one.total, one.scanned) == (0, 1)


def test_searches_and_deletes_go_on_during_a_scan_and_deleted_images_never_show(
    catalog: VectorCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = plant(catalog)
    in_scan, release = threading.Event(), threading.Event()
    real_scan = dup.scan_groups

    def slow_scan(*args: object, **kwargs: object) -> tuple[dup.Group, ...]:
        in_scan.set()
        assert release.wait(30)
        return real_scan(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dup, "scan_groups", slow_scan)
    result: list[DuplicatePage] = []
    scanner = threading.Thread(target=lambda: result.append(catalog.duplicates("p1")))
    scanner.start()
    try:
        assert in_scan.wait(30)
        # The scan holds no lock now: reads and writes go through.
        assert catalog.search("p1", unit_vectors(1, seed=9)[0], 3)
        assert catalog.begin_delete("p1", planted["b"][1]) is not None
        catalog.finish_delete("p1", planted["b"][1])
    finally:
        release.set()
        scanner.join(30)
    (page,) = result
    flat = [i for group in ids(page) for i in group]
    assert planted["b"][1] not in flat  # deleted while the scan ran: left out
    assert sorted(ids(page)[1]) == sorted(set(planted["b"]) - {planted["b"][1]})
    assert catalog.duplicates("p1").generation > page.generation  # the delete: scanned again

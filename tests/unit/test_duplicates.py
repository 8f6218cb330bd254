"""Near-duplicate grouping (`deployments.vector_store.duplicates`): pure numpy, no Ray."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InvalidInput
from deployments.vector_store import duplicates as dup
from deployments.vector_store.hnsw_index import HnswParams, ProjectIndex


def unit(rows: list[list[float]]) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_neighbours(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k+1 nearest rows (itself included), exactly: what hnswlib approximates."""
    sims = vectors @ vectors.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, : k + 1]
    return order.astype(np.int64), np.take_along_axis(sims, order, axis=1).astype(np.float32)


def near(base: np.ndarray, cosine: float, seed: int) -> np.ndarray:
    """A unit vector at exactly `cosine` from unit `base`."""
    rng = np.random.default_rng(seed)
    other = rng.standard_normal(base.shape).astype(np.float64)
    other -= (other @ base) * base
    other /= np.linalg.norm(other)
    return (cosine * base + np.sqrt(1 - cosine**2) * other).astype(np.float32)


def groups_of(vectors: np.ndarray, threshold: float, k: int = 4) -> list[list[int]]:
    neighbours, scores = exact_neighbours(vectors, k)
    return [rows.tolist() for rows, _ in dup.group_rows(vectors, neighbours, scores, threshold)]


def orthogonal(n: int, dim: int = 16) -> np.ndarray:
    return np.eye(dim, dtype=np.float32)[:n]


def test_threshold_is_inclusive_and_edges_below_it_do_not_join() -> None:
    # Pairs (0, 1) at exactly 0.95 and (2, 3) at 0.9499 by construction; scores as given.
    neighbours = np.array([[0, 1], [1, 0], [2, 3], [3, 2]], dtype=np.int64)
    scores = np.array([[1, 0.95], [1, 0.95], [1, 0.9499], [1, 0.9499]], dtype=np.float32)
    vectors = orthogonal(4)
    found = dup.group_rows(vectors, neighbours, scores, 0.95)
    assert [rows.tolist() for rows, _ in found] == [[0, 1]]
    assert [rows.tolist() for rows, _ in dup.group_rows(vectors, neighbours, scores, 0.9499)] == [
        [0, 1],
        [2, 3],
    ]


def test_groups_are_transitive_and_scores_are_against_the_oldest() -> None:
    base = orthogonal(1)[0]
    a = near(base, 0.97, seed=1)
    # b is 0.97 from a but further from base: joined through a, not directly.
    b = near(a, 0.97, seed=2)
    assert float(b @ base) < 0.95
    vectors = np.stack([base, orthogonal(5)[4], a, b])
    (only,) = dup.group_rows(vectors, *exact_neighbours(vectors, 3), 0.95)
    rows, scores = only
    assert rows.tolist() == [0, 2, 3]  # the oldest first, then by score to it
    assert scores[0] == 1.0
    assert scores[1] == pytest.approx(0.97, abs=1e-5)
    assert scores[2] == pytest.approx(float(b @ base), abs=1e-5)
    assert scores[2] < 0.95  # transitive member: its own score may be under the threshold


def test_singletons_and_self_matches_are_not_groups() -> None:
    vectors = orthogonal(5)
    neighbours, scores = exact_neighbours(vectors, 4)
    assert dup.group_rows(vectors, neighbours, scores, 0.8) == []
    # An identical vector makes a group; the image itself (score 1) never does.
    twin = np.vstack([vectors, vectors[2:3]])
    assert groups_of(twin, 0.99) == [[2, 5]]


def test_one_sided_neighbour_lists_still_join() -> None:
    vectors = unit([[1, 0, 0], [0.99, 0.141, 0], [0, 0, 1]])
    # Row 1 lists row 0, row 0 does not list row 1 (hnswlib's lists are not symmetric).
    neighbours = np.array([[0, 2], [1, 0], [2, 1]], dtype=np.int64)
    scores = np.array([[1, 0], [1, 0.99], [1, 0.1]], dtype=np.float32)
    assert [r.tolist() for r, _ in dup.group_rows(vectors, neighbours, scores, 0.95)] == [[0, 1]]


def test_missing_neighbours_are_ignored() -> None:
    vectors = orthogonal(3)
    neighbours = np.array([[0, -1], [1, -1], [2, -1]], dtype=np.int64)
    scores = np.array([[1, -np.inf], [1, -np.inf], [1, -np.inf]], dtype=np.float32)
    assert dup.group_rows(vectors, neighbours, scores, 0.8) == []
    assert (
        dup.group_rows(np.empty((0, 4), np.float32), np.empty((0, 2), np.int64), scores, 0.9) == []
    )


def test_order_is_size_then_oldest_and_does_not_depend_on_input_order_of_edges() -> None:
    basis = orthogonal(8, dim=8)
    members = {  # group -> positions
        "pair_late": [6, 7],
        "triple": [3, 4, 5],
        "pair_early": [0, 2],
    }
    vectors = np.empty((8, 8), dtype=np.float32)
    vectors[1] = basis[1]  # a singleton between them
    for i, rows in enumerate(members.values()):
        anchor = basis[[7, 3, 0][i]]
        for j, row in enumerate(rows):
            vectors[row] = anchor if j == 0 else near(anchor, 0.98 - 0.005 * j, seed=row)
    neighbours, scores = exact_neighbours(vectors, 3)
    expected = [[3, 4, 5], [0, 2], [6, 7]]
    assert [r.tolist() for r, _ in dup.group_rows(vectors, neighbours, scores, 0.95)] == expected
    # Shuffle each row's neighbour list: same groups, same order, same scores.
    rng = np.random.default_rng(0)
    perm = np.stack([rng.permutation(neighbours.shape[1]) for _ in range(len(neighbours))])
    shuffled = dup.group_rows(
        vectors,
        np.take_along_axis(neighbours, perm, 1),
        np.take_along_axis(scores, perm, 1),
        0.95,
    )
    assert [r.tolist() for r, _ in shuffled] == expected
    first = dup.group_rows(vectors, neighbours, scores, 0.95)
    for (_, a), (_, b) in zip(first, shuffled, strict=True):
        np.testing.assert_array_equal(a, b)


def test_members_follow_the_oldest_by_score_then_age() -> None:
    base = orthogonal(1, dim=8)[0]
    vectors = np.stack([base, near(base, 0.96, 1), near(base, 0.99, 2), near(base, 0.96, 3)])
    (only,) = dup.group_rows(vectors, *exact_neighbours(vectors, 3), 0.95)
    rows, scores = only
    assert rows.tolist() == [0, 2, 1, 3]
    assert scores.tolist() == pytest.approx([1.0, 0.99, 0.96, 0.96], abs=1e-5)


def test_components_match_a_reference_on_random_graphs() -> None:
    rng = np.random.default_rng(7)
    for n in (1, 2, 10, 200):
        m = rng.integers(0, 3 * n + 1)
        src = rng.integers(0, n, m).astype(np.int64)
        dst = rng.integers(0, n, m).astype(np.int64)
        root = dup.components(n, src, dst)
        reference = list(range(n))  # plain union-find

        def find(x: int, parents: list[int] = reference) -> int:
            while parents[x] != x:
                x = parents[x]
            return x

        for u, v in zip(src.tolist(), dst.tolist(), strict=True):
            ru, rv = find(u), find(v)
            reference[max(ru, rv)] = min(ru, rv)
        assert root.tolist() == [find(i) for i in range(n)]


def test_rows_of_labels_maps_and_marks_unknown_labels() -> None:
    labels = np.array([40, 7, 19, 3], dtype=np.int64)  # oldest first, not sorted
    found = np.array([[19, 3, -1], [40, 99, 7]], dtype=np.int64)
    assert dup.rows_of_labels(labels, found).tolist() == [[2, 3, -1], [0, -1, 1]]
    assert dup.rows_of_labels(np.empty(0, np.int64), found).tolist() == [[-1] * 3] * 2


def test_scan_groups_on_an_hnswlib_copy_skips_deleted_labels() -> None:
    dim = 16
    params = HnswParams(dim, m=8, ef_construction=50, ef_search=16)
    rng = np.random.default_rng(3)
    base = rng.standard_normal((20, dim)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    vectors = np.vstack([base, near(base[4].astype(np.float64), 0.99, 9)[None], base[9:10]])
    labels = np.arange(100, 100 + len(vectors), dtype=np.int64)
    index = ProjectIndex.build(params, labels, vectors, 1000, int(labels.max()))
    copy = index.snapshot()
    groups = dup.scan_groups(copy, labels, vectors, 0.95, 4, threads=2)
    assert [g.labels for g in groups] == [(104, 120), (109, 121)]
    assert groups[0].scores == pytest.approx((1.0, 0.99), abs=1e-4)
    # A label deleted in the live index before the copy is neither a query nor a neighbour.
    index.mark_deleted([120])
    live = labels != 120
    again = dup.scan_groups(index.snapshot(), labels[live], vectors[live], 0.95, 4, threads=2)
    assert [g.labels for g in again] == [(109, 121)]
    # The first copy is private: it still holds 120.
    assert 120 in dup.scan_groups(copy, labels, vectors, 0.95, 4)[0].labels


def test_aligned_keeps_the_order_of_labels_and_drops_the_missing() -> None:
    stored = np.array([5, 9, 2], dtype=np.int64)  # what SQLite still holds, any order
    matrix = np.arange(6, dtype=np.float32).reshape(3, 2)
    labels, vectors = dup.aligned(np.array([2, 7, 5], dtype=np.int64), stored, matrix)
    assert labels.tolist() == [2, 5]  # 7 was deleted in between
    assert vectors.tolist() == [[4, 5], [0, 1]]


def test_cursor_round_trip_and_refusals() -> None:
    owner = dup.fingerprint("p1", 0.95, 16)
    cursor = dup.encode_cursor(12, 40, owner)
    assert dup.decode_cursor(cursor, owner) == (12, 40)
    with pytest.raises(InvalidInput, match="another duplicates listing"):
        dup.decode_cursor(cursor, dup.fingerprint("p2", 0.95, 16))
    with pytest.raises(InvalidInput, match="another duplicates listing"):
        dup.decode_cursor(cursor, dup.fingerprint("p1", 0.9, 16))
    for bad in ("", "!!!", "bm90IGpzb24", dup.encode_cursor(1, 0, owner), "WzEsMl0"):
        with pytest.raises(InvalidInput, match="malformed cursor"):
            dup.decode_cursor(bad, owner)


def test_scan_cache_keeps_the_most_recently_used() -> None:
    cache = dup.ScanCache(capacity=2)

    def scan(generation: int) -> dup.DuplicateScan:
        return dup.DuplicateScan("p", generation, 0.95, 16, 0, ())

    for generation in (1, 2):
        cache.put(scan(generation))
    assert cache.get("p", 1, 0.95, 16) is not None  # 1 is now the most recent
    cache.put(scan(3))
    assert cache.get("p", 2, 0.95, 16) is None
    assert cache.get("p", 1, 0.95, 16) is not None and cache.get("p", 3, 0.95, 16) is not None
    assert cache.get("p", 3, 0.9, 16) is None and len(cache) == 2

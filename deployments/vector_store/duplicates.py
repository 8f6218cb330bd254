"""Near-duplicate images of a project: grouping, the scans kept for paging, and their cursor.

A *duplicate group* is a connected component of the graph whose nodes are a project's live
images and whose edges join an image to each of its `k` nearest neighbours (hnswlib) with
cosine >= `threshold`. Components, not cliques: a re-encode of a resize of an image joins its
group through the resize even if its own score against the original is a little lower.
Images with no such neighbour (singletons) are not groups.

Everything here is plain numpy over positions: row `i` of a scan is the `i`-th oldest live
image of the project (created_at, then id), so "oldest" is "smallest position" and the
result does not depend on hnswlib's labels or on the order threads finished in.

- `group_rows`: the groups of one scan from the neighbour arrays, in their fixed order;
  `components` the connected components under it (also the exact baseline's, in `bench`).
- `rows_of_labels`: hnswlib labels -> positions (-1 for a label the scan does not hold).
- `DuplicateScan` / `ScanCache`: one scan's groups, and the few kept for paging (an LRU keyed
  by project, generation, threshold and k: every change of a project bumps its generation,
  so a changed project is scanned again and an old scan is only reached through a cursor).
- `encode_cursor` / `decode_cursor`: the opaque page cursor (the scan's generation, the
  offset of the next group, a fingerprint of the project, threshold and k).

The catalog (`VectorCatalog.duplicates`) copies what a scan needs under its lock and runs
the k-NN queries and this grouping outside it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.errors import InvalidInput
from core.records import (
    DUPLICATES_DEFAULT_THRESHOLD,
    DUPLICATES_MAX_GROUP_IMAGES,
    DUPLICATES_MIN_THRESHOLD,
)
from deployments.vector_store.hnsw_index import ProjectIndex

__all__ = [
    "DEFAULT_NEIGHBOURS",
    "DEFAULT_THRESHOLD",
    "MAX_GROUP_IMAGES",
    "MAX_NEIGHBOURS",
    "MIN_THRESHOLD",
    "SCAN_EF",
    "SCAN_THREADS",
    "DuplicateScan",
    "Group",
    "ScanCache",
    "aligned",
    "components",
    "decode_cursor",
    "encode_cursor",
    "fingerprint",
    "group_rows",
    "rows_of_labels",
    "scan_groups",
]

DEFAULT_THRESHOLD = DUPLICATES_DEFAULT_THRESHOLD
MIN_THRESHOLD = DUPLICATES_MIN_THRESHOLD
MAX_GROUP_IMAGES = DUPLICATES_MAX_GROUP_IMAGES
DEFAULT_NEIGHBOURS = 16  # k: an image with more copies than k still joins through them
MAX_NEIGHBOURS = 64
# hnswlib's ef for the scan (raised to k + 1 when lower). Near-duplicates are an image's
# very nearest neighbours, which the smallest ef finds: on 50k CLIP-like vectors with 500
# planted groups (2 cores), ef 17, 32 and 64 all found exactly the groups of exact all-pairs
# search; the scan took 7.4 s at ef 17 (the whole scan) against 11.0 and 17.0 s (k-NN and
# grouping alone), exact search 21.2 s (`python -m bench.duplicates --sweep 32,64`).
SCAN_EF = 16
SCAN_THREADS = max(1, min(8, os.cpu_count() or 1))
SCANS_KEPT = 8  # scans kept for paging (each holds only the grouped images' labels)

Rows = npt.NDArray[np.int64]
Scores = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Group:
    """One group: labels (hnswlib) of its images, the oldest first, then by score to it
    (highest first, ties oldest first); `scores[i]` is the cosine of image i to the first
    (1.0 for the first itself)."""

    labels: tuple[int, ...]
    scores: tuple[float, ...]


@dataclass(frozen=True)
class DuplicateScan:
    """The groups of a project at one generation, largest first (ties: oldest first image)."""

    project_id: str
    generation: int
    threshold: float
    k: int
    scanned: int  # live images the scan looked at
    groups: tuple[Group, ...]
    seconds: float = 0.0  # how long the scan took (lock held included)
    locked_seconds: float = 0.0  # of which the catalog's lock was held (copying)


def rows_of_labels(labels: npt.NDArray[np.int64], found: npt.ArrayLike) -> Rows:
    """The position in `labels` of each label in `found` (any shape), -1 where absent."""
    found_arr = np.asarray(found).astype(np.int64, copy=False)
    if len(labels) == 0:
        return np.full(found_arr.shape, -1, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    at = np.clip(np.searchsorted(ordered, found_arr), 0, len(ordered) - 1)
    hit = ordered[at] == found_arr
    return np.where(hit, order[at], -1).astype(np.int64)


def components(n: int, src: Rows, dst: Rows) -> Rows:
    """For each of n nodes, the smallest node of its connected component (edges src-dst).

    Vectorised union-find: hook each edge's larger root under the smaller, then jump
    pointers until every pointer is a root; repeat until no edge joins two roots. Parents
    only ever decrease, so there are no cycles and each root is its component's minimum.
    """
    parent = np.arange(n, dtype=np.int64)
    while True:
        ru, rv = parent[src], parent[dst]
        apart = ru != rv
        if not apart.any():
            return parent
        np.minimum.at(parent, np.maximum(ru, rv)[apart], np.minimum(ru, rv)[apart])
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def group_rows(
    vectors: npt.NDArray[np.float32],
    neighbours: Rows,
    scores: Scores,
    threshold: float,
) -> list[tuple[Rows, Scores]]:
    """The duplicate groups of a scan, as (positions, scores to the first) pairs, in order.

    `vectors` (n, D) are the unit vectors of the images oldest first; `neighbours` (n, k)
    the positions of each one's nearest neighbours (-1: none), `scores` (n, k) their cosines.
    An edge is a neighbour (not the image itself) scoring >= `threshold`; either direction
    joins (hnswlib's lists need not be symmetric). Each group's first position is its oldest
    image; the rest follow by their exact cosine to it (highest first, then oldest). Groups
    come largest first, then by their oldest image.
    """
    n = len(vectors)
    if n == 0 or neighbours.size == 0:
        return []
    rows = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], neighbours.shape)
    edge = (neighbours >= 0) & (neighbours != rows) & (scores >= threshold)
    src, dst = rows[edge], neighbours[edge]
    if len(src) == 0:
        return []
    root = components(n, src, dst)
    in_edge = np.zeros(n, dtype=bool)
    in_edge[src] = True
    in_edge[dst] = True
    members = np.flatnonzero(in_edge)  # ascending: each group's members oldest first
    by_root = members[np.argsort(root[members], kind="stable")]
    starts = np.flatnonzero(np.r_[True, np.diff(root[by_root]) != 0])
    groups: list[tuple[Rows, Scores]] = []
    for chunk in np.split(by_root, starts[1:]):
        first = chunk[0]  # the smallest position: the component's root, its oldest image
        cos = (vectors[chunk] @ vectors[first]).astype(np.float32)
        cos[0] = 1.0
        rest = np.lexsort((chunk[1:], -cos[1:])) + 1  # score desc, then oldest
        order = np.r_[0, rest]
        groups.append((chunk[order], cos[order]))
    groups.sort(key=lambda g: (-len(g[0]), int(g[0][0])))
    return groups


def aligned(
    labels: npt.NDArray[np.int64],
    stored_labels: npt.NDArray[np.int64],
    stored_vectors: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """`labels` (in their order) with their vectors taken from `stored_*`; a label absent
    there (its image was deleted in between) is left out."""
    at = rows_of_labels(stored_labels, labels)
    keep = at >= 0
    return labels[keep], np.ascontiguousarray(stored_vectors[at[keep]])


def scan_groups(
    index: ProjectIndex,
    labels: npt.NDArray[np.int64],
    vectors: npt.NDArray[np.float32],
    threshold: float,
    k: int,
    *,
    ef: int = SCAN_EF,
    threads: int = SCAN_THREADS,
) -> tuple[Group, ...]:
    """The duplicate groups among `labels` (live labels, oldest first; `vectors` theirs) of
    `index`, which must be a private copy (`ProjectIndex.snapshot`): it is queried with
    `threads` threads, the GIL released. A label the copy holds but `labels` lacks is no
    image of any group."""
    if len(labels) < 2:
        return ()
    found, scores = index.knn_many(vectors, min(k + 1, len(labels)), threads, ef=ef)
    neighbours = rows_of_labels(labels, found)  # k + 1: an image is its own first hit
    return tuple(
        Group(
            labels=tuple(int(label) for label in labels[rows]),
            scores=tuple(float(score) for score in cos),
        )
        for rows, cos in group_rows(vectors, neighbours, scores, threshold)
    )


class ScanCache:
    """The last `capacity` scans, least recently used dropped first (thread-safe)."""

    def __init__(self, capacity: int = SCANS_KEPT) -> None:
        self.capacity = capacity
        self._scans: OrderedDict[tuple[str, int, float, int], DuplicateScan] = OrderedDict()
        self._lock = threading.Lock()
        # One scan at a time: they are CPU-bound, and a second caller of the same scan then
        # finds it cached instead of running it again. Taken before the catalog's lock.
        self.scanning = threading.Lock()

    def get(
        self, project_id: str, generation: int, threshold: float, k: int
    ) -> DuplicateScan | None:
        key = (project_id, generation, threshold, k)
        with self._lock:
            scan = self._scans.get(key)
            if scan is not None:
                self._scans.move_to_end(key)
            return scan

    def put(self, scan: DuplicateScan) -> None:
        key = (scan.project_id, scan.generation, scan.threshold, scan.k)
        with self._lock:
            self._scans[key] = scan
            self._scans.move_to_end(key)
            while len(self._scans) > self.capacity:
                self._scans.popitem(last=False)

    def __len__(self) -> int:
        return len(self._scans)


def fingerprint(project_id: str, threshold: float, k: int) -> str:
    """A short digest of what defines a grouping: the project, the threshold and k."""
    raw = json.dumps([project_id, threshold, k]).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def encode_cursor(generation: int, offset: int, owner: str) -> str:
    """The cursor of the page starting at group `offset` of the scan at `generation`."""
    raw = json.dumps({"g": generation, "o": offset, "f": owner}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, owner: str) -> tuple[int, int]:
    """(generation, offset) of a cursor from `encode_cursor`; `InvalidInput` when it is
    malformed or belongs to another project, threshold or k."""
    try:
        raw = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode("ascii"))
        data = json.loads(raw)
        generation, offset, their_owner = data["g"], data["o"], data["f"]
    except (ValueError, UnicodeError, binascii.Error, KeyError, TypeError):
        raise InvalidInput("malformed cursor", cursor=cursor[:80]) from None
    numbers = all(type(v) is int for v in (generation, offset))
    if not numbers or generation < 0 or offset < 1:
        raise InvalidInput("malformed cursor", cursor=cursor[:80])
    if their_owner != owner:
        raise InvalidInput(
            "this cursor belongs to another duplicates listing: send it with the same "
            "project and threshold as the page that returned it",
            cursor=cursor[:80],
        )
    return generation, offset

"""The hnswlib side of the catalog: one project's in-memory index, and the vectors it accepts.

Everything that touches hnswlib lives here: creating a project's index ('ip' space on
L2-normalised vectors, so score = cosine), building it from stored rows, loading and saving
its file, adding vectors, hiding labels, growing it, and k-NN search. `unit_vector` turns a
caller's vector into what the index takes. No SQL and no decisions about files: the catalog
decides what goes in and when; `index_files` decides where a file lives and whether it may be
loaded.

Labels are allocated per project from `ProjectIndex.next_label`, which starts at
`max(label) + 1` and never goes back within a process, because a label once marked deleted
cannot be reused while `allow_replace_deleted` is on. Deleted *slots* are reused
(`replace_deleted=True`), so the index holds at most the live images plus whatever it has
grown to; it starts at `MIN_CAPACITY` and doubles up to the project's `max_elements`.

Not thread-safe: hnswlib's `add_items` is not safe alongside `knn_query` or `resize_index`,
so the catalog calls all of this under its lock.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import numpy.typing as npt

from core.errors import InvalidInput

__all__ = ["MIN_CAPACITY", "HnswParams", "Labels", "ProjectIndex", "Vectors", "unit_vector"]

MIN_CAPACITY = 1024  # first allocation of a project's index (grows by doubling)

Vectors = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]


@dataclass(frozen=True)
class HnswParams:
    """How every project's index is shaped (the same for all projects of a catalog)."""

    dim: int
    m: int = 32
    ef_construction: int = 200
    ef_search: int = 128

    @property
    def signature(self) -> str:
        """The parameters fixed when an index is built; a file saved under others is not loaded.

        `ef_search` is not part of it: it is not saved with the index and is set at every open.
        """
        return f"ip dim={self.dim} M={self.m} ef_construction={self.ef_construction}"


def _empty_index(params: HnswParams, capacity: int) -> Any:
    index = hnswlib.Index(space="ip", dim=params.dim)
    index.init_index(
        max_elements=max(1, capacity),
        M=params.m,
        ef_construction=params.ef_construction,
        allow_replace_deleted=True,
    )
    index.set_ef(params.ef_search)  # ef is not part of the saved/initialised state
    return index


@dataclass
class ProjectIndex:
    """A project's hnswlib index plus the counters kept beside it (guarded by the catalog lock).

    `live` is the number of non-deleted labels in the index, which equals the number of live
    (not tombstoned) rows in SQLite once every write has committed or rolled back.
    """

    index: Any  # hnswlib.Index (hnswlib ships no type information)
    next_label: int
    live: int = 0
    generation: int = 0  # the project's generation in SQLite (bumped with every change)
    saved_generation: int | None = None  # the generation of the file on disk, if it matches

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def create(cls, params: HnswParams, capacity: int, next_label: int = 0) -> ProjectIndex:
        """An empty index with room for `capacity` items."""
        return cls(index=_empty_index(params, capacity), next_label=next_label)

    @classmethod
    def build(
        cls,
        params: HnswParams,
        labels: Labels,
        vectors: Vectors,
        max_elements: int,
        max_label: int | None,
    ) -> ProjectIndex:
        """An index holding `vectors` (n, D) under `labels` (n,): the live rows of a project.

        `max_label` is the largest label any row of the project holds (tombstones included),
        so that the next label handed out is new.
        """
        n = len(labels)
        capacity = min(max(MIN_CAPACITY, n), max(max_elements, n))
        state = cls.create(params, capacity, (max_label + 1) if max_label is not None else 0)
        if n:
            state.add(vectors.reshape(n, params.dim), labels)
            state.live = n
        return state

    @classmethod
    def load(cls, params: HnswParams, path: Path, live: int, max_label: int | None) -> ProjectIndex:
        """Read a saved index file; raises when it cannot hold the `live` rows it should.

        Labels once used (deleted ones included) stay taken: the next label is past both the
        largest label in SQLite and the largest in the file.
        """
        index = hnswlib.Index(space="ip", dim=params.dim)
        index.load_index(str(path), allow_replace_deleted=True)
        element_count = int(index.element_count)
        if element_count < live:
            raise ValueError(f"{element_count} elements for {live} live rows")
        index.set_ef(params.ef_search)  # ef is not saved with the index
        ids: list[int] = [int(i) for i in index.get_ids_list()]
        next_label = max(
            (max_label + 1) if max_label is not None else 0, (max(ids) + 1) if ids else 0
        )
        return cls(index=index, next_label=next_label, live=live)

    def save(self, path: Path) -> None:
        """Write the index to `path` as it is now (the caller makes the file durable)."""
        self.index.save_index(str(path))

    # --- changes --------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Slots allocated in the index."""
        return int(self.index.get_max_elements())

    def reserve(self, extra: int, max_elements: int) -> None:
        """Make room for `extra` more live items (deleted slots are reused first)."""
        needed = self.live + extra
        if needed <= self.capacity:
            return
        new_capacity = max(needed, min(self.capacity * 2, max_elements))
        self.index.resize_index(new_capacity)

    def add(self, vectors: Vectors, labels: Labels) -> None:
        """Add `vectors` (n, D) under `labels` (n,), reusing deleted slots."""
        self.index.add_items(vectors, labels, replace_deleted=True)

    def mark_deleted(self, labels: Sequence[int]) -> None:
        """Mark labels deleted; labels that are absent or already deleted are skipped."""
        for label in labels:
            try:
                self.index.mark_deleted(int(label))
            except RuntimeError:
                pass  # "Label not found" / "already deleted": nothing to hide

    # --- search ---------------------------------------------------------------------------

    def knn(self, vector: Vectors, k: int) -> tuple[npt.NDArray[np.uint64], Vectors]:
        """Up to `k` nearest labels and their inner products, best first.

        hnswlib raises when it cannot find `k` live neighbours (few live items, or a graph
        fragmented by deletions); then k is lowered until it can.
        """
        while k > 0:
            try:
                labels, distances = self.index.knn_query(vector, k=k, num_threads=1)
                return labels[0], 1.0 - distances[0]
            except RuntimeError:
                if k == 1:
                    break
                k = max(1, k // 2)
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.float32)

    # --- whole-project scans -------------------------------------------------------------

    def snapshot(self) -> ProjectIndex:
        """A private copy (vectors, graph and deleted marks, through hnswlib's pickling) that
        can be searched with many threads, outside the catalog's lock, while this one changes."""
        return ProjectIndex(
            index=copy.deepcopy(self.index),
            next_label=self.next_label,
            live=self.live,
            generation=self.generation,
        )

    def knn_many(
        self,
        vectors: Vectors,
        k: int,
        num_threads: int,
        ef: int | None = None,
        chunk: int = 4096,
    ) -> tuple[Labels, Vectors]:
        """The `k` nearest labels of each row of `vectors` (n, D) and their inner products,
        best first, padded with label -1 and score -inf where fewer were found.

        `ef` (when given) becomes this index's search depth. One batch query per `chunk`
        rows over `num_threads` threads; a chunk hnswlib cannot
        fill (a graph fragmented by deletions) falls back to `knn` row by row. Only on an
        index nobody else is changing (a `snapshot`): a batch query is not safe alongside
        `add_items` or `resize_index`.
        """
        if ef is not None:
            self.index.set_ef(max(ef, k))
        n = len(vectors)
        labels = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        for start in range(0, n, chunk):
            part = vectors[start : start + chunk]
            try:
                found, distances = self.index.knn_query(part, k=k, num_threads=num_threads)
                labels[start : start + len(part)] = found.astype(np.int64)
                scores[start : start + len(part)] = 1.0 - distances
            except RuntimeError:
                for offset, vector in enumerate(part):
                    row_labels, row_scores = self.knn(vector, k)
                    labels[start + offset, : len(row_labels)] = row_labels.astype(np.int64)
                    scores[start + offset, : len(row_scores)] = row_scores
        return labels, scores


def unit_vector(vector: Any, dim: int) -> Vectors:
    """`vector` as a contiguous float32 (dim,) unit vector, or `InvalidInput` saying why not."""
    try:
        arr = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidInput("vector must be an array of numbers") from None
    if arr.shape != (dim,):
        raise InvalidInput(
            f"vector must have shape ({dim},), got {tuple(arr.shape)}", expected_dim=dim
        )
    if not np.all(np.isfinite(arr)):
        raise InvalidInput("vector contains NaN or infinite values")
    norm = float(np.linalg.norm(arr))
    if not math.isfinite(norm) or norm < 1e-12:
        raise InvalidInput("vector must have a non-zero norm")
    return np.ascontiguousarray(arr / norm, dtype=np.float32)

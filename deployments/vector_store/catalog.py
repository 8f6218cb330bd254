"""`VectorCatalog`: per-project hnswlib indexes backed by one SQLite file (the source of truth).

SQLite (WAL, synchronous=NORMAL) keeps every image row together with its float32 vector; each
project's hnswlib index ('ip' space on L2-normalised vectors, so score = cosine) is a cache that
is rebuilt from SQLite when the catalog opens, so a restart loses nothing that was committed.

Writes are all-or-nothing: a row is inserted and flushed, its vector is added to hnswlib, then
the transaction commits; if any step fails the transaction is rolled back and the label is
marked deleted in hnswlib, so neither a row without a vector nor a searchable vector without a
row survives.

Deletes are two-phase so the caller can remove the stored object in between:
`begin_delete` sets a tombstone (the image disappears from get/list/search at once and its label
is marked deleted), the caller deletes the object, then `finish_delete` drops the row.
`pending_deletes` lists tombstones left behind by a crash, for a sweeper.

Exactly one process owns the file (the single writer), but calls may come from several threads:
one `threading.RLock` serialises every hnswlib and SQLite operation (hnswlib's `add_items` is not
safe alongside `knn_query` or `resize_index`).

hnswlib labels are allocated per project from a counter that starts at `max(label) + 1` (from
SQLite) and never goes back within a process, because a label once marked deleted cannot be
reused while `allow_replace_deleted` is on. Deleted slots *are* reused (`replace_deleted=True`),
so the index holds at most the live images plus whatever it has grown to; it starts small and
doubles up to `max_elements`.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import logging
import math
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import hnswlib
import numpy as np
from sqlalchemy import Connection, Engine, Table, bindparam, event, false, func, or_, true
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import QueryableAttribute, defer
from sqlmodel import Session, SQLModel, col, create_engine, select

from deployments.vector_store.models import (
    ImagePage,
    ImageRecord,
    ImageRow,
    NewImage,
    Project,
    SearchHit,
    utcnow,
)
from serve_app.errors import Conflict, InvalidInput, ServiceUnavailable

__all__ = ["VectorCatalog"]

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
PAGE_SIZE = 16_384
_MIN_CAPACITY = 1024  # first allocation of a project's index (grows by doubling)
_WAL_RESET_FIX = (3, 51, 3)  # SQLite release that fixed the WAL-reset race


@dataclass
class _ProjectIndex:
    """A project's hnswlib index plus the counters kept beside it (guarded by the catalog lock).

    `live` is the number of non-deleted labels in the index, which equals the number of live
    (not tombstoned) rows in SQLite once every write has committed or rolled back.
    """

    index: hnswlib.Index
    next_label: int
    live: int = 0

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

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Add `vectors` (n, D) under `labels` (n,), reusing deleted slots."""
        self.index.add_items(vectors, labels, replace_deleted=True)

    def mark_deleted(self, labels: Sequence[int]) -> None:
        """Mark labels deleted; labels that are absent or already deleted are skipped."""
        for label in labels:
            try:
                self.index.mark_deleted(int(label))
            except RuntimeError:
                pass  # "Label not found" / "already deleted": nothing to hide

    def knn(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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


def _new_index(dim: int, capacity: int, m: int, ef_construction: int, ef: int) -> hnswlib.Index:
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(
        max_elements=max(1, capacity),
        M=m,
        ef_construction=ef_construction,
        allow_replace_deleted=True,
    )
    index.set_ef(ef)  # ef is not part of the saved/initialised state: set it every time
    return index


def _set_sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # Only takes effect on a new, empty file: a ~2.3 KB row (2 KB vector) fits once in a
        # 4 KB page but seven times in a 16 KB one, halving the file and its backups.
        cursor.execute(f"PRAGMA page_size={PAGE_SIZE}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _encode_cursor(created_at: datetime, image_id: str) -> str:
    raw = f"{created_at.isoformat()}\n{image_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
        stamp, image_id = raw.split("\n", 1)
        created_at = datetime.fromisoformat(stamp)
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidInput("malformed cursor", cursor=cursor[:80]) from None
    if created_at.tzinfo is None or not image_id:
        raise InvalidInput("malformed cursor", cursor=cursor[:80])
    return created_at, image_id


_IMAGE: Table = SQLModel.metadata.tables[ImageRow.__tablename__]
_PROJECT: Table = SQLModel.metadata.tables[Project.__tablename__]
_NO_VECTOR = defer(cast("QueryableAttribute[bytes]", ImageRow.vector))  # rows without the blob
_RECORD_COLUMNS = [column for column in _IMAGE.c if column.name != "vector"]
_LIVE = (_IMAGE.c.project_id == bindparam("project_id")) & (_IMAGE.c.deleting == false())
_NEWEST_FIRST = (_IMAGE.c.created_at.desc(), _IMAGE.c.id.desc())
# Built once: SQLAlchemy then reuses their compiled SQL, which keeps reads in the 100 us range.
_BY_ID = select(*_RECORD_COLUMNS).where(_LIVE, _IMAGE.c.id == bindparam("image_id"))
_BY_SHA = select(*_RECORD_COLUMNS).where(_LIVE, _IMAGE.c.sha256 == bindparam("sha256"))
_BY_LABELS = select(*_RECORD_COLUMNS).where(
    _LIVE, _IMAGE.c.label.in_(bindparam("labels", expanding=True))
)
_COUNT_LIVE = select(func.count()).select_from(_IMAGE).where(_LIVE)
_PAGE_FIRST = (
    select(*_RECORD_COLUMNS).where(_LIVE).order_by(*_NEWEST_FIRST).limit(bindparam("limit"))
)
_PAGE_AFTER = (
    select(*_RECORD_COLUMNS)
    .where(
        _LIVE,
        or_(
            _IMAGE.c.created_at < bindparam("after_created"),
            (_IMAGE.c.created_at == bindparam("after_created"))
            & (_IMAGE.c.id < bindparam("after_id")),
        ),
    )
    .order_by(*_NEWEST_FIRST)
    .limit(bindparam("limit"))
)
_TOMBSTONED = (
    select(*_RECORD_COLUMNS)
    .where(_IMAGE.c.deleting == true())
    .order_by(_IMAGE.c.created_at, _IMAGE.c.id)
)


def _record(row: Any, *, duplicate: bool = False) -> ImageRecord:
    """An `ImageRecord` from a Core row of `_RECORD_COLUMNS` (already typed by the columns)."""
    return ImageRecord.model_construct(**row._mapping, duplicate=duplicate)


class VectorCatalog:
    """Image metadata + CLIP vectors in SQLite, with a per-project hnswlib index for search.

    `max_elements` caps the live images of each project (IMAGE_SEARCH_MAX_ELEMENTS). The
    defaults of `hnsw_m`, `ef_construction` and `ef_search` were chosen with
    `python -m bench.index_bench`: on 50k x 512 vectors of low intrinsic dimension (like CLIP
    embeddings, `--data lowrank`) they give recall@10 0.998 at about 4x the speed of exact
    numpy search on 2 cores. On i.i.d. random 512-d vectors HNSW needs ef ~2048 for 0.99, which
    is slower than exact search: no setting meets both goals there (see the benchmark).
    """

    def __init__(
        self,
        db_path: Path,
        dim: int,
        max_elements: int,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
    ) -> None:
        if dim <= 0 or max_elements <= 0:
            raise ValueError("dim and max_elements must be positive")
        self.db_path = Path(db_path)
        self.dim = dim
        self.max_elements = max_elements
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self._lock = threading.RLock()
        self._indexes: dict[str, _ProjectIndex] = {}
        self._closed = False

        if sqlite3.sqlite_version_info < _WAL_RESET_FIX:
            # The race needs two connections writing/checkpointing at once: here every write
            # goes through the catalog lock and backups read through a read-only connection.
            log.debug("SQLite %s predates the WAL-reset fix of 3.51.3", sqlite3.sqlite_version)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._engine: Engine = create_engine(
            f"sqlite:///{self.db_path}",
            connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
        )
        event.listen(self._engine, "connect", _set_sqlite_pragmas)
        SQLModel.metadata.create_all(self._engine, tables=[_PROJECT, _IMAGE])
        self._rebuild_all()

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Drop the in-memory indexes and close the SQLite connections (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._indexes.clear()
            self._engine.dispose()

    def __enter__(self) -> VectorCatalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rebuild_all(self) -> None:
        """Build every project's index from the live rows in SQLite."""
        with self._lock, Session(self._engine) as session:
            project_ids = session.exec(select(Project.id)).all()
            for project_id in project_ids:
                self._indexes[project_id] = self._build_project(session, project_id)
        log.info(
            "vector catalog opened: %s",
            {project: state.live for project, state in self._indexes.items()},
        )

    def _build_project(self, session: Session, project_id: str) -> _ProjectIndex:
        max_label = session.exec(
            select(func.max(ImageRow.label)).where(ImageRow.project_id == project_id)
        ).one()
        rows = session.exec(
            select(ImageRow.label, ImageRow.vector).where(
                ImageRow.project_id == project_id,
                ImageRow.deleting == False,  # noqa: E712
            )
        ).all()
        capacity = min(max(_MIN_CAPACITY, len(rows)), max(self.max_elements, len(rows)))
        state = _ProjectIndex(
            index=_new_index(self.dim, capacity, self.hnsw_m, self.ef_construction, self.ef_search),
            next_label=(max_label + 1) if max_label is not None else 0,
        )
        if rows:
            labels = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
            state.add(vectors.reshape(len(rows), self.dim), labels)
            state.live = len(rows)
        return state

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """The lock plus a fresh session; refuses to work after `close()`."""
        with self._lock:
            if self._closed:
                raise ServiceUnavailable("the vector catalog is closed")
            with Session(self._engine, expire_on_commit=False) as session:
                yield session

    @contextmanager
    def _reader(self) -> Iterator[Connection]:
        """The lock plus a pooled connection for Core reads (cheaper than the ORM)."""
        with self._lock:
            if self._closed:
                raise ServiceUnavailable("the vector catalog is closed")
            with self._engine.connect() as conn:
                yield conn

    def _state(self, project_id: str) -> _ProjectIndex:
        state = self._indexes.get(project_id)
        if state is None:
            state = _ProjectIndex(
                index=_new_index(
                    self.dim,
                    min(_MIN_CAPACITY, self.max_elements),
                    self.hnsw_m,
                    self.ef_construction,
                    self.ef_search,
                ),
                next_label=0,
            )
            self._indexes[project_id] = state
        return state

    # --- validation -----------------------------------------------------------------------

    def _vector(self, vector: Any) -> np.ndarray:
        """A float32 (D,) unit vector, or `InvalidInput`."""
        try:
            arr = np.asarray(vector, dtype=np.float32)
        except (TypeError, ValueError):
            raise InvalidInput("vector must be an array of numbers") from None
        if arr.shape != (self.dim,):
            raise InvalidInput(
                f"vector must have shape ({self.dim},), got {tuple(arr.shape)}",
                expected_dim=self.dim,
            )
        if not np.all(np.isfinite(arr)):
            raise InvalidInput("vector contains NaN or infinite values")
        norm = float(np.linalg.norm(arr))
        if not math.isfinite(norm) or norm < 1e-12:
            raise InvalidInput("vector must have a non-zero norm")
        return np.ascontiguousarray(arr / norm, dtype=np.float32)

    def _full(self, project_id: str) -> Conflict:
        return Conflict(
            f"project {project_id} is full: IMAGE_SEARCH_MAX_ELEMENTS={self.max_elements}",
            project_id=project_id,
            max_elements=self.max_elements,
        )

    # --- queries --------------------------------------------------------------------------

    def project_exists(self, project_id: str) -> bool:
        """Whether the project has ever had an image added (its row exists)."""
        with self._session() as session:
            return session.get(Project, project_id) is not None

    def find_duplicate(self, project_id: str, sha256: str) -> ImageRecord | None:
        """The live image with these bytes (sha256) in the project, flagged `duplicate=True`."""
        with self._reader() as conn:
            row = conn.execute(_BY_SHA, {"project_id": project_id, "sha256": sha256}).first()
        return _record(row, duplicate=True) if row is not None else None

    def get(self, project_id: str, image_id: str) -> ImageRecord | None:
        """The live image, or None when it is absent or being deleted."""
        with self._reader() as conn:
            row = conn.execute(_BY_ID, {"project_id": project_id, "image_id": image_id}).first()
        return _record(row) if row is not None else None

    def list(self, project_id: str, limit: int, cursor: str | None = None) -> ImagePage:
        """Live images newest first (created_at desc, id desc), keyset-paginated.

        `cursor` is the `next_cursor` of the previous page (opaque); a malformed one raises
        `InvalidInput`. `total` counts every live image of the project.
        """
        if limit < 1:
            raise InvalidInput("limit must be at least 1", limit=limit)
        after = _decode_cursor(cursor) if cursor else None
        with self._reader() as conn:
            total = conn.execute(_COUNT_LIVE, {"project_id": project_id}).scalar_one()
            if after is None:
                rows = conn.execute(
                    _PAGE_FIRST, {"project_id": project_id, "limit": limit + 1}
                ).all()
            else:
                rows = conn.execute(
                    _PAGE_AFTER,
                    {
                        "project_id": project_id,
                        "limit": limit + 1,
                        "after_created": after[0],
                        "after_id": after[1],
                    },
                ).all()
        items = [_record(row) for row in rows[:limit]]
        next_cursor = (
            _encode_cursor(items[-1].created_at, items[-1].id) if len(rows) > limit else None
        )
        return ImagePage(items=items, total=total, next_cursor=next_cursor)

    def search(self, project_id: str, vector: Any, limit: int) -> builtins.list[SearchHit]:
        """The `limit` live images closest to `vector` (cosine), best first.

        Returns min(limit, live images) hits; an unknown or empty project gives [].
        """
        if limit < 1:
            raise InvalidInput("limit must be at least 1", limit=limit)
        query = self._vector(vector)
        with self._reader() as conn:
            state = self._indexes.get(project_id)
            if state is None or state.live == 0:
                return []
            labels, scores = state.knn(query, min(limit, state.live))
            if len(labels) == 0:
                return []
            score_of = {int(lab): float(s) for lab, s in zip(labels, scores, strict=True)}
            rows = conn.execute(
                _BY_LABELS, {"project_id": project_id, "labels": builtins.list(score_of)}
            ).all()
        hits = [SearchHit.model_construct(record=_record(r), score=score_of[r.label]) for r in rows]
        hits.sort(key=lambda hit: (-hit.score, hit.record.id))
        return hits

    def pending_deletes(self) -> builtins.list[ImageRecord]:
        """Tombstoned images (a delete began but did not finish), oldest first, all projects."""
        with self._reader() as conn:
            return [_record(row) for row in conn.execute(_TOMBSTONED).all()]

    def stats(self) -> dict[str, int]:
        """Live images per project (every known project, zero included)."""
        with self._session() as session:
            counts = dict(
                session.exec(
                    select(ImageRow.project_id, func.count())
                    .where(ImageRow.deleting == False)  # noqa: E712
                    .group_by(ImageRow.project_id)
                ).all()
            )
            projects = session.exec(select(Project.id)).all()
            return {project_id: int(counts.get(project_id, 0)) for project_id in projects}

    # --- writes ---------------------------------------------------------------------------

    def add(self, image: NewImage) -> ImageRecord:
        """Store one image and its vector; returns its record.

        If the project already holds the same bytes (sha256) that record is returned with
        `duplicate=True` and nothing is added. Raises `Conflict` when the project is full or the
        id/object key is taken, `InvalidInput` for a vector that is not finite with shape (D,).
        """
        return self.add_many([image])[0]

    def add_many(self, images: Sequence[NewImage]) -> builtins.list[ImageRecord]:
        """Store a batch in one transaction and one hnswlib `add_items` call.

        Results come in input order. Duplicates (same sha256 as a live image, or as an earlier
        image of the batch) return the existing record with `duplicate=True`. Capacity is
        checked for the whole batch up front: a batch that does not fit adds nothing.
        All images must belong to one project.
        """
        if not images:
            return []
        project_id = images[0].project_id
        if any(img.project_id != project_id for img in images):
            raise InvalidInput("a batch must belong to one project")
        ids = [img.id for img in images]
        if len(set(ids)) != len(ids):
            raise InvalidInput("a batch must not repeat an image id")
        vectors = [self._vector(img.vector) for img in images]

        with self._session() as session:
            existing = {
                row.sha256: row
                for row in session.exec(
                    select(ImageRow)
                    .options(_NO_VECTOR)
                    .where(
                        ImageRow.project_id == project_id,
                        col(ImageRow.sha256).in_({img.sha256 for img in images}),
                        ImageRow.deleting == False,  # noqa: E712
                    )
                ).all()
            }
            results: builtins.list[ImageRecord | None] = []
            fresh: builtins.list[tuple[int, NewImage, np.ndarray]] = []  # (position, image, vector)
            first_of_sha: dict[str, int] = {}
            for pos, (img, vec) in enumerate(zip(images, vectors, strict=True)):
                if img.sha256 in existing:
                    results.append(ImageRecord.from_row(existing[img.sha256], duplicate=True))
                elif img.sha256 in first_of_sha:
                    results.append(None)  # filled in with the first one's record below
                else:
                    first_of_sha[img.sha256] = pos
                    fresh.append((pos, img, vec))
                    results.append(None)
            if not fresh:
                return [r for r in results if r is not None]

            state = self._state(project_id)
            if state.live + len(fresh) > self.max_elements:
                raise self._full(project_id)

            now = utcnow()
            first_label = state.next_label
            state.next_label += len(fresh)  # never handed out again in this process
            labels = np.arange(first_label, first_label + len(fresh), dtype=np.int64)
            rows = [
                ImageRow(
                    id=img.id,
                    project_id=project_id,
                    object_key=img.object_key,
                    filename=img.filename,
                    content_type=img.content_type,
                    size_bytes=img.size_bytes,
                    width=img.width,
                    height=img.height,
                    sha256=img.sha256,
                    created_at=now,
                    label=int(label),
                    vector=vec.tobytes(),
                )
                for (_pos, img, vec), label in zip(fresh, labels, strict=True)
            ]
            self._write(session, state, project_id, rows, np.stack([f[2] for f in fresh]), labels)

            for (pos, _img, _vec), row in zip(fresh, rows, strict=True):
                results[pos] = ImageRecord.from_row(row)
            for pos, img in enumerate(images):
                if results[pos] is None:
                    first = results[first_of_sha[img.sha256]]
                    assert first is not None
                    results[pos] = first.model_copy(update={"duplicate": True})
        return [r for r in results if r is not None]

    def _write(
        self,
        session: Session,
        state: _ProjectIndex,
        project_id: str,
        rows: builtins.list[ImageRow],
        vectors: np.ndarray,
        labels: np.ndarray,
    ) -> None:
        """Insert rows, add vectors, commit: all of it or (after cleanup) none of it."""
        vectors_added = False
        try:
            if session.get(Project, project_id) is None:
                session.add(Project(id=project_id))
                session.flush()  # no ORM relationship orders the inserts: the project first
            session.add_all(rows)
            session.flush()
            state.reserve(len(rows), self.max_elements)
            vectors_added = True  # from here on, a failure may have left labels in the index
            state.add(vectors, labels)
            session.commit()
        except BaseException as exc:
            session.rollback()
            if vectors_added:
                state.mark_deleted(labels.tolist())
            if isinstance(exc, IntegrityError):
                raise Conflict(
                    "an image with this id or object key already exists", project_id=project_id
                ) from exc
            if isinstance(exc, OperationalError | RuntimeError):
                log.exception("vector catalog write failed")
                raise ServiceUnavailable("the vector index could not store the image") from exc
            raise
        state.live += len(rows)

    def begin_delete(self, project_id: str, image_id: str) -> ImageRecord | None:
        """Tombstone the image and hide its vector; None when no such row exists.

        An image already being deleted is returned again, so a retried DELETE can finish.
        """
        with self._session() as session:
            row = session.exec(
                select(ImageRow)
                .options(_NO_VECTOR)
                .where(ImageRow.project_id == project_id, ImageRow.id == image_id)
            ).first()
            if row is None:
                return None
            state = self._indexes.get(project_id)
            if not row.deleting:
                row.deleting = True
                session.add(row)
                session.commit()
                if state is not None:
                    state.mark_deleted([row.label])
                    state.live -= 1
            elif state is not None:
                state.mark_deleted([row.label])  # harmless if already hidden
            return ImageRecord.from_row(row)

    def finish_delete(self, project_id: str, image_id: str) -> None:
        """Remove the image's row (after its stored object is gone); a no-op when absent."""
        with self._session() as session:
            row = session.exec(
                select(ImageRow)
                .options(_NO_VECTOR)
                .where(ImageRow.project_id == project_id, ImageRow.id == image_id)
            ).first()
            if row is None:
                return
            was_live = not row.deleting
            label = row.label
            session.delete(row)
            session.commit()
            state = self._indexes.get(project_id)
            if state is not None:
                state.mark_deleted([label])
                if was_live:
                    state.live -= 1

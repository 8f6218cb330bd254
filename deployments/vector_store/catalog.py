"""`VectorCatalog`: per-project hnswlib indexes backed by one SQLite file (the source of truth).

SQLite (WAL, synchronous=NORMAL) keeps every image row together with its float32 vector; each
project's hnswlib index ('ip' space on L2-normalised vectors, so score = cosine) is a cache of
it, so a restart loses nothing that was committed.

Persistence: rebuilding a 50k-vector index from SQLite takes minutes on a small CPU, so each
project's index is also saved beside the database (`<db>.hnsw/<sha256(project)[:40]>.hnsw`):
`save_index` to a temporary file, fsync, rename, fsync the directory, then the file's sha256,
size and the state it holds are recorded in SQLite (`index_state`). Every change to a
project's rows bumps its `generation` in the same transaction, so at open a saved file is
loaded only when its recorded generation, row count, live count, largest label, index
parameters, size and checksum all match SQLite; any mismatch (a crash after the last save, a
damaged or foreign file) rebuilds that project from the rows, as before. Saving is explicit
(`save_indexes`, which the VectorIndex deployment runs on a schedule and after
`save_after_changes` changes) and happens at `close()`.

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
import hashlib
import logging
import math
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import hnswlib
import numpy as np
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    case,
    event,
    false,
    func,
    or_,
    true,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import QueryableAttribute, defer
from sqlmodel import Session, SQLModel, col, create_engine, select

from core.durable import fsync_dir
from core.records import ImagePage, ImageRecord, NewImage, SearchHit
from deployments.vector_store.models import ImageRow, IndexState, Project, utcnow
from core.errors import Conflict, InvalidInput, ServiceUnavailable

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
    generation: int = 0  # the project's generation in SQLite (bumped with every change)
    saved_generation: int | None = None  # the generation of the file on disk, if it matches

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
_INDEX_STATE: Table = SQLModel.metadata.tables[IndexState.__tablename__]
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
# (rows, live rows, largest label) of a project: what a saved index file must still match.
_COUNTS = select(
    func.count(),
    func.coalesce(func.sum(case((_IMAGE.c.deleting == false(), 1), else_=0)), 0),
    func.max(_IMAGE.c.label),
).where(_IMAGE.c.project_id == bindparam("project_id"))
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
        persist_indexes: bool = True,
        save_after_changes: int = 10_000,
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
        self.persist_indexes = persist_indexes
        self.index_dir = self.db_path.with_name(self.db_path.name + ".hnsw")
        self.save_after_changes = max(1, save_after_changes)
        # Set once `save_after_changes` changes are unsaved; the owner's saver thread waits on it.
        self.save_due = threading.Event()
        self._save_lock = threading.Lock()  # one save at a time; always taken before _lock
        self._unsaved_changes = 0
        # project -> "loaded" or "rebuilt (<why the saved file was not used>)", from the open
        self.open_report: dict[str, str] = {}

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
        SQLModel.metadata.create_all(self._engine, tables=[_PROJECT, _IMAGE, _INDEX_STATE])
        self._open_all()

    # --- lifecycle ------------------------------------------------------------------------

    def close(self, save: bool = True) -> None:
        """Save changed indexes (unless `save` is False), drop the in-memory indexes and close
        the SQLite connections (idempotent)."""
        if save:
            self.save_indexes()
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

    def _open_all(self) -> None:
        """Load every project's saved index when it matches SQLite; else build it from the rows."""
        with self._lock, Session(self._engine) as session:
            project_ids = session.exec(select(Project.id)).all()
            markers = {m.project_id: m for m in session.exec(select(IndexState)).all()}
            for project_id in project_ids:
                self._indexes[project_id] = self._open_project(
                    session, project_id, markers.get(project_id)
                )
        log.info(
            "vector catalog opened: %s",
            {
                project: f"{state.live} live, {self.open_report.get(project)}"
                for project, state in self._indexes.items()
            },
        )

    def _open_project(
        self, session: Session, project_id: str, marker: IndexState | None
    ) -> _ProjectIndex:
        rows, live, max_label = session.connection().execute(
            _COUNTS, {"project_id": project_id}
        ).one()
        rows, live = int(rows), int(live)
        state: _ProjectIndex | None = None
        reason = "persistence off"
        if self.persist_indexes:
            reason = self._saved_index_problem(project_id, marker, rows, live, max_label)
            if reason is None:
                assert marker is not None
                try:
                    state = self._load_saved(project_id, live, max_label)
                except Exception as exc:  # noqa: BLE001 - any failure: rebuild from the rows
                    reason = f"load failed: {type(exc).__name__}: {exc}"[:300]
        if state is not None:
            assert marker is not None
            state.saved_generation = marker.saved_generation
            self.open_report[project_id] = "loaded"
        else:
            state = self._build_project(session, project_id, max_label)
            self.open_report[project_id] = f"rebuilt ({reason})"
            if self.persist_indexes:
                log.info("project %s: index rebuilt from SQLite: %s", project_id, reason)
        state.generation = marker.generation if marker is not None else 0
        return state

    def _params(self) -> str:
        return f"ip dim={self.dim} M={self.hnsw_m} ef_construction={self.ef_construction}"

    def index_path(self, project_id: str) -> Path:
        """Where the project's saved index lives (its name does not depend on the id's text)."""
        digest = hashlib.sha256(project_id.encode("utf-8")).hexdigest()[:40]
        return self.index_dir / f"{digest}.hnsw"

    def _saved_index_problem(
        self,
        project_id: str,
        marker: IndexState | None,
        rows: int,
        live: int,
        max_label: int | None,
    ) -> str | None:
        """None when the saved file may be loaded; else why not."""
        if marker is None or marker.saved_generation is None or marker.saved_sha256 is None:
            return "no saved index"
        if marker.saved_generation != marker.generation:
            return f"stale: saved at generation {marker.saved_generation}, database at " \
                   f"{marker.generation}"
        if (marker.saved_rows, marker.saved_live, marker.saved_max_label) != (
            rows, live, max_label
        ):
            return "stale: the rows differ from the saved index's"
        if marker.saved_params != self._params():
            return f"saved with other parameters ({marker.saved_params})"
        path = self.index_path(project_id)
        try:
            size = path.stat().st_size
        except OSError:
            return "index file missing"
        if size != marker.saved_bytes:
            return f"index file is {size} bytes, {marker.saved_bytes} were saved"
        with path.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        if digest != marker.saved_sha256:
            return "index file checksum mismatch"
        return None

    def _load_saved(self, project_id: str, live: int, max_label: int | None) -> _ProjectIndex:
        index = hnswlib.Index(space="ip", dim=self.dim)
        index.load_index(str(self.index_path(project_id)), allow_replace_deleted=True)
        if index.element_count < live:
            raise ValueError(f"{index.element_count} elements for {live} live rows")
        index.set_ef(self.ef_search)  # ef is not saved with the index
        # Labels once used (deleted ones included) stay taken: never hand them out again.
        ids = index.get_ids_list()
        next_label = max(
            (max_label + 1) if max_label is not None else 0, (max(ids) + 1) if ids else 0
        )
        return _ProjectIndex(index=index, next_label=int(next_label), live=live)

    # --- persistence ----------------------------------------------------------------------

    def unsaved_changes(self) -> int:
        """Changes committed since the last `save_indexes`."""
        return self._unsaved_changes

    def save_indexes(self) -> builtins.list[str]:
        """Save the index of every project changed since its last save; returns their ids.

        Each file is written under the lock (hnswlib must not change meanwhile), then
        fsynced, hashed and renamed into place without it, then recorded in SQLite. A
        failure is logged and leaves the previous file and marker (the next open then
        rebuilds or loads whichever still matches).
        """
        if not self.persist_indexes:
            return []
        saved: builtins.list[str] = []
        with self._save_lock:
            with self._lock:
                if self._closed:
                    return []
                # Generation 0 with nothing live: a project whose first write rolled back (no
                # row in SQLite) or a legacy one without images; nothing worth a file.
                dirty = [
                    (project_id, state)
                    for project_id, state in self._indexes.items()
                    if state.saved_generation != state.generation
                    and (state.generation > 0 or state.live > 0)
                ]
                self._unsaved_changes = 0
                self.save_due.clear()
            for project_id, state in dirty:
                try:
                    if self._save_project(project_id, state):
                        saved.append(project_id)
                except Exception:  # noqa: BLE001 - the rows are safe in SQLite; retried later
                    log.exception("could not save the index of project %s", project_id)
        return saved

    def _save_project(self, project_id: str, state: _ProjectIndex) -> bool:
        self.index_dir.mkdir(parents=True, exist_ok=True)
        path = self.index_path(project_id)
        fd, tmp_name = tempfile.mkstemp(dir=self.index_dir, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            with self._lock:
                if self._closed:
                    return False
                generation = state.generation
                with self._engine.connect() as conn:
                    rows, live, max_label = conn.execute(
                        _COUNTS, {"project_id": project_id}
                    ).one()
                state.index.save_index(tmp_name)
            with tmp.open("rb") as file:
                os.fsync(file.fileno())
                digest = hashlib.file_digest(file, "sha256").hexdigest()
            size = tmp.stat().st_size
            os.replace(tmp, path)
            fsync_dir(self.index_dir)
        finally:
            tmp.unlink(missing_ok=True)
        marker = {
            "saved_generation": generation,
            "saved_sha256": digest,
            "saved_bytes": size,
            "saved_rows": int(rows),
            "saved_live": int(live),
            "saved_max_label": max_label,
            "saved_params": self._params(),
        }
        with self._lock:
            if self._closed:
                return False
            with self._engine.begin() as conn:
                conn.execute(
                    sqlite_insert(_INDEX_STATE)
                    .values(project_id=project_id, generation=generation, **marker)
                    .on_conflict_do_update(index_elements=[_INDEX_STATE.c.project_id], set_=marker)
                )
            state.saved_generation = generation
        return True

    def _bump_generation(self, session: Session, project_id: str) -> int:
        """Count one change of the project in the session's transaction; the new generation."""
        statement = (
            sqlite_insert(_INDEX_STATE)
            .values(project_id=project_id, generation=1)
            .on_conflict_do_update(
                index_elements=[_INDEX_STATE.c.project_id],
                set_={"generation": _INDEX_STATE.c.generation + 1},
            )
            .returning(_INDEX_STATE.c.generation)
        )
        return int(session.connection().execute(statement).scalar_one())

    def _changed(self, state: _ProjectIndex, generation: int) -> None:
        """After a commit: the project is at `generation`; wake the saver after enough changes."""
        state.generation = generation
        self._unsaved_changes += 1
        if self._unsaved_changes >= self.save_after_changes:
            self.save_due.set()

    def _build_project(
        self, session: Session, project_id: str, max_label: int | None
    ) -> _ProjectIndex:
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
                    results.append(_record(existing[img.sha256], duplicate=True))
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
                results[pos] = _record(row)
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
            generation = self._bump_generation(session, project_id)
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
        self._changed(state, generation)

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
                generation = self._bump_generation(session, project_id)
                session.commit()
                if state is not None:
                    state.mark_deleted([row.label])
                    state.live -= 1
                    self._changed(state, generation)
            elif state is not None:
                state.mark_deleted([row.label])  # harmless if already hidden
            return _record(row)

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
            generation = self._bump_generation(session, project_id)
            session.commit()
            state = self._indexes.get(project_id)
            if state is not None:
                state.mark_deleted([label])
                if was_live:
                    state.live -= 1
                self._changed(state, generation)


def _record(row: ImageRow, *, duplicate: bool = False) -> ImageRecord:
    """Copy an ORM row into a detached record."""
    return ImageRecord.model_validate(row, from_attributes=True).model_copy(
        update={"duplicate": duplicate}
    )

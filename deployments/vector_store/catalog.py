"""`VectorCatalog`: the image-search catalog's API, per-project hnswlib indexes backed by one
SQLite file (the source of truth).

SQLite (WAL, synchronous=NORMAL) keeps every image row together with its float32 vector; each
project's hnswlib index (`hnsw_index.ProjectIndex`, 'ip' space on unit vectors, so score =
cosine) is a cache of it, so a restart loses nothing that was committed. The SQL lives in
`queries`. Each index is also saved beside the database and loaded at open only when it still
matches SQLite, else rebuilt from the rows (`index_files`); saving is explicit
(`save_indexes`, which the VectorIndex deployment runs on a schedule and as soon as
`save_after_changes` changes are unsaved, see `save_due`) and happens at `close()`.

Writes are all-or-nothing: a row is inserted and flushed, its vector is added to hnswlib, then
the transaction commits; if any step fails the transaction is rolled back and the label is
marked deleted in hnswlib, so neither a row without a vector nor a searchable vector without a
row survives.

Deletes are two-phase so the caller can remove the stored object in between: `begin_delete`
sets a tombstone (the image disappears from get/list/search at once and its label is marked
deleted), the caller deletes the object, then `finish_delete` drops the row. A tombstone the
caller never finished (it crashed, or the object store failed in between) is listed by
`pending_deletes`; the VectorIndex deployment's sweeper deletes its object and finishes it
once it is older than a grace period. A tombstone's age is this process's: from its
`begin_delete`, or from the open for one that was already in the database.

Exactly one process owns the file (the single writer), but calls may come from several
threads: one `threading.RLock` serialises every hnswlib and SQLite operation.

Why this file is over 400 lines: it is one class, and every method of it takes that lock
around SQLite and hnswlib together (or, for a save, hands it over in steps); the parts that
need no lock already live in `queries`, `hnsw_index` and `index_files`.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, false, func, or_, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from core import defaults
from core.errors import Conflict, EmbeddingSpaceChanged, InvalidInput, ServiceUnavailable
from core.records import (
    DuplicateGroup,
    DuplicatePage,
    EmbeddingSpace,
    ImagePage,
    ImageRecord,
    NewImage,
    ProjectPage,
    ProjectSummary,
    SearchHit,
)
from deployments.vector_store import duplicates as dup
from deployments.vector_store import queries as q
from deployments.vector_store import spaces
from deployments.vector_store.hnsw_index import (
    MIN_CAPACITY,
    HnswParams,
    Labels,
    ProjectIndex,
    Vectors,
    unit_vector,
)
from deployments.vector_store.index_files import IndexFiles, SavedIndex
from deployments.vector_store.models import ImageRow, IndexState, Project, utcnow
from deployments.vector_store.schema import LegacyModel, UpgradeReport, upgrade
from deployments.vector_store.spaces import ImageToEmbed
from deployments.vector_store.trust import CREATE_QUARANTINE, QUARANTINE_TABLE, image_columns

__all__ = ["VectorCatalog"]

log = logging.getLogger(__name__)


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
        *,
        model: str = "unnamed",
        pretrained: str = "",
        legacy: LegacyModel | None = None,
    ) -> None:
        if dim <= 0 or max_elements <= 0:
            raise ValueError("dim and max_elements must be positive")
        self.db_path = Path(db_path)
        # The space the configured model embeds in; the catalog answers from `active_space`,
        # which differs from it until re-embedding for a model change has finished.
        self.target_space = EmbeddingSpace(model=model, pretrained=pretrained, dim=dim)
        self.max_elements = max_elements
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self._lock = threading.RLock()
        self._indexes: dict[str, ProjectIndex] = {}
        self._closed = False
        self.persist_indexes = persist_indexes
        self._files = IndexFiles(self.db_path)
        self.index_dir = self._files.directory
        self.save_after_changes = max(1, save_after_changes)
        # Set once `save_after_changes` changes are unsaved; the owner's saver thread waits on it.
        self.save_due = threading.Event()
        self._save_lock = threading.Lock()  # one save at a time; always taken before _lock
        self._unsaved_changes = 0
        # project -> "loaded" or "rebuilt (<why the saved file was not used>)", from the open
        self.open_report: dict[str, str] = {}
        # image id -> time.monotonic() of its begin_delete in this process (tombstones only)
        self._tombstoned_at: dict[str, float] = {}
        self._opened_at = time.monotonic()
        self._duplicate_scans = dup.ScanCache()  # kept for paging, see `duplicates`

        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.upgrade_report: UpgradeReport = upgrade(
            self.db_path,
            legacy
            or LegacyModel(
                defaults.IMAGE_SEARCH_LEGACY_MODEL, defaults.IMAGE_SEARCH_LEGACY_PRETRAINED
            ),
        )
        self._engine: Engine = q.open_engine(self.db_path)
        self.active_space = self._settle_spaces()
        self.dim = self.active_space.dim
        self._params = HnswParams(self.dim, hnsw_m, ef_construction, ef_search)
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

    def _settle_spaces(self) -> EmbeddingSpace:
        """The space to answer from: the recorded active one; the target when there is none
        or no live image holds a vector (nothing to re-embed). Drops unusable pending vectors."""
        with self._engine.begin() as conn:
            active = spaces.active_space(conn)
            if active is None or (active != self.target_space and spaces.count_live(conn) == 0):
                spaces.activate(conn, self.target_space)
                active = self.target_space
            dropped = spaces.drop_stale_pending(conn, active, self.target_space)
        if dropped:
            log.info("dropped %d pending vector(s) that cannot be used", dropped)
        if active != self.target_space:
            log.warning(
                "the catalog's vectors are from %s, the configured model is %s: searching the "
                "stored vectors until every image is embedded again",
                active.describe(),
                self.target_space.describe(),
            )
        return active

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
    ) -> ProjectIndex:
        conn = session.connection()
        rows, live, max_label = conn.execute(q.COUNTS, {"project_id": project_id}).one()
        rows, live = int(rows), int(live)
        state: ProjectIndex | None = None
        reason: str | None = "persistence off"
        if self.persist_indexes:
            reason = self._files.problem(
                project_id, marker, rows, live, max_label, self._params.signature
            )
            if reason is None:
                try:
                    state = ProjectIndex.load(
                        self._params, self._files.path(project_id), live, max_label
                    )
                except Exception as exc:  # noqa: BLE001 - any failure: rebuild from the rows
                    reason = f"load failed: {type(exc).__name__}: {exc}"[:300]
        if state is not None:
            assert marker is not None
            state.saved_generation = marker.saved_generation
            self.open_report[project_id] = "loaded"
        else:
            found = conn.execute(q.LIVE_VECTORS, {"project_id": project_id}).all()
            labels = np.fromiter((r[0] for r in found), dtype=np.int64, count=len(found))
            vectors = np.frombuffer(b"".join(r[1] for r in found), dtype=np.float32)
            state = ProjectIndex.build(self._params, labels, vectors, self.max_elements, max_label)
            self.open_report[project_id] = f"rebuilt ({reason})"
            if self.persist_indexes:
                log.info("project %s: index rebuilt from SQLite: %s", project_id, reason)
        state.generation = marker.generation if marker is not None else 0
        return state

    def index_path(self, project_id: str) -> Path:
        """Where the project's saved index lives (its name does not depend on the id's text)."""
        return self._files.path(project_id)

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
                except Exception:  # the rows are safe in SQLite; retried later
                    log.exception("could not save the index of project %s", project_id)
        return saved

    def _save_project(self, project_id: str, state: ProjectIndex) -> bool:
        with self._files.staging(project_id) as tmp:
            with self._lock:
                if self._closed:
                    return False
                generation = state.generation
                with self._engine.connect() as conn:
                    rows, live, max_label = conn.execute(q.COUNTS, {"project_id": project_id}).one()
                state.save(tmp)
            digest, size = self._files.install(tmp, project_id)
        saved = SavedIndex(
            saved_generation=generation,
            saved_sha256=digest,
            saved_bytes=size,
            saved_rows=int(rows),
            saved_live=int(live),
            saved_max_label=max_label,
            saved_params=self._params.signature,
        )
        with self._lock:
            if self._closed:
                return False
            with self._engine.begin() as conn:
                conn.execute(q.save_marker(project_id, generation, saved.marker()))
            state.saved_generation = generation
        return True

    def _bump_generation(self, session: Session, project_id: str) -> int:
        """Count one change of the project in the session's transaction; the new generation."""
        conn = session.connection()
        return int(conn.execute(q.BUMP_GENERATION, {"project_id": project_id}).scalar_one())

    def _changed(self, state: ProjectIndex, generation: int) -> None:
        """After a commit: the project is at `generation`; wake the saver after enough changes."""
        state.generation = generation
        self._unsaved_changes += 1
        if self._unsaved_changes >= self.save_after_changes:
            self.save_due.set()

    # --- plumbing -------------------------------------------------------------------------

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

    def _state(self, project_id: str) -> ProjectIndex:
        """The project's index, created empty for a project's first write."""
        state = self._indexes.get(project_id)
        if state is None:
            state = ProjectIndex.create(self._params, min(MIN_CAPACITY, self.max_elements))
            self._indexes[project_id] = state
        return state

    def _vector(self, vector: Any) -> Vectors:
        """A float32 (D,) unit vector, or `InvalidInput`."""
        return unit_vector(vector, self.dim)

    def _check_space(self, space_key: str | None) -> None:
        """`EmbeddingSpaceChanged` unless `space_key` is None or the active space's key."""
        if space_key is not None and space_key != self.active_space.key:
            raise EmbeddingSpaceChanged(
                "the image index switched embedding models: embed again and retry",
                active=self.active_space.key,
            )

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
            row = conn.execute(q.BY_SHA, {"project_id": project_id, "sha256": sha256}).first()
        return q.record_from_row(row, duplicate=True) if row is not None else None

    def get(self, project_id: str, image_id: str) -> ImageRecord | None:
        """The live image, or None when it is absent or being deleted."""
        with self._reader() as conn:
            row = conn.execute(q.BY_ID, {"project_id": project_id, "image_id": image_id}).first()
        return q.record_from_row(row) if row is not None else None

    def list_images(self, project_id: str, limit: int, cursor: str | None = None) -> ImagePage:
        """Live images newest first (created_at desc, id desc), keyset-paginated.

        `cursor` is the `next_cursor` of the previous page (opaque); a malformed one raises
        `InvalidInput`. `total` counts every live image of the project.
        """
        if limit < 1:
            raise InvalidInput("limit must be at least 1", limit=limit)
        after = q.decode_cursor(cursor) if cursor else None
        with self._reader() as conn:
            total = int(conn.execute(q.COUNT_LIVE, {"project_id": project_id}).scalar_one())
            if after is None:
                rows = conn.execute(
                    q.PAGE_FIRST, {"project_id": project_id, "limit": limit + 1}
                ).all()
            else:
                rows = conn.execute(
                    q.PAGE_AFTER,
                    {
                        "project_id": project_id,
                        "limit": limit + 1,
                        "after_created": after[0],
                        "after_id": after[1],
                    },
                ).all()
        items = [q.record_from_row(row) for row in rows[:limit]]
        next_cursor = (
            q.encode_cursor(items[-1].created_at, items[-1].id) if len(rows) > limit else None
        )
        return ImagePage(items=items, total=total, next_cursor=next_cursor)

    def list_projects(
        self, limit: int, after: str | None = None, scope: Sequence[str] | None = None
    ) -> ProjectPage:
        """Projects by id, each with its live image count, keyset-paginated: `after` is the
        `next_cursor` of the previous page (the last id it listed). `scope`: only the ids
        these patterns allow (an exact id, a `prefix*` or `*`), as an API key's projects."""
        if limit < 1:
            raise InvalidInput("limit must be at least 1", limit=limit)
        statement = q.PROJECT_SUMMARIES.limit(limit + 1)
        if after is not None:
            statement = statement.where(q.PROJECT.c.id > after)
        if scope is not None and "*" not in scope:
            project_id = q.PROJECT.c.id
            allowed = [
                func.substr(project_id, 1, len(p) - 1) == p[:-1]
                if p.endswith("*")
                else project_id == p
                for p in scope
            ]
            statement = statement.where(or_(false(), *allowed))
        with self._reader() as conn:
            rows = conn.execute(statement).all()
        items = [
            ProjectSummary(
                project_id=row.id,
                images=row.images,
                created_at=row.created_at,
                last_added_at=row.last_added_at,
            )
            for row in rows[:limit]
        ]
        next_cursor = items[-1].project_id if len(rows) > limit else None
        return ProjectPage(items=items, next_cursor=next_cursor)

    def search(
        self, project_id: str, vector: Any, limit: int, space_key: str | None = None
    ) -> builtins.list[SearchHit]:
        """The `limit` live images closest to `vector` (cosine), best first.

        Returns min(limit, live images) hits; an unknown or empty project gives [].
        `space_key` names the space `vector` was embedded in: when it is not the active one
        (the catalog switched models meanwhile) `EmbeddingSpaceChanged` is raised.
        """
        if limit < 1:
            raise InvalidInput("limit must be at least 1", limit=limit)
        with self._reader() as conn:
            self._check_space(space_key)
            query = self._vector(vector)
            state = self._indexes.get(project_id)
            if state is None or state.live == 0:
                return []
            labels, scores = state.knn(query, min(limit, state.live))
            if len(labels) == 0:
                return []
            score_of = {int(lab): float(s) for lab, s in zip(labels, scores, strict=True)}
            rows = conn.execute(
                q.BY_LABELS, {"project_id": project_id, "labels": builtins.list(score_of)}
            ).all()
        hits = [
            SearchHit.model_construct(record=q.record_from_row(r), score=score_of[r.label])
            for r in rows
        ]
        hits.sort(key=lambda hit: (-hit.score, hit.record.id))
        return hits

    def similar(
        self, project_id: str, image_id: str, limit: int
    ) -> builtins.list[SearchHit] | None:
        """The `limit` live images closest to image `image_id` of the project (its stored
        vector), itself excluded, best first; None when that image is absent or deleting."""
        if limit < 1:
            raise InvalidInput("limit must be at least 1", limit=limit)
        with self._reader() as conn:
            row = conn.execute(
                q.VECTOR_BY_ID, {"project_id": project_id, "image_id": image_id}
            ).first()
        if row is None:
            return None
        vector = np.frombuffer(row.vector, dtype=np.float32)
        hits = self.search(project_id, vector, limit + 1)
        return [hit for hit in hits if hit.record.id != image_id][:limit]

    def duplicates(
        self,
        project_id: str,
        threshold: float = dup.DEFAULT_THRESHOLD,
        limit: int = 20,
        cursor: str | None = None,
        k: int = dup.DEFAULT_NEIGHBOURS,
    ) -> DuplicatePage:
        """One page of the project's groups of near-identical live images: connected
        components of "cosine >= `threshold`" over each image's `k` nearest neighbours
        (`duplicates`), largest group first, then oldest first image; `limit` groups a page.

        A first page (no `cursor`) comes from a scan of the project as it is now; each scan
        (per generation, threshold and k) is kept, a few at a time, for the pages after it.
        A `cursor` continues its own scan even if the project changed since: images deleted
        since are left out (a group left with fewer than two is skipped; `size` still counts
        the scan's), images added since are not in it. `Conflict` when the project changed
        and that scan is no longer kept (start again without a cursor); `InvalidInput` for a
        malformed cursor, one from another project, threshold or k, or a parameter out of
        range. An unknown or empty project gives an empty page.

        Under the lock a scan only copies the project's hnswlib index and its live labels
        (a fraction of a second at 50k images); reading their vectors, the k-NN queries
        (several threads, on the copy) and the grouping run outside it, so searches and
        writes go on. One scan runs at a time; a caller waiting for the same one then finds
        it kept.
        """
        if not dup.MIN_THRESHOLD <= threshold <= 1.0:
            raise InvalidInput(
                f"threshold must be between {dup.MIN_THRESHOLD} and 1", threshold=threshold
            )
        if limit < 1:
            raise InvalidInput("limit must be at least 1", limit=limit)
        if not 1 <= k <= dup.MAX_NEIGHBOURS:
            raise InvalidInput(f"k must be between 1 and {dup.MAX_NEIGHBOURS}", k=k)
        owner = dup.fingerprint(project_id, threshold, k)
        at, offset = dup.decode_cursor(cursor, owner) if cursor else (None, 0)
        scan = self._duplicate_scan(project_id, threshold, k, at)
        page = scan.groups[offset : offset + limit]
        shown = [
            builtins.list(zip(g.labels, g.scores, strict=True))[: dup.MAX_GROUP_IMAGES]
            for g in page
        ]
        labels = sorted({label for members in shown for label, _score in members})
        with self._reader() as conn:  # live rows only: an image deleted since is left out
            rows = (
                conn.execute(q.BY_LABELS, {"project_id": project_id, "labels": labels}).all()
                if labels
                else []
            )
        records = {row.label: q.record_from_row(row) for row in rows}
        groups: builtins.list[DuplicateGroup] = []
        for group, members in zip(page, shown, strict=True):
            hits = [
                SearchHit.model_construct(record=records[label], score=score)
                for label, score in members
                if label in records
            ]
            if len(hits) >= 2:
                groups.append(DuplicateGroup.model_construct(size=len(group.labels), members=hits))
        more = offset + limit < len(scan.groups)
        return DuplicatePage(
            groups=groups,
            total=len(scan.groups),
            threshold=threshold,
            neighbours=k,
            scanned=scan.scanned,
            generation=scan.generation,
            next_cursor=dup.encode_cursor(scan.generation, offset + limit, owner) if more else None,
        )

    def _duplicate_scan(
        self, project_id: str, threshold: float, k: int, generation: int | None
    ) -> dup.DuplicateScan:
        """The kept scan at `generation` (None: the project's current one), else a new scan
        of the project as it is now; `Conflict` for a past generation no longer kept."""
        scans = self._duplicate_scans

        def kept() -> dup.DuplicateScan | None:  # under the lock
            state = self._indexes.get(project_id)
            current = state.generation if state is not None else 0
            scan = scans.get(
                project_id, current if generation is None else generation, threshold, k
            )
            if scan is None and generation is not None and generation != current:
                raise Conflict(
                    "the project changed since this cursor was issued and its duplicates scan "
                    "is no longer kept: start again without a cursor",
                    project_id=project_id,
                )
            return scan

        with self._reader():
            scan = kept()
        if scan is not None:
            return scan
        with scans.scanning:
            started = time.perf_counter()
            with self._reader() as conn:
                scan = kept()
                if scan is not None:
                    return scan
                state = self._indexes.get(project_id)
                current = state.generation if state is not None else 0
                space = self.active_space
                copy: ProjectIndex | None = None
                labels = np.empty(0, dtype=np.int64)
                if state is not None and state.live > 1:
                    found = conn.execute(q.LIVE_LABELS_OLDEST_FIRST, {"project_id": project_id})
                    labels = np.fromiter(found.scalars(), dtype=np.int64)
                    copy = state.snapshot()
            locked = time.perf_counter() - started
            groups: tuple[dup.Group, ...] = ()
            scanned = state.live if state is not None else 0
            if copy is not None:
                # A label's vector changes only with the model: read those of the copy's space
                # without the lock (a WAL reader does not wait for the writer, and unlike
                # hnswlib's get_items it lets other threads run); an image deleted since the
                # copy drops out, and so does every image if the model switched meanwhile.
                with self._engine.connect() as conn:
                    rows = conn.execute(
                        q.LIVE_VECTORS_IN_SPACE,
                        {"project_id": project_id, "space_key": space.key},
                    ).all()
                stored = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                blob = b"".join(r[1] for r in rows)
                del rows  # the scan below runs for seconds: drop each copy once used
                matrix = np.frombuffer(blob, dtype=np.float32).reshape(len(stored), space.dim)
                labels, vectors = dup.aligned(labels, stored, matrix)
                del blob, matrix
                scanned = len(labels)
                groups = dup.scan_groups(copy, labels, vectors, threshold, k)
            scan = dup.DuplicateScan(
                project_id=project_id,
                generation=current,
                threshold=threshold,
                k=k,
                scanned=scanned,
                groups=groups,
                seconds=time.perf_counter() - started,
                locked_seconds=locked,
            )
            scans.put(scan)
            if copy is not None:
                log.info(
                    "duplicates scan of project %s: %d images, %d groups at cosine >= %s "
                    "in %.2f s (lock held %.3f s)",
                    project_id,
                    scan.scanned,
                    len(groups),
                    threshold,
                    scan.seconds,
                    locked,
                )
            return scan

    def pending_deletes(self, older_than_s: float = 0.0) -> builtins.list[ImageRecord]:
        """Tombstoned images of all projects, oldest image first, whose delete began at least
        `older_than_s` seconds ago (0: every one), so that their owner can finish them.

        A tombstone found in the database at open counts from the open.
        """
        with self._reader() as conn:
            rows = conn.execute(q.TOMBSTONED).all()
            now = time.monotonic()
            return [
                q.record_from_row(row)
                for row in rows
                if now - self._tombstoned_at.get(row.id, self._opened_at) >= older_than_s
            ]

    def stats(self) -> dict[str, int]:
        """Live images per project (every known project, zero included)."""
        with self._reader() as conn:
            counts = {row[0]: int(row[1]) for row in conn.execute(q.LIVE_PER_PROJECT)}
            projects = conn.execute(q.PROJECT_IDS).scalars().all()
        return {project_id: counts.get(project_id, 0) for project_id in projects}

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

        with self._session() as session:
            for img in images:
                self._check_space(img.space_key)
            vectors = [self._vector(img.vector) for img in images]
            existing = {
                row.sha256: row
                for row in session.exec(
                    select(ImageRow)
                    .options(q.NO_VECTOR)
                    .where(
                        ImageRow.project_id == project_id,
                        col(ImageRow.sha256).in_({img.sha256 for img in images}),
                        ImageRow.deleting == False,  # noqa: E712
                    )
                ).all()
            }
            results: builtins.list[ImageRecord | None] = []
            fresh: builtins.list[tuple[int, NewImage, Vectors]] = []  # (position, image, vector)
            first_of_sha: dict[str, int] = {}
            for pos, (img, vec) in enumerate(zip(images, vectors, strict=True)):
                if img.sha256 in existing:
                    results.append(q.record_from_orm(existing[img.sha256], duplicate=True))
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
                    space_key=self.active_space.key,
                )
                for (_pos, img, vec), label in zip(fresh, labels, strict=True)
            ]
            self._write(session, state, project_id, rows, np.stack([f[2] for f in fresh]), labels)

            for (pos, _img, _vec), row in zip(fresh, rows, strict=True):
                results[pos] = q.record_from_orm(row)
            for pos, img in enumerate(images):
                if results[pos] is None:
                    first = results[first_of_sha[img.sha256]]
                    assert first is not None
                    results[pos] = first.model_copy(update={"duplicate": True})
        return [r for r in results if r is not None]

    def _write(
        self,
        session: Session,
        state: ProjectIndex,
        project_id: str,
        rows: builtins.list[ImageRow],
        vectors: Vectors,
        labels: Labels,
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

    def _row(self, session: Session, project_id: str, image_id: str) -> ImageRow | None:
        """The image's ORM row (live or tombstoned, without its vector), or None."""
        return session.exec(
            select(ImageRow)
            .options(q.NO_VECTOR)
            .where(ImageRow.project_id == project_id, ImageRow.id == image_id)
        ).first()

    def begin_delete(self, project_id: str, image_id: str) -> ImageRecord | None:
        """Tombstone the image and hide its vector; None when no such row exists.

        An image already being deleted is returned again, so a retried DELETE can finish.
        """
        with self._session() as session:
            row = self._row(session, project_id, image_id)
            if row is None:
                return None
            state = self._indexes.get(project_id)
            if not row.deleting:
                row.deleting = True
                session.add(row)
                generation = self._bump_generation(session, project_id)
                session.commit()
                self._tombstoned_at[image_id] = time.monotonic()
                if state is not None:
                    state.mark_deleted([row.label])
                    state.live -= 1
                    self._changed(state, generation)
            elif state is not None:
                state.mark_deleted([row.label])  # harmless if already hidden
            return q.record_from_orm(row)

    def finish_delete(self, project_id: str, image_id: str) -> None:
        """Remove the image's row (after its stored object is gone); a no-op when absent."""
        with self._session() as session:
            row = self._row(session, project_id, image_id)
            if row is None:
                return
            was_live = not row.deleting
            label = row.label
            session.delete(row)
            generation = self._bump_generation(session, project_id)
            session.commit()
            self._tombstoned_at.pop(image_id, None)
            state = self._indexes.get(project_id)
            if state is not None:
                state.mark_deleted([label])
                if was_live:
                    state.live -= 1
                self._changed(state, generation)

    # --- model changes (re-embedding; SQL in `spaces`) ------------------------------------

    @property
    def reembedding(self) -> bool:
        """Whether the catalog answers from another space than the configured model's."""
        return self.active_space != self.target_space

    def reembed_todo(self, limit: int) -> builtins.list[ImageToEmbed]:
        """Up to `limit` live images without a vector in the target space, oldest first."""
        with self._reader() as conn:
            return spaces.todo(conn, self.target_space, limit)

    def reembed_counts(self) -> tuple[int, int]:
        """(live images with a vector in the target space, live images)."""
        with self._reader() as conn:
            live = spaces.count_live(conn)
            return live - spaces.count_todo(conn, self.target_space), live

    def store_reembedded(self, vectors: Sequence[tuple[str, Any]]) -> int:
        """Keep `(image id, vector in the target space)` pairs until the switch; images gone
        meanwhile are skipped. Returns how many were stored."""
        target = self.target_space
        blobs = [(image_id, unit_vector(v, target.dim).tobytes()) for image_id, v in vectors]
        with self._session() as session:
            stored = spaces.store_pending(session.connection(), target, blobs)
            session.commit()
        return stored

    def set_aside(self, project_id: str, image_id: str, reason: str) -> bool:
        """Move a live image whose original cannot be embedded again (gone, unreadable) out
        of the catalog into the quarantine table with `reason`, as the row check does; its
        object is left alone. Returns False when the image is not live (nothing done)."""
        columns = image_columns()
        with self._session() as session:
            row = self._row(session, project_id, image_id)
            if row is None or row.deleting:
                return False
            conn = session.connection()
            conn.exec_driver_sql(CREATE_QUARANTINE)
            conn.execute(
                text(
                    f"INSERT INTO {QUARANTINE_TABLE} ({columns}, reason, quarantined_at) "
                    f"SELECT {columns}, :reason, :now FROM image WHERE id = :image_id"
                ),
                {"reason": reason[:300], "now": utcnow().isoformat(), "image_id": image_id},
            )
            session.delete(row)
            generation = self._bump_generation(session, project_id)
            session.commit()
            state = self._indexes.get(project_id)
            if state is not None:
                state.mark_deleted([row.label])
                state.live -= 1
                self._changed(state, generation)
        log.error("image %s of project %s set aside: %s", image_id, project_id, reason)
        return True

    def switch_to_target(self) -> bool:
        """Answer from the target space from now on, if every live image has a vector in it.

        The new indexes are built from the pending vectors outside the lock (searches go on
        meanwhile), then, under the lock, brought up to date with what changed during the
        build, and swapped in together with one SQLite transaction that moves the vectors into
        the rows and makes the target active. False (nothing changed) while images are left.
        """
        target = self.target_space
        if not self.reembedding:
            return True
        params = HnswParams(target.dim, self.hnsw_m, self.ef_construction, self.ef_search)
        with self._engine.connect() as conn, conn.begin():  # one consistent read
            if spaces.count_todo(conn, target):
                return False
            built = {
                project_id: self._build_in(conn, project_id, target, params)
                for project_id in conn.execute(q.PROJECT_IDS).scalars().all()
            }
        with self._save_lock, self._session() as session:
            conn = session.connection()
            if spaces.count_todo(conn, target):
                return False
            markers = {m.project_id: m.generation for m in session.exec(select(IndexState)).all()}
            indexes: dict[str, ProjectIndex] = {}
            for project_id in conn.execute(q.PROJECT_IDS).scalars().all():
                state, labels, generation = built.get(project_id) or (
                    ProjectIndex.create(params, min(MIN_CAPACITY, self.max_elements)),
                    set(),
                    None,
                )
                if generation != markers.get(project_id, 0):
                    self._catch_up(conn, project_id, target, state, labels)
                old = self._indexes.get(project_id)
                if old is not None:
                    state.next_label = max(state.next_label, old.next_label)
                indexes[project_id] = state
            moved = spaces.switch_rows(conn, target)
            generations = {p: self._bump_generation(session, p) for p in indexes}
            session.commit()
            for project_id, state in indexes.items():
                state.generation = generations[project_id]
            self._indexes = indexes
            self.active_space, self.dim, self._params = target, target.dim, params
            self._unsaved_changes += 1
            self.save_due.set()
        log.info("switched the catalog to %s: %d vectors", target.describe(), moved)
        return True

    def _build_in(
        self, conn: Connection, project_id: str, target: EmbeddingSpace, params: HnswParams
    ) -> tuple[ProjectIndex, set[int], int]:
        """(index of the project's pending vectors, their labels, the generation they are of)."""
        generation = conn.execute(
            select(IndexState.generation).where(IndexState.project_id == project_id)
        ).scalar()
        pairs = spaces.pending_of_project(conn, project_id, target)
        _rows, _live, max_label = conn.execute(q.COUNTS, {"project_id": project_id}).one()
        labels = np.fromiter((label for label, _ in pairs), dtype=np.int64, count=len(pairs))
        vectors = np.frombuffer(b"".join(blob for _, blob in pairs), dtype=np.float32)
        state = ProjectIndex.build(params, labels, vectors, self.max_elements, max_label)
        return state, set(labels.tolist()), int(generation or 0)

    def _catch_up(
        self,
        conn: Connection,
        project_id: str,
        target: EmbeddingSpace,
        state: ProjectIndex,
        built: set[int],
    ) -> None:
        """Bring an index built from an older state up to the project's live images now."""
        pairs = dict(spaces.pending_of_project(conn, project_id, target))
        state.mark_deleted(builtins.list(built - pairs.keys()))
        new = [label for label in pairs if label not in built]
        if new:
            state.reserve(len(new), self.max_elements)
            vectors = np.frombuffer(b"".join(pairs[label] for label in new), dtype=np.float32)
            state.add(vectors.reshape(len(new), target.dim), np.asarray(new, dtype=np.int64))
        state.live = len(pairs)

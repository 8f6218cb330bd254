"""The catalog's SQL: opening the database, the statements it runs, rows into records, and the
listing cursor.

- `open_engine` gives the SQLite engine with the catalog's pragmas (WAL, synchronous=NORMAL,
  a busy timeout, 16 KB pages on a new file) and the tables and indexes it needs; an index an
  older database lacks is added.
- The statements are built once, at import: SQLAlchemy then reuses their compiled SQL, which
  keeps reads in the 100 us range. Reads go through Core and select `RECORD_COLUMNS` (every
  column but the vector blob); `record_from_row` turns such a row into an `ImageRecord`,
  `record_from_orm` does the same for an ORM `ImageRow`.
- `encode_cursor` / `decode_cursor`: the opaque keyset cursor of newest-first listings, the
  url-safe base64 of the last item's `created_at` (ISO, with its offset) and id.

No locking and no hnswlib here: `VectorCatalog` runs these under its lock.
"""

from __future__ import annotations

import base64
import binascii
import logging
import sqlite3
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Engine,
    Index,
    Row,
    Table,
    bindparam,
    case,
    event,
    false,
    func,
    or_,
    true,
)
from sqlalchemy.dialects.sqlite import Insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import QueryableAttribute, defer
from sqlalchemy.schema import CreateIndex
from sqlmodel import SQLModel, create_engine, select

from core.errors import InvalidInput
from core.records import ImageRecord
from deployments.vector_store.models import (
    EmbeddingSpaceRow,
    ImageRow,
    IndexState,
    PendingVector,
    Project,
)
from deployments.vector_store.schema import stamp_new

__all__ = [
    "BUMP_GENERATION",
    "BY_ID",
    "BY_LABELS",
    "BY_SHA",
    "VECTOR_BY_ID",
    "COUNTS",
    "COUNT_LIVE",
    "IMAGE",
    "INDEX_STATE",
    "LIVE_LABELS_OLDEST_FIRST",
    "LIVE_PER_PROJECT",
    "LIVE_VECTORS",
    "LIVE_VECTORS_IN_SPACE",
    "NO_VECTOR",
    "PAGE_AFTER",
    "PAGE_FIRST",
    "PROJECT",
    "PROJECT_IDS",
    "PROJECT_SUMMARIES",
    "RECORD_COLUMNS",
    "TOMBSTONED",
    "decode_cursor",
    "encode_cursor",
    "open_engine",
    "record_from_orm",
    "record_from_row",
    "save_marker",
]

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
PAGE_SIZE = 16_384
_WAL_RESET_FIX = (3, 51, 3)  # SQLite release that fixed the WAL-reset race

IMAGE: Table = SQLModel.metadata.tables[ImageRow.__tablename__]
PROJECT: Table = SQLModel.metadata.tables[Project.__tablename__]
INDEX_STATE: Table = SQLModel.metadata.tables[IndexState.__tablename__]
SPACE: Table = SQLModel.metadata.tables[EmbeddingSpaceRow.__tablename__]
PENDING: Table = SQLModel.metadata.tables[PendingVector.__tablename__]
_TOMBSTONE_INDEX: Index = next(i for i in IMAGE.indexes if i.name == "ix_image_tombstones")

# --- the database ---------------------------------------------------------------------------


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


def open_engine(db_path: Path) -> Engine:
    """The engine of the catalog database `db_path`, its tables and indexes created if missing.

    Run `schema.upgrade` on the file first: tables created here are the current ones, and a
    database that had none is stamped with the current schema version."""
    if sqlite3.sqlite_version_info < _WAL_RESET_FIX:
        # The race needs two connections writing/checkpointing at once: in the catalog every
        # write goes through its lock and backups read through a read-only connection.
        log.debug("SQLite %s predates the WAL-reset fix of 3.51.3", sqlite3.sqlite_version)
    engine = create_engine(
        f"sqlite:///{db_path}",
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
    )
    event.listen(engine, "connect", _set_sqlite_pragmas)
    SQLModel.metadata.create_all(engine, tables=[PROJECT, IMAGE, INDEX_STATE, SPACE, PENDING])
    with engine.begin() as conn:  # create_all adds no index to a table that already exists
        conn.execute(CreateIndex(_TOMBSTONE_INDEX, if_not_exists=True))
        stamp_new(conn.connection.driver_connection)  # type: ignore[arg-type]
    return engine


# --- statements -----------------------------------------------------------------------------

NO_VECTOR = defer(cast("QueryableAttribute[bytes]", ImageRow.vector))  # ORM rows without the blob
RECORD_COLUMNS = [column for column in IMAGE.c if column.name != "vector"]
_LIVE = (IMAGE.c.project_id == bindparam("project_id")) & (IMAGE.c.deleting == false())
_NEWEST_FIRST = (IMAGE.c.created_at.desc(), IMAGE.c.id.desc())

BY_ID = select(*RECORD_COLUMNS).where(_LIVE, IMAGE.c.id == bindparam("image_id"))
BY_SHA = select(*RECORD_COLUMNS).where(_LIVE, IMAGE.c.sha256 == bindparam("sha256"))
VECTOR_BY_ID = select(IMAGE.c.vector).where(_LIVE, IMAGE.c.id == bindparam("image_id"))
BY_LABELS = select(*RECORD_COLUMNS).where(
    _LIVE, IMAGE.c.label.in_(bindparam("labels", expanding=True))
)
COUNT_LIVE = select(func.count()).select_from(IMAGE).where(_LIVE)
PAGE_FIRST = select(*RECORD_COLUMNS).where(_LIVE).order_by(*_NEWEST_FIRST).limit(bindparam("limit"))
PAGE_AFTER = (
    select(*RECORD_COLUMNS)
    .where(
        _LIVE,
        or_(
            IMAGE.c.created_at < bindparam("after_created"),
            (IMAGE.c.created_at == bindparam("after_created"))
            & (IMAGE.c.id < bindparam("after_id")),
        ),
    )
    .order_by(*_NEWEST_FIRST)
    .limit(bindparam("limit"))
)
# (label, vector) of every live row of a project: what its index is built from.
LIVE_VECTORS = select(IMAGE.c.label, IMAGE.c.vector).where(_LIVE)
# The same, only those in one embedding space (a read outside the lock that a model switch
# may overtake).
LIVE_VECTORS_IN_SPACE = LIVE_VECTORS.where(IMAGE.c.space_key == bindparam("space_key"))
# Labels of every live row of a project, oldest first: the rows of a duplicates scan.
LIVE_LABELS_OLDEST_FIRST = (
    select(IMAGE.c.label).where(_LIVE).order_by(IMAGE.c.created_at, IMAGE.c.id)
)
# (rows, live rows, largest label) of a project: what a saved index file must still match.
COUNTS = select(
    func.count(),
    func.coalesce(func.sum(case((IMAGE.c.deleting == false(), 1), else_=0)), 0),
    func.max(IMAGE.c.label),
).where(IMAGE.c.project_id == bindparam("project_id"))
# Every tombstone, oldest image first (reads the partial index ix_image_tombstones only).
TOMBSTONED = (
    select(*RECORD_COLUMNS)
    .where(IMAGE.c.deleting == true())
    .order_by(IMAGE.c.created_at, IMAGE.c.id)
)
# Live images per project, and every project (stats).
LIVE_PER_PROJECT = (
    select(IMAGE.c.project_id, func.count())
    .where(IMAGE.c.deleting == false())
    .group_by(IMAGE.c.project_id)
)
PROJECT_IDS = select(PROJECT.c.id)
# Projects by id with their live image counts; the caller adds the cursor, scope and limit.
_LIVE_IN_PROJECT = (IMAGE.c.project_id == PROJECT.c.id) & (IMAGE.c.deleting == false())
PROJECT_SUMMARIES = (
    select(
        PROJECT.c.id,
        PROJECT.c.created_at,
        func.count(IMAGE.c.id).label("images"),
        func.max(IMAGE.c.created_at).label("last_added_at"),
    )
    .select_from(PROJECT.outerjoin(IMAGE, _LIVE_IN_PROJECT))
    .group_by(PROJECT.c.id)
    .order_by(PROJECT.c.id)
)
# Count one change of a project in the current transaction; returns the new generation.
BUMP_GENERATION = (
    sqlite_insert(INDEX_STATE)
    .values(project_id=bindparam("project_id"), generation=1)
    .on_conflict_do_update(
        index_elements=[INDEX_STATE.c.project_id],
        set_={"generation": INDEX_STATE.c.generation + 1},
    )
    .returning(INDEX_STATE.c.generation)
)


def save_marker(project_id: str, generation: int, marker: Mapping[str, Any]) -> Insert:
    """Record a saved index file (`marker`: the `saved_*` columns) for the project."""
    return (
        sqlite_insert(INDEX_STATE)
        .values(project_id=project_id, generation=generation, **marker)
        .on_conflict_do_update(index_elements=[INDEX_STATE.c.project_id], set_=dict(marker))
    )


# --- records --------------------------------------------------------------------------------


def record_from_row(row: Row[Any], *, duplicate: bool = False) -> ImageRecord:
    """An `ImageRecord` from a Core row of `RECORD_COLUMNS` (already typed by the columns)."""
    return ImageRecord.model_construct(**dict(row._mapping), duplicate=duplicate)


def record_from_orm(row: ImageRow, *, duplicate: bool = False) -> ImageRecord:
    """An `ImageRecord` copied (validated) from an ORM row."""
    return ImageRecord.model_validate(row, from_attributes=True).model_copy(
        update={"duplicate": duplicate}
    )


# --- listing cursor -------------------------------------------------------------------------


def encode_cursor(created_at: datetime, image_id: str) -> str:
    """The cursor that continues a newest-first listing after this item."""
    raw = f"{created_at.isoformat()}\n{image_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """`(created_at, image_id)` of a cursor from `encode_cursor`; `InvalidInput` if malformed."""
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

"""SQLite tables of the image-search catalog.

SQLite is the source of truth: `ImageRow` keeps each image's metadata *and* its CLIP vector
(float32 bytes), so the hnswlib index can always be rebuilt from it. The ORM rows never leave
`VectorCatalog`; callers get `core.records` (`ImageRecord`, `SearchHit`, `ImagePage`).

Constraints worth knowing:
- `ImageRow.id` is an opaque id the caller supplies; `object_key` is unique store-wide.
- `(project_id, sha256)` is unique among *live* rows (a partial unique index, `deleting = 0`):
  an image whose delete is still in progress does not block re-uploading the same bytes.
- `(project_id, label)` is unique: a label is the image's id inside the project's hnswlib index.
- `deleting` is a tombstone: set while a delete is in progress; such rows are hidden from
  get/list/search. The caller normally finishes the delete at once; one left behind (a crash,
  or the object store failing in between) is listed by `VectorCatalog.pending_deletes` and
  finished by the `VectorIndex` deployment's sweeper. The partial index
  `ix_image_tombstones` (only rows with `deleting = 1`) keeps that listing cheap.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

__all__ = [
    "EmbeddingSpaceRow",
    "ImageRow",
    "IndexState",
    "PendingVector",
    "Project",
    "REQUIRED_TABLES",
    "utcnow",
]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A DATETIME stored as naive UTC text (so it sorts as text) and read back as aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are refused: pass timezone-aware UTC")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


# --- tables ---------------------------------------------------------------------------------


class Project(SQLModel, table=True):
    """A project: a namespace of images with its own hnswlib index."""

    __tablename__ = "project"

    id: str = Field(primary_key=True, max_length=200)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )


class ImageRow(SQLModel, table=True):
    """One stored image: metadata, hnswlib label and the float32 vector bytes."""

    __tablename__ = "image"
    __table_args__ = (
        UniqueConstraint("project_id", "label", name="uq_image_project_label"),
        Index(
            "uq_image_project_sha256_live",
            "project_id",
            "sha256",
            unique=True,
            sqlite_where=text("deleting = 0"),
        ),
        Index("ix_image_project_created", "project_id", "created_at", "id"),
        Index("ix_image_tombstones", "created_at", "id", sqlite_where=text("deleting = 1")),
    )

    id: str = Field(primary_key=True, max_length=200)
    project_id: str = Field(foreign_key="project.id", index=True, max_length=200)
    object_key: str = Field(unique=True, max_length=1024)
    filename: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    sha256: str = Field(index=True, max_length=64)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=True)
    )
    label: int
    vector: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    deleting: bool = Field(default=False, nullable=False)
    # The embedding space (model) `vector` is in: `EmbeddingSpaceRow.key` (schema 2).
    space_key: str = Field(
        default="", sa_column=Column(String(2100), nullable=False, server_default="")
    )


class EmbeddingSpaceRow(SQLModel, table=True):
    """A model that made vectors of this catalog (`core.records.EmbeddingSpace`), schema 2.

    Exactly one is `active`: the space of every live row's `vector` and of the search indexes.
    Others are kept: tombstones may still name them, and they say what the catalog held.
    """

    __tablename__ = "embedding_space"
    __table_args__ = (
        Index("uq_embedding_space_active", "active", unique=True, sqlite_where=text("active = 1")),
    )

    key: str = Field(primary_key=True, max_length=2100)
    model: str = Field(max_length=1000)
    pretrained: str = Field(default="", max_length=1000)
    dim: int
    active: bool = Field(default=False, nullable=False)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )


class PendingVector(SQLModel, table=True):
    """An image's vector in a space the catalog is moving to (re-embedding, schema 2).

    Written batch by batch in the background, so a restart resumes where it stopped; moved
    into `image.vector` in the one transaction that makes that space active. Deleted with its
    image (foreign key, ON DELETE CASCADE).
    """

    __tablename__ = "pending_vector"

    image_id: str = Field(
        sa_column=Column(String(200), ForeignKey("image.id", ondelete="CASCADE"), primary_key=True)
    )
    space_key: str = Field(primary_key=True, max_length=2100)
    vector: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class IndexState(SQLModel, table=True):
    """Per project: a change counter, and which saved hnswlib file matches which state.

    `generation` is bumped in the same transaction as every change to the project's rows, so
    it names the state of SQLite. The `saved_*` columns describe the index file last written
    beside the database (`VectorCatalog` persistence): the generation it was saved at, its
    sha256 and size, the project's row count, live count and largest label at that moment,
    and the index parameters (`saved_params`). A file is loaded at start only when all of
    them still match; else the index is rebuilt from the rows. Databases from before this
    table get it on open (no rows yet: the first start rebuilds, as before).
    """

    __tablename__ = "index_state"

    project_id: str = Field(primary_key=True, foreign_key="project.id", max_length=200)
    generation: int = Field(default=0, nullable=False)
    saved_generation: int | None = None
    saved_sha256: str | None = Field(default=None, max_length=64)
    saved_bytes: int | None = None
    saved_rows: int | None = None
    saved_live: int | None = None
    saved_max_label: int | None = None
    saved_params: str | None = Field(default=None, max_length=200)


REQUIRED_TABLES: frozenset[str] = frozenset({"project", "image"})
"""Tables a database (or a restored snapshot) must contain to be usable by the catalog."""

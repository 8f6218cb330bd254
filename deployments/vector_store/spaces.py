"""The SQL of embedding spaces and re-embedding (schema 2; see `schema` and `models`).

A catalog answers from one active space. When the configured model differs from it, every
live image is embedded again from its original into the target space (`Reembedder`), each
vector stored in `pending_vector` as it comes; `switch_rows` then moves them into
`image.vector` in the caller's transaction. No locking and no hnswlib here: `VectorCatalog`
runs these under its lock; the re-embedding CLI runs the read and write ones on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import Connection, text

from core.records import EmbeddingSpace
from deployments.vector_store.models import utcnow

__all__ = [
    "ImageToEmbed",
    "activate",
    "active_space",
    "count_live",
    "count_todo",
    "drop_stale_pending",
    "pending_of_project",
    "store_pending",
    "switch_rows",
    "todo",
]


class ImageToEmbed(NamedTuple):
    """A live image that has no vector in the target space yet."""

    id: str
    project_id: str
    object_key: str


_MISSING = """
FROM image
WHERE deleting = 0 AND space_key != :target AND NOT EXISTS (
    SELECT 1 FROM pending_vector p WHERE p.image_id = image.id AND p.space_key = :target)
"""


def active_space(conn: Connection) -> EmbeddingSpace | None:
    """The space the catalog answers from, None for a database that has none yet."""
    row = conn.execute(
        text("SELECT model, pretrained, dim FROM embedding_space WHERE active = 1")
    ).first()
    if row is None:
        return None
    return EmbeddingSpace(model=row.model, pretrained=row.pretrained, dim=int(row.dim))


def activate(conn: Connection, space: EmbeddingSpace) -> None:
    """Make `space` the active one (recorded if new), in the caller's transaction."""
    conn.execute(text("UPDATE embedding_space SET active = 0 WHERE active = 1"))
    conn.execute(
        text(
            "INSERT INTO embedding_space (key, model, pretrained, dim, active, created_at) "
            "VALUES (:key, :model, :pretrained, :dim, 1, :now) "
            "ON CONFLICT (key) DO UPDATE SET active = 1"
        ),
        {
            "key": space.key,
            "model": space.model,
            "pretrained": space.pretrained,
            "dim": space.dim,
            "now": utcnow().replace(tzinfo=None),
        },
    )


def count_live(conn: Connection) -> int:
    """Live images of every project."""
    return int(conn.execute(text("SELECT count(*) FROM image WHERE deleting = 0")).scalar_one())


def count_todo(conn: Connection, target: EmbeddingSpace) -> int:
    """Live images still without a vector in `target`."""
    found = conn.execute(text("SELECT count(*) " + _MISSING), {"target": target.key})
    return int(found.scalar_one())


def todo(conn: Connection, target: EmbeddingSpace, limit: int) -> list[ImageToEmbed]:
    """Up to `limit` live images without a vector in `target`, oldest first."""
    rows = conn.execute(
        text(
            "SELECT id, project_id, object_key " + _MISSING + "ORDER BY created_at, id LIMIT :limit"
        ),
        {"target": target.key, "limit": limit},
    ).all()
    return [ImageToEmbed(row.id, row.project_id, row.object_key) for row in rows]


def store_pending(
    conn: Connection, target: EmbeddingSpace, vectors: Sequence[tuple[str, bytes]]
) -> int:
    """Store `(image id, float32 bytes)` as vectors in `target`; images gone meanwhile are
    skipped. Returns how many were stored."""
    stored = 0
    for image_id, blob in vectors:
        result = conn.execute(
            text(
                "INSERT OR REPLACE INTO pending_vector (image_id, space_key, vector) "
                "SELECT id, :target, :vector FROM image WHERE id = :image_id AND deleting = 0"
            ),
            {"target": target.key, "vector": blob, "image_id": image_id},
        )
        stored += result.rowcount
    return stored


def drop_stale_pending(conn: Connection, active: EmbeddingSpace, target: EmbeddingSpace) -> int:
    """Delete pending vectors that can never be used: of the active space, or of the target
    with the wrong length. Vectors of other spaces stay (a later switch may use them)."""
    result = conn.execute(
        text(
            "DELETE FROM pending_vector WHERE space_key = :active "
            "OR (space_key = :target AND length(vector) != :size)"
        ),
        {"active": active.key, "target": target.key, "size": target.dim * 4},
    )
    return int(result.rowcount)


def pending_of_project(
    conn: Connection, project_id: str, target: EmbeddingSpace
) -> list[tuple[int, bytes]]:
    """(label, vector in `target`) of the project's live images that have one."""
    rows = conn.execute(
        text(
            "SELECT image.label, p.vector FROM image JOIN pending_vector p "
            "ON p.image_id = image.id AND p.space_key = :target "
            "WHERE image.project_id = :project_id AND image.deleting = 0"
        ),
        {"target": target.key, "project_id": project_id},
    ).all()
    return [(int(row[0]), bytes(row[1])) for row in rows]


def switch_rows(conn: Connection, target: EmbeddingSpace) -> int:
    """In the caller's transaction: move every pending vector of `target` into its live image
    and make `target` active. Returns the rows moved. The caller checks `count_todo` first."""
    moved = conn.execute(
        text(
            "UPDATE image SET space_key = :target, vector = ("
            "SELECT p.vector FROM pending_vector p "
            "WHERE p.image_id = image.id AND p.space_key = :target) "
            "WHERE deleting = 0 AND EXISTS ("
            "SELECT 1 FROM pending_vector p WHERE p.image_id = image.id AND p.space_key = :target)"
        ),
        {"target": target.key},
    ).rowcount
    conn.execute(
        text("DELETE FROM pending_vector WHERE space_key = :target"), {"target": target.key}
    )
    activate(conn, target)
    return int(moved)

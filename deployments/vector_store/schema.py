"""The catalog database's schema version and its ordered migrations.

The version lives in SQLite's `PRAGMA user_version`. Version 1 is the catalog as released
before versions existed (tables `project`, `image`, `index_state`; user_version 0 on disk);
each later version is one step, applied in its own transaction together with the new
user_version, so a crash leaves the file at one version or the next, never between.
`upgrade` runs every missing step; the VectorIndex calls it on its database before opening
it and on every snapshot it restores, before the snapshot's rows are checked. A database of a
newer version than this code knows is refused (`SchemaTooNew`), never guessed at.

A new, empty file is left at 0: the catalog creates the current tables whole
(`queries.open_engine`) and stamps `LATEST` (`stamp_new`).

Steps:
- 2: embedding spaces. Every vector records the model that made it (`image.space_key`,
  table `embedding_space`, one of them active) and a table `pending_vector` holds vectors
  re-embedded for a model change until the switch. The vectors already stored were made by a
  model the database never recorded: the step names it from `LegacyModel` (settings
  IMAGE_SEARCH_LEGACY_MODEL / IMAGE_SEARCH_LEGACY_PRETRAINED, by default what releases before
  schema 2 shipped), with the dimension read from the vectors themselves.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlmodel import SQLModel

from core.records import EmbeddingSpace
from deployments.vector_store.models import EmbeddingSpaceRow, PendingVector, utcnow

__all__ = [
    "LATEST",
    "LegacyModel",
    "SchemaTooNew",
    "UpgradeReport",
    "read_version",
    "stamp_new",
    "upgrade",
]

log = logging.getLogger(__name__)

LATEST = 2
_BUSY_TIMEOUT_MS = 10_000


class SchemaTooNew(RuntimeError):
    """The database was written by a newer version of the server."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"the catalog database is at schema version {version}, newer than this server's "
            f"{LATEST}: it was written by a newer release; run that release (or restore an "
            "older snapshot)"
        )
        self.version = version


@dataclass(frozen=True)
class LegacyModel:
    """The model that made the vectors of a database from before schema 2."""

    model: str
    pretrained: str = ""

    def space(self, dim: int) -> EmbeddingSpace:
        """This model's space for vectors of `dim` floats."""
        return EmbeddingSpace(model=self.model, pretrained=self.pretrained, dim=dim)


@dataclass(frozen=True)
class UpgradeReport:
    """What `upgrade` found and did: the version before and after, and each step applied."""

    before: int
    after: int
    applied: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"before": self.before, "after": self.after, "applied": list(self.applied)}


def _ddl(statement: object) -> str:
    return str(statement.compile(dialect=sqlite_dialect.dialect()))  # type: ignore[attr-defined]


def _step_2_embedding_spaces(conn: sqlite3.Connection, legacy: LegacyModel) -> str:
    spaces = SQLModel.metadata.tables[EmbeddingSpaceRow.__tablename__]
    pending = SQLModel.metadata.tables[PendingVector.__tablename__]
    conn.execute(_ddl(CreateTable(spaces)))
    for index in spaces.indexes:
        conn.execute(_ddl(CreateIndex(index)))
    conn.execute(_ddl(CreateTable(pending)))
    conn.execute("ALTER TABLE image ADD COLUMN space_key VARCHAR(2100) DEFAULT '' NOT NULL")
    tables = _tables(conn)
    if "quarantined_image" in tables:
        conn.execute("ALTER TABLE quarantined_image ADD COLUMN space_key TEXT DEFAULT ''")
    # The most common vector length is the legacy dimension (a row of another length is
    # quarantined by the row check that follows every upgrade).
    found = conn.execute(
        "SELECT length(vector) / 4 AS dim FROM image GROUP BY dim ORDER BY count(*) DESC LIMIT 1"
    ).fetchone()
    if found is None or not found[0]:
        return "embedding spaces (no vectors yet)"
    space = legacy.space(int(found[0]))
    conn.execute(
        "INSERT INTO embedding_space (key, model, pretrained, dim, active, created_at) "
        "VALUES (?, ?, ?, ?, 1, ?)",
        (
            space.key,
            space.model,
            space.pretrained,
            space.dim,
            utcnow().replace(tzinfo=None).isoformat(sep=" "),
        ),
    )
    conn.execute("UPDATE image SET space_key = ?", (space.key,))
    return f"embedding spaces (stored vectors: {space.describe()})"


# Step i + 2 upgrades version i + 1 to i + 2; each returns a line for the report.
_STEPS: tuple[Callable[[sqlite3.Connection, LegacyModel], str], ...] = (_step_2_embedding_spaces,)
assert len(_STEPS) + 1 == LATEST


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def read_version(conn: sqlite3.Connection) -> int:
    """The database's schema version (0: new, or from before versions)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def stamp_new(conn: sqlite3.Connection) -> None:
    """Mark a database whose tables were just created whole as `LATEST` (no-op otherwise)."""
    if read_version(conn) == 0:
        conn.execute(f"PRAGMA user_version = {LATEST}")


def upgrade(path: Path, legacy: LegacyModel) -> UpgradeReport:
    """Bring the database at `path` to `LATEST`, one transaction per step.

    Raises `SchemaTooNew` for a database newer than this code, and `sqlite3.Error` when the
    file is not a database. A file without the catalog's tables is left alone (version 0).
    """
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        before = read_version(conn)
        if before > LATEST:
            raise SchemaTooNew(before)
        if before == 0 and "image" not in _tables(conn):
            return UpgradeReport(before=0, after=0)
        version = max(before, 1)
        applied: list[str] = []
        for to_version, step in enumerate(_STEPS[version - 1 :], start=version + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                if read_version(conn) >= to_version:  # another process did it meanwhile
                    conn.execute("ROLLBACK")
                    continue
                applied.append(f"{to_version}: {step(conn, legacy)}")
                conn.execute(f"PRAGMA user_version = {to_version}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("catalog %s upgraded to schema %d", path, to_version)
        return UpgradeReport(before=before, after=read_version(conn), applied=tuple(applied))
    finally:
        conn.close()

"""Checking every row of a catalog database before it is used, and quarantining the bad ones.

A database restored from object storage (or found on disk) is not trusted as it is: a row's
`object_key` is what the server serves and deletes, its `content_type` what it answers. The
VectorIndex runs `quarantine_untrusted_rows` on the file before opening it. A row is kept only
when `core.image_keys.image_key_problem` finds nothing (its key is exactly the one its project,
id and accepted content type give under the search prefix), its filename is a plain display
name and its vector has the size of the model that made it (schema 2: `image.space_key` names
a row of `embedding_space`; a database from before is checked against `vector_bytes`). Every
other row, live or tombstoned (the delete
sweeper deletes a tombstone's object by key), is moved to the `quarantined_image` table with
the reason: out of list, search, serving and deletes, but kept for an operator to inspect.
Triggers are dropped (the catalog defines none; one could rewrite a key after the check).
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.image_keys import IMAGE_CONTENT_TYPES, image_key_problem

__all__ = [
    "CREATE_QUARANTINE",
    "QUARANTINE_TABLE",
    "QuarantineReport",
    "RowRules",
    "image_columns",
    "quarantine_untrusted_rows",
]

log = logging.getLogger(__name__)

QUARANTINE_TABLE = "quarantined_image"
MAX_EXAMPLES = 5
_MAX_FILENAME = 255
_INTEGERS = ("size_bytes", "width", "height", "label")
# How SQLAlchemy stores models.UTCDateTime in SQLite: naive UTC text.
_STORED_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,6})?")
# Everything a row is checked on; rowid names the row even in a table without a unique id.
_SCAN = (
    "SELECT rowid AS row_ref, id, project_id, object_key, filename, content_type, sha256, "
    "created_at, deleting, length(vector) AS vector_bytes, "
    + ", ".join(f"typeof({name}) AS {name}_type" for name in _INTEGERS)
    + "{space} FROM image"
)
_SPACE_DIM = ", space_key, (SELECT s.dim FROM embedding_space s WHERE s.key = image.space_key)"
_SPACE_DIM += " AS space_dim"
# Every column of `image` (models.ImageRow), copied whole into the quarantine table.
_COLUMNS = (
    "id",
    "project_id",
    "object_key",
    "filename",
    "content_type",
    "size_bytes",
    "width",
    "height",
    "sha256",
    "created_at",
    "label",
    "vector",
    "deleting",
)
CREATE_QUARANTINE = f"""
CREATE TABLE IF NOT EXISTS {QUARANTINE_TABLE} (
    id TEXT, project_id TEXT, object_key TEXT, filename TEXT, content_type TEXT,
    size_bytes INTEGER, width INTEGER, height INTEGER, sha256 TEXT, created_at DATETIME,
    label INTEGER, vector BLOB, deleting BOOLEAN,
    reason TEXT NOT NULL, quarantined_at TEXT NOT NULL, space_key TEXT DEFAULT ''
)"""


def image_columns(with_space: bool = True) -> str:
    """The `image` columns a quarantined row keeps, comma-separated (`space_key` from
    schema 2 on)."""
    return ", ".join(_COLUMNS + (("space_key",) if with_space else ()))


@dataclass(frozen=True)
class RowRules:
    """What a row must be: its key under `search_prefix`, an accepted content type, and (when
    given) a vector of `vector_bytes` bytes (float32 x the embedding dimension)."""

    search_prefix: str
    content_types: tuple[str, ...] = tuple(IMAGE_CONTENT_TYPES)
    vector_bytes: int | None = None

    def problem(self, row: sqlite3.Row) -> str | None:
        """None when the row (the columns `_SCAN` selects) may be used; else why not."""
        reason = image_key_problem(
            self.search_prefix,
            row["project_id"],
            row["id"],
            row["object_key"],
            row["content_type"],
            self.content_types,
        )
        if reason is not None:
            return reason
        if not _plain_filename(row["filename"]):
            return "filename is not a plain display name"
        if "space_dim" in row.keys():  # noqa: SIM118 - `in` on a sqlite3.Row tests values
            if row["space_dim"] is None:
                return f"vector of an unknown model ({_text(row['space_key'])[:200]})"
            if row["vector_bytes"] != row["space_dim"] * 4:
                return f"vector has {row['vector_bytes']} bytes, not {row['space_dim'] * 4}"
        elif self.vector_bytes is not None and row["vector_bytes"] != self.vector_bytes:
            return f"vector has {row['vector_bytes']} bytes, not {self.vector_bytes}"
        odd = [name for name in _INTEGERS if row[f"{name}_type"] != "integer"]
        if odd or row["deleting"] not in (0, 1):
            return f"not integers: {', '.join(odd or ['deleting'])}"
        if not isinstance(row["created_at"], str) or not _STORED_TIME.fullmatch(row["created_at"]):
            return "created_at is not a stored UTC time"
        if not isinstance(row["sha256"], str) or not 0 < len(row["sha256"]) <= 64:
            return "sha256 is not a digest"
        return None


@dataclass(frozen=True)
class QuarantineReport:
    """What `quarantine_untrusted_rows` did: rows checked, rows quarantined (with the first few
    as examples: id, project, key, reason) and triggers dropped."""

    checked: int = 0
    quarantined: int = 0
    examples: tuple[tuple[str, str, str, str], ...] = field(default=())
    dropped_triggers: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        """The report for /readyz (keys and reasons bounded)."""
        return {
            "checked": self.checked,
            "quarantined": self.quarantined,
            "examples": [
                {"id": i[:80], "project_id": p[:80], "object_key": k[:200], "reason": r[:300]}
                for i, p, k, r in self.examples
            ],
            "dropped_triggers": list(self.dropped_triggers),
        }


def quarantine_untrusted_rows(db_path: Path, rules: RowRules) -> QuarantineReport:
    """Move every row of `db_path`'s `image` table that `rules` refuse into `quarantined_image`,
    in one transaction, and drop any trigger. Raises `sqlite3.Error` when the file is not a
    catalog database it can check (a restore then treats the snapshot as unusable)."""
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            report = _quarantine(conn, rules)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    if report.quarantined:
        log.error(
            "quarantined %d of %d catalog rows of %s (moved to %s), e.g. %s",
            report.quarantined,
            report.checked,
            db_path,
            QUARANTINE_TABLE,
            "; ".join(f"{i} of {p}: {r}" for i, p, _k, r in report.examples),
        )
    if report.dropped_triggers:
        log.error("dropped triggers from %s: %s", db_path, ", ".join(report.dropped_triggers))
    return report


def _quarantine(conn: sqlite3.Connection, rules: RowRules) -> QuarantineReport:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "image" not in tables:
        return QuarantineReport()  # a database the catalog has not set up yet: no rows
    triggers = tuple(
        str(name)
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
    )
    for name in triggers:
        conn.execute(f"DROP TRIGGER IF EXISTS {_quoted(name)}")
    conn.row_factory = sqlite3.Row
    with_space = "embedding_space" in tables
    rows = conn.execute(_SCAN.format(space=_SPACE_DIM if with_space else "")).fetchall()
    bad = [(row, reason) for row in rows if (reason := rules.problem(row)) is not None]
    if bad:
        columns = image_columns(with_space)
        now = datetime.now(UTC).isoformat()
        conn.execute(CREATE_QUARANTINE)
        for row, reason in bad:
            conn.execute(
                f"INSERT INTO {QUARANTINE_TABLE} ({columns}, reason, quarantined_at) "
                f"SELECT {columns}, ?, ? FROM image WHERE rowid = ?",
                (reason, now, row["row_ref"]),
            )
            conn.execute("DELETE FROM image WHERE rowid = ?", (row["row_ref"],))
        if "index_state" in tables:
            _bump_generations(conn, {row["project_id"] for row, _ in bad})
    examples = tuple(
        (_text(row["id"]), _text(row["project_id"]), _text(row["object_key"]), reason)
        for row, reason in bad[:MAX_EXAMPLES]
    )
    return QuarantineReport(
        checked=len(rows), quarantined=len(bad), examples=examples, dropped_triggers=triggers
    )


def _bump_generations(conn: sqlite3.Connection, projects: Iterable[object]) -> None:
    """Mark the projects changed, so that no saved index file of theirs is loaded."""
    for project_id in projects:
        conn.execute(
            "UPDATE index_state SET generation = generation + 1 WHERE project_id IS ?",
            (project_id,),
        )


def _plain_filename(name: object) -> bool:
    """What uploads store as a filename: a printable last path part, 1-255 characters."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= _MAX_FILENAME
        and name.isprintable()
        and "/" not in name
        and "\\" not in name
    )


def _text(value: object) -> str:
    return value if isinstance(value, str) else ascii(value)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'

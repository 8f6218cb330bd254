"""Saved hnswlib indexes beside the database: where each lives, writing one durably, and
whether one may be loaded.

Rebuilding a 50k-vector index from SQLite takes minutes on a small CPU, so each project's
index is also saved beside the database, in `<db>.hnsw/<sha256(project)[:40]>.hnsw` (the name
does not depend on the id's text). A save writes a temporary file in that directory
(`staging`), then `install` fsyncs and hashes it, renames it into place and fsyncs the
directory; the catalog then records the file's `SavedIndex` (sha256, size, and the state it
holds) in SQLite's `index_state`. Every change to a project's rows bumps its `generation` in
the same transaction, so at open `problem` accepts a file only when its recorded generation,
row count, live count, largest label, index parameters, size and checksum all still match
SQLite; anything else (a crash after the last save, a damaged or foreign file, a rename that
was never recorded) is a reason to rebuild that project from the rows.

No hnswlib and no SQL here: the catalog writes the index into the staged file and records the
marker.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.durable import fsync_dir
from deployments.vector_store.models import IndexState

__all__ = ["IndexFiles", "SavedIndex"]


@dataclass(frozen=True)
class SavedIndex:
    """What one saved file holds, as recorded in the `saved_*` columns of `index_state`."""

    saved_generation: int
    saved_sha256: str
    saved_bytes: int
    saved_rows: int
    saved_live: int
    saved_max_label: int | None
    saved_params: str

    def marker(self) -> dict[str, Any]:
        """The `index_state` column values."""
        return asdict(self)


class IndexFiles:
    """The directory of saved indexes that belongs to the database `db_path`."""

    def __init__(self, db_path: Path) -> None:
        self.directory = db_path.with_name(db_path.name + ".hnsw")

    def path(self, project_id: str) -> Path:
        """Where the project's saved index lives."""
        digest = hashlib.sha256(project_id.encode("utf-8")).hexdigest()[:40]
        return self.directory / f"{digest}.hnsw"

    def problem(
        self,
        project_id: str,
        marker: IndexState | None,
        rows: int,
        live: int,
        max_label: int | None,
        params: str,
    ) -> str | None:
        """None when the saved file may be loaded for a project now at `rows`, `live`,
        `max_label` and index parameters `params`; else why not."""
        if marker is None or marker.saved_generation is None or marker.saved_sha256 is None:
            return "no saved index"
        if marker.saved_generation != marker.generation:
            return (
                f"stale: saved at generation {marker.saved_generation}, database at "
                f"{marker.generation}"
            )
        if (marker.saved_rows, marker.saved_live, marker.saved_max_label) != (
            rows,
            live,
            max_label,
        ):
            return "stale: the rows differ from the saved index's"
        if marker.saved_params != params:
            return f"saved with other parameters ({marker.saved_params})"
        path = self.path(project_id)
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

    @contextmanager
    def staging(self, project_id: str) -> Iterator[Path]:
        """A fresh temporary file beside the project's index, removed afterwards unless
        `install` moved it into place."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(project_id)
        fd, tmp_name = tempfile.mkstemp(dir=self.directory, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)

    def install(self, tmp: Path, project_id: str) -> tuple[str, int]:
        """Make the staged file durable and the project's index; returns its (sha256, size)."""
        with tmp.open("rb") as file:
            os.fsync(file.fileno())
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        size = tmp.stat().st_size
        os.replace(tmp, self.path(project_id))
        fsync_dir(self.directory)
        return digest, size

"""VectorIndex deployment: the single writer of the image-search catalog, and its backups.

Exactly one replica. On start it restores the newest snapshot from object storage when the
local database is missing, then rebuilds the per-project HNSW indexes from SQLite. While it
runs, a background thread uploads a consistent snapshot every interval.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
from ray import serve

from deployments.configs import VectorIndexConfig
from deployments.vector_store import (
    BackupManager,
    ImagePage,
    ImageRecord,
    NewImage,
    SearchHit,
    VectorCatalog,
)
from serve_app.metrics import index_images
from serve_app.storage import make_object_store

logger = logging.getLogger("ray.serve")


@serve.deployment(
    num_replicas=1,  # the single writer: never scale this out
    max_ongoing_requests=32,  # sync methods run in Serve's thread pool; the catalog locks
    ray_actor_options={"num_cpus": 0.1},
)
class VectorIndex:
    """Per-project nearest-neighbour search over CLIP vectors, backed by SQLite."""

    def __init__(self, config: VectorIndexConfig):
        self._config = config
        self._backups = BackupManager(
            make_object_store(config.storage), config.backup_prefix, config.backup_keep
        )
        config.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.restored_from: str | None = None
        if not config.db_path.exists():
            self.restored_from = self._backups.restore_latest(config.db_path)
            if self.restored_from:
                logger.info("restored %s from %s", config.db_path, self.restored_from)
        self._catalog = VectorCatalog(
            config.db_path,
            dim=config.dim,
            max_elements=config.max_elements,
            hnsw_m=config.hnsw_m,
            ef_construction=config.ef_construction,
            ef_search=config.ef_search,
        )
        self._publish_sizes()
        self._stop = threading.Event()
        self._backup_thread: threading.Thread | None = None
        if config.backup_enabled:
            self._backup_thread = threading.Thread(
                target=self._backup_loop, name="image-search-backups", daemon=True
            )
            self._backup_thread.start()

    # --- reads --------------------------------------------------------------------------------

    def project_exists(self, project_id: str) -> bool:
        """Whether the project has been created (by its first upload)."""
        return self._catalog.project_exists(project_id)

    def find_duplicate(self, project_id: str, sha256: str) -> ImageRecord | None:
        """The live image with these bytes in the project, if any."""
        return self._catalog.find_duplicate(project_id, sha256)

    def get(self, project_id: str, image_id: str) -> ImageRecord | None:
        """One live image, or None."""
        return self._catalog.get(project_id, image_id)

    def list(self, project_id: str, limit: int, cursor: str | None = None) -> ImagePage:
        """A newest-first page of the project's images."""
        return self._catalog.list(project_id, limit, cursor)

    def search(self, project_id: str, vector: np.ndarray, limit: int) -> list[SearchHit]:
        """The `limit` images closest to `vector` (cosine), best first."""
        return self._catalog.search(project_id, vector, limit)

    def stats(self) -> dict[str, int]:
        """Live images per project."""
        return self._catalog.stats()

    # --- writes -------------------------------------------------------------------------------

    def add(self, image: NewImage) -> ImageRecord:
        """Index one image (row and vector together); known bytes return the existing record."""
        record = self._catalog.add(image)
        self._publish_sizes()
        return record

    def add_many(self, images: list[NewImage]) -> list[ImageRecord]:
        """Index a batch in one transaction; records come back in input order."""
        records = self._catalog.add_many(images)
        self._publish_sizes()
        return records

    def begin_delete(self, project_id: str, image_id: str) -> ImageRecord | None:
        """Hide the image from list and search; returns it (None when unknown)."""
        return self._catalog.begin_delete(project_id, image_id)

    def finish_delete(self, project_id: str, image_id: str) -> None:
        """Remove the tombstoned row once its object is gone."""
        self._catalog.finish_delete(project_id, image_id)
        self._publish_sizes()

    def _publish_sizes(self) -> None:
        for project_id, count in self._catalog.stats().items():
            index_images().set(count, tags={"project": project_id})

    # --- backups ------------------------------------------------------------------------------

    def backup_now(self) -> str:
        """Upload a consistent snapshot now; returns its key."""
        return self._backups.backup(self._config.db_path)

    def list_backups(self) -> list[str]:
        """Snapshot keys in storage, newest first."""
        return self._backups.list_snapshots()

    def _backup_loop(self) -> None:
        while not self._stop.wait(self._config.backup_interval_s):
            try:
                self.backup_now()
            except Exception:  # noqa: BLE001 - a failed backup is retried next interval
                logger.exception("database backup failed; retrying in %ss",
                                 self._config.backup_interval_s)

    def __del__(self) -> None:
        self._stop.set()
        catalog = getattr(self, "_catalog", None)
        if catalog is not None:
            catalog.close()

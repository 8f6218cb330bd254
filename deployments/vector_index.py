"""VectorIndex deployment: the single writer of the image-search catalog, and its backups.

Exactly one replica. On start it restores the newest snapshot from object storage when the
local database is missing, then opens the per-project HNSW indexes: each is loaded from the
file saved beside the database when that file matches SQLite, else rebuilt from the rows.
No row is trusted as it is: before the catalog opens, every row of the restored (or existing)
database is checked and the ones whose object key or content type is not their own are
quarantined (`vector_store.trust`), and reported in `startup_report` and the log. The delete
sweeper checks each key again before it deletes an object.
The catalog's schema is brought up to date first (`vector_store.schema`: on the database found
on disk, and on a restored snapshot before its rows are checked). When the configured CLIP
model is not the one that made the stored vectors, a fourth thread re-embeds every image from
its original through the ClipEmbedder (`vector_store.reembed`) while searches go on against
the old vectors (queries embedded by the old model, see `active_space`), then switches.
While it runs, one background thread uploads a consistent snapshot every interval and another
saves changed indexes every `index_save_interval_s` (sooner after `index_save_after_changes`
changes); they are saved once more when the replica shuts down. A third finishes deletes left
half-done: a tombstone older than `delete_grace_s` (its caller crashed, or the object store
failed between `begin_delete` and `finish_delete`) has its object deleted from the store, then
its row and label (`_finish_pending_deletes`, every `delete_sweep_interval_s`).
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from typing import Any

import numpy as np
from ray import serve

from core import defaults
from core.errors import ApiError
from core.image_keys import image_key_problem
from core.metrics import index_images
from core.records import (
    DuplicatePage,
    EmbeddingSpace,
    ImagePage,
    ImageRecord,
    NewImage,
    ProjectPage,
    SearchHit,
    SearchQuery,
)
from core.storage import make_object_store
from deployments.configs import VectorIndexConfig
from deployments.vector_store import BackupManager, VectorCatalog
from deployments.vector_store.reembed import Reembedder
from deployments.vector_store.schema import LegacyModel, upgrade
from deployments.vector_store.trust import RowRules, quarantine_untrusted_rows

logger = logging.getLogger("ray.serve")


@serve.deployment(
    num_replicas=1,  # the single writer: never scale this out
    max_ongoing_requests=32,  # sync methods run in Serve's thread pool; the catalog locks
    ray_actor_options={"num_cpus": 0.1},
)
class VectorIndex:
    """Per-project nearest-neighbour search over CLIP vectors, backed by SQLite."""

    # How often the sweeper looks for unfinished deletes, and how old a tombstone must be
    # before it takes over (a live DELETE request finishes its own well within this).
    delete_sweep_interval_s: float = 300.0
    delete_grace_s: float = 900.0

    # How long one re-embedding request to the ClipEmbedder may take.
    reembed_timeout_s: float = 600.0

    def __init__(self, config: VectorIndexConfig, clip_embedder: Any = None) -> None:
        self._config = config
        self._clip = clip_embedder  # DeploymentHandle: re-embedding after a model change
        # The store of the images themselves (the Gateway's) and of the database snapshots.
        self._store = make_object_store(config.storage)
        legacy = LegacyModel(config.legacy_model, config.legacy_pretrained)
        # Each row's vector is checked against the dimension of the model that made it.
        rules = RowRules(
            search_prefix=config.search_prefix, content_types=config.image_content_types
        )
        self._backups = BackupManager(
            self._store, config.backup_prefix, config.backup_keep, row_rules=rules, legacy=legacy
        )
        config.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.restored_from: str | None = None
        self._startup: dict[str, Any] = {
            "database": "existing",
            "restored_from": None,
            "skipped_snapshots": [],
            "quarantined_rows": None,
        }
        if config.db_path.exists():
            # A database found on disk is upgraded and checked the same way (cheap: no
            # vectors are read); one from a newer release stops the start here.
            upgrade(config.db_path, legacy)
            checked = quarantine_untrusted_rows(config.db_path, rules)
            self._startup["quarantined_rows"] = checked.as_dict()
        else:
            report = self._backups.restore(config.db_path)
            self.restored_from = report.key
            self._startup = {
                "database": "restored" if report.key else "new",
                "restored_from": report.key,
                "skipped_snapshots": [{"key": k, "reason": r} for k, r in report.skipped],
                "quarantined_rows": (
                    report.quarantine.as_dict() if report.quarantine is not None else None
                ),
            }
            for key, reason in report.skipped:
                logger.warning("skipped database snapshot %s: %s", key, reason)
            if self.restored_from:
                logger.info("restored %s from %s", config.db_path, self.restored_from)
            elif report.skipped:
                logger.error("no usable database snapshot: starting with an empty catalog")
        opened = time.perf_counter()
        self._catalog = VectorCatalog(
            config.db_path,
            dim=config.dim,
            max_elements=config.max_elements,
            hnsw_m=config.hnsw_m,
            ef_construction=config.ef_construction,
            ef_search=config.ef_search,
            persist_indexes=config.persist_index,
            save_after_changes=config.index_save_after_changes,
            model=config.model,
            pretrained=config.pretrained,
            legacy=legacy,
        )
        sources = list(self._catalog.open_report.values())
        self._startup["indexes"] = {
            "loaded": sum(source == "loaded" for source in sources),
            "rebuilt": sum(source != "loaded" for source in sources),
            "open_s": round(time.perf_counter() - opened, 3),
        }
        self._publish_sizes()
        self._stop = threading.Event()
        # Ray drops a gauge series that is not set again within about two metric report
        # intervals: republish the index sizes every interval, not only on writes.
        threading.Thread(target=self._metrics_loop, name="index-size-metrics", daemon=True).start()
        threading.Thread(
            target=self._delete_sweep_loop, name="image-search-delete-sweeper", daemon=True
        ).start()
        self._saver_thread: threading.Thread | None = None
        if config.persist_index:
            self._saver_thread = threading.Thread(
                target=self._index_save_loop, name="image-search-index-saver", daemon=True
            )
            self._saver_thread.start()
        self._reembedder: Reembedder | None = None
        self._user_seen_at = -float("inf")  # the last search or upload (they embed with CLIP)
        if self._catalog.reembedding and clip_embedder is not None:
            self._reembedder = Reembedder(
                self._catalog,
                self._store.get,
                self._embed_in_target,
                batch_size=config.reembed_batch_size,
                busy_batch_size=config.reembed_busy_batch_size,
                users_active=self._users_active,
                retry_s=config.reembed_retry_s,
            )
            threading.Thread(
                target=self._reembed, name="image-search-reembedding", daemon=True
            ).start()
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

    # `list` is the handle API's name (deployments.api); inside this class body it shadows the
    # builtin, hence `builtins.list` in the annotations below.
    def list(self, project_id: str, limit: int, cursor: str | None = None) -> ImagePage:
        """A newest-first page of the project's images."""
        return self._catalog.list_images(project_id, limit, cursor)

    def list_projects(
        self, limit: int, after: str | None = None, scope: builtins.list[str] | None = None
    ) -> ProjectPage:
        """Projects by id with their image counts; `scope`: an API key's project patterns."""
        return self._catalog.list_projects(limit, after, scope)

    def search(
        self,
        project_id: str,
        vector: np.ndarray[Any, Any],
        limit: int,
        space_key: str | None = None,
    ) -> builtins.list[SearchHit]:
        """The `limit` images closest to `vector` (cosine), best first. With `space_key` (the
        space `vector` was embedded in), a switched catalog answers EmbeddingSpaceChanged."""
        self._user_seen_at = time.monotonic()
        return self._catalog.search(project_id, vector, limit, space_key)

    def active_space(self) -> EmbeddingSpace:
        """The model whose vectors searches and uploads must bring (CLIP embeddings of it):
        the configured one, or the one the stored vectors are from until re-embedding ends."""
        return self._catalog.active_space

    def search_many(
        self, queries: builtins.list[SearchQuery]
    ) -> builtins.list[builtins.list[SearchHit] | None]:
        """Several searches in one call (the Gateway gathers concurrent ones): each query's
        hits, or None when its project does not exist."""
        self._user_seen_at = time.monotonic()
        return [
            self._catalog.search(query.project_id, query.vector, query.limit, query.space_key)
            if self._catalog.project_exists(query.project_id)
            else None
            for query in queries
        ]

    def similar(
        self, project_id: str, image_id: str, limit: int
    ) -> builtins.list[SearchHit] | None:
        """The `limit` images closest to a stored image, itself excluded; None when unknown."""
        return self._catalog.similar(project_id, image_id, limit)

    def duplicates(
        self, project_id: str, threshold: float, limit: int, cursor: str | None = None
    ) -> DuplicatePage:
        """A page of the project's groups of near-identical images (cosine >= `threshold`),
        largest first; the first page scans the project (seconds at 50k images, on the
        Serve thread pool, searches going on meanwhile), the pages after it reuse that scan."""
        return self._catalog.duplicates(project_id, threshold, limit, cursor)

    def stats(self) -> dict[str, int]:
        """Live images per project."""
        return self._catalog.stats()

    def startup_report(self) -> dict[str, Any]:
        """How this replica found its database: "existing", "restored" (from which snapshot)
        or "new", the damaged or future-dated snapshots it skipped with the reasons, and the
        rows it quarantined (count and examples; None for a new database). Cheap: no I/O."""
        return {
            **self._startup,
            "skipped_snapshots": list(self._startup["skipped_snapshots"]),
            "schema": self._catalog.upgrade_report.as_dict(),
            "embedding": self.embedding_status(),
        }

    def embedding_status(self) -> dict[str, Any]:
        """The active and configured models, and the re-embedding's progress (None when none
        is running or needed). Cheap: no I/O."""
        catalog = self._catalog
        if self._reembedder is not None:
            reembedding: dict[str, Any] | None = self._reembedder.status()
        elif catalog.reembedding:
            reembedding = {"state": "blocked", "last_error": "no CLIP embedder to re-embed with"}
        else:
            reembedding = None
        return {
            "active": catalog.active_space.describe(),
            "configured": catalog.target_space.describe(),
            "reembedding": reembedding,
        }

    def save_indexes(self) -> builtins.list[str]:
        """Save the changed project indexes now; returns the projects saved."""
        return self._catalog.save_indexes()

    # --- writes -------------------------------------------------------------------------------

    def add(self, image: NewImage) -> ImageRecord:
        """Index one image (row and vector together); known bytes return the existing record."""
        self._user_seen_at = time.monotonic()
        record = self._catalog.add(image)
        self._publish_sizes()
        return record

    def add_many(self, images: builtins.list[NewImage]) -> builtins.list[ImageRecord]:
        """Index a batch in one transaction; records come back in input order."""
        self._user_seen_at = time.monotonic()
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

    def _metrics_loop(self) -> None:
        while not self._stop.wait(_metrics_report_interval_s()):
            try:
                self._publish_sizes()
            except Exception:  # metrics must never take the index down
                logger.debug("could not publish the index sizes", exc_info=True)

    # --- re-embedding after a model change -----------------------------------------------------

    def _embed_in_target(self, images: builtins.list[bytes]) -> np.ndarray[Any, Any]:
        """The configured model's vectors of encoded images (through the ClipEmbedder)."""
        call = self._clip.embed_images.remote(images, self._catalog.target_space)
        return np.asarray(call.result(timeout_s=self.reembed_timeout_s), dtype=np.float32)

    def _users_active(self) -> bool:
        """Whether searches or uploads came in lately: re-embedding then takes small batches."""
        return time.monotonic() - self._user_seen_at < defaults.IMAGE_SEARCH_REEMBED_BUSY_WINDOW_S

    def _reembed(self) -> None:
        assert self._reembedder is not None
        if self._reembedder.run(self._stop) and self._clip is not None:
            try:  # the old model is no longer needed for queries
                self._clip.release_other_models.remote()
            except Exception:  # it only frees memory
                logger.debug("could not ask the ClipEmbedder to release models", exc_info=True)

    # --- backups ------------------------------------------------------------------------------

    def backup_now(self) -> str:
        """Upload a consistent snapshot now; returns its key."""
        return self._backups.backup(self._config.db_path)

    def list_backups(self) -> builtins.list[str]:
        """Snapshot keys in storage, newest first."""
        return self._backups.list_snapshots()

    def _backup_loop(self) -> None:
        while not self._stop.wait(self._config.backup_interval_s):
            try:
                self.backup_now()
            except Exception:  # a failed backup is retried next interval
                logger.exception(
                    "database backup failed; retrying in %ss", self._config.backup_interval_s
                )

    def _index_save_loop(self) -> None:
        catalog = self._catalog
        while not self._stop.is_set():
            catalog.save_due.wait(self._config.index_save_interval_s)
            if self._stop.is_set():
                return
            try:
                catalog.save_indexes()
            except Exception:  # the rows are safe in SQLite; retried next time
                logger.exception("saving the search indexes failed")

    # --- unfinished deletes --------------------------------------------------------------

    def _finish_pending_deletes(self) -> int:
        """Finish every delete tombstoned at least `delete_grace_s` ago: delete its object
        from the store (absent is fine), then its row and label. Returns how many finished;
        one that fails is logged and left for the next sweep."""
        finished = 0
        for record in self._catalog.pending_deletes(older_than_s=self.delete_grace_s):
            problem = image_key_problem(
                self._config.search_prefix,
                record.project_id,
                record.id,
                record.object_key,
                record.content_type,
                self._config.image_content_types,
            )
            if problem is not None:
                # Never delete by a key that is not the image's own: drop the row, keep the object.
                logger.error(
                    "not deleting the object of image %s of project %s: %s",
                    record.id,
                    record.project_id,
                    problem,
                )
                self._catalog.finish_delete(record.project_id, record.id)
                continue
            try:
                self._store.delete(record.object_key)
                self._catalog.finish_delete(record.project_id, record.id)
            except ApiError as exc:
                logger.warning(
                    "could not finish deleting image %s of project %s: %s",
                    record.id,
                    record.project_id,
                    exc.message,
                )
                continue
            finished += 1
        if finished:
            logger.info("finished %d interrupted image delete(s)", finished)
        return finished

    def _delete_sweep_loop(self) -> None:
        while not self._stop.wait(self.delete_sweep_interval_s):
            try:
                self._finish_pending_deletes()
            except Exception:  # the tombstones stay; retried next interval
                if self._stop.is_set():
                    return  # shutting down: the catalog closed under the sweep
                logger.exception("sweeping unfinished image deletes failed")

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        catalog = getattr(self, "_catalog", None)
        if catalog is not None:
            catalog.save_due.set()  # wake the saver so that it sees the stop
            catalog.close()  # saves the changed indexes once more


def _metrics_report_interval_s() -> float:
    """Ray's metric report interval (RAY_metrics_report_interval_ms, 10 s by default)."""
    try:
        import ray

        interval_ms = float(ray._config.metrics_report_interval_ms())
    except Exception:  # noqa: BLE001 - a private API: fall back to Ray's default
        interval_ms = 10_000.0
    return max(1.0, interval_ms / 1000)

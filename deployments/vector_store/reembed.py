"""Re-embedding a catalog's images for a model change: `Reembedder`.

When the configured CLIP model is not the one that made the stored vectors, every live image
is embedded again from its original in the object store, batch by batch, and each batch's
vectors are committed to the catalog's pending table (`VectorCatalog.store_reembedded`), so
that a crash or restart resumes where it stopped. Meanwhile the catalog keeps answering from
its old vectors. When no image is left the catalog switches to the new vectors in one step
(`VectorCatalog.switch_to_target`); images uploaded meanwhile (in the old space) are picked up
before that.

An image whose original is gone from the store, or no longer decodes, can never be embedded
again: it is set aside into the quarantine table with the reason (`VectorCatalog.set_aside`)
rather than holding the switch back for ever. A store or model that fails (5xx, timeout) is
waited for and retried. Plain Python: the VectorIndex deployment runs it in a thread with a
ClipEmbedder handle, the `serve_app.reembed` CLI with the model in process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.errors import ModelInputError, ObjectNotFound, find_api_error
from core.records import EmbeddingSpace
from deployments.vector_store import spaces
from deployments.vector_store.hnsw_index import unit_vector
from deployments.vector_store.queries import open_engine
from deployments.vector_store.schema import LegacyModel, upgrade
from deployments.vector_store.spaces import ImageToEmbed

__all__ = ["CatalogFile", "Reembedder", "ReembedProgress", "ReembedTarget"]

log = logging.getLogger(__name__)

ReadOriginal = Callable[[str], bytes]  # object key -> the image's bytes
EmbedImages = Callable[[list[bytes]], Any]  # encoded images -> (n, dim) vectors


class ReembedTarget(Protocol):
    """What the re-embedder needs of a catalog (`VectorCatalog` is one)."""

    @property
    def active_space(self) -> EmbeddingSpace: ...

    @property
    def target_space(self) -> EmbeddingSpace: ...

    def reembed_todo(self, limit: int) -> list[ImageToEmbed]: ...

    def reembed_counts(self) -> tuple[int, int]: ...

    def store_reembedded(self, vectors: Sequence[tuple[str, Any]]) -> int: ...

    def set_aside(self, project_id: str, image_id: str, reason: str) -> bool: ...

    def switch_to_target(self) -> bool: ...


@dataclass
class ReembedProgress:
    """Where a re-embedding stands; `as_dict` is what /readyz and the logs show."""

    source: str
    target: str
    state: str = "running"  # running | waiting (store or model failing) | done | stopped
    done: int = 0
    total: int = 0
    embedded: int = 0  # by this run
    set_aside: int = 0
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        elapsed = (self.finished_at or time.monotonic()) - self.started_at
        rate = self.embedded / elapsed if elapsed > 0 else 0.0
        left = max(0, self.total - self.done)
        return {
            "from": self.source,
            "to": self.target,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "set_aside": self.set_aside,
            "images_per_s": round(rate, 2),
            "eta_s": round(left / rate, 1) if rate > 0 and self.state != "done" else None,
            "last_error": self.last_error,
        }


class Reembedder:
    """Embeds a catalog's live images again into its target space, then switches to them."""

    def __init__(
        self,
        catalog: ReembedTarget,
        read_original: ReadOriginal,
        embed: EmbedImages,
        *,
        batch_size: int = 32,
        busy_batch_size: int | None = None,
        users_active: Callable[[], bool] | None = None,
        retry_s: float = 30.0,
        switch: bool = True,
        log_every_s: float = 30.0,
    ) -> None:
        self.catalog = catalog
        self.read_original = read_original
        self.embed = embed
        self.batch_size = max(1, batch_size)
        # While users search or upload (`users_active()`), smaller batches: their CLIP calls
        # share the model's queue with these and wait at most one batch.
        self.busy_batch_size = max(1, min(busy_batch_size or self.batch_size, self.batch_size))
        self.users_active = users_active or (lambda: False)
        self.retry_s = retry_s
        self.switch = switch  # False: only fill the pending vectors (the CLI, ahead of time)
        self.log_every_s = log_every_s
        self.progress = ReembedProgress(
            source=catalog.active_space.describe(), target=catalog.target_space.describe()
        )
        self._retry_at: dict[str, float] = {}  # image id -> when to try its original again
        self._given_up: set[str] = set()  # images that cannot be embedded (switch=False only)
        self._logged_at = 0.0
        self._lock = threading.Lock()
        self._count()  # the progress is right from the start (a resumed run is not at 0)

    def status(self) -> dict[str, Any]:
        """The progress as a dict (cheap: no I/O)."""
        with self._lock:
            return self.progress.as_dict()

    def run(self, stop: threading.Event | None = None) -> bool:
        """Work until the catalog has switched (or, with `switch=False`, until every image
        that can be embedded is); False when `stop` was set first."""
        stop = stop or threading.Event()
        self._count()
        while not stop.is_set():
            try:
                batch = self._next_batch()
                if batch:
                    if self._embed_batch(batch):
                        self._set_state("running")
                elif self._retry_at:
                    self._set_state("waiting")
                    stop.wait(min(self.retry_s, 1.0))
                    continue
                elif not self.switch or self.catalog.switch_to_target():
                    self._finish()
                    return True
            except Exception as exc:  # noqa: BLE001 - the model or store failing: wait, retry
                self._failed(exc)
                stop.wait(self.retry_s)
            self._log_progress()
        self._set_state("stopped")
        return False

    # --- steps ----------------------------------------------------------------------------

    def _next_batch(self) -> list[ImageToEmbed]:
        now = time.monotonic()
        self._retry_at = {i: t for i, t in self._retry_at.items() if t > now}
        skip = self._retry_at.keys() | self._given_up
        size = self.busy_batch_size if self.users_active() else self.batch_size
        found = self.catalog.reembed_todo(size + len(skip))
        return [image for image in found if image.id not in skip][:size]

    def _embed_batch(self, batch: list[ImageToEmbed]) -> int:
        """Embed a batch and store its vectors; returns how many were stored."""
        originals: list[tuple[ImageToEmbed, bytes]] = []
        for image in batch:
            data = self._read(image)
            if data is not None:
                originals.append((image, data))
        if not originals:
            return 0
        vectors: list[Any]
        try:
            vectors = list(np.asarray(self.embed([data for _, data in originals]), np.float32))
        except Exception as exc:
            if not _refused(exc):
                raise
            vectors = self._embed_one_by_one(originals)  # find the image at fault
        kept = [
            (image.id, v) for (image, _), v in zip(originals, vectors, strict=True) if v is not None
        ]
        if not kept:
            return 0
        stored = self.catalog.store_reembedded(kept)
        with self._lock:
            self.progress.embedded += stored
            self.progress.done += stored
            self.progress.last_error = None
        return stored

    def _embed_one_by_one(self, originals: list[tuple[ImageToEmbed, bytes]]) -> list[Any]:
        vectors: list[Any] = []
        for image, data in originals:
            try:
                vectors.append(np.asarray(self.embed([data]), dtype=np.float32)[0])
            except Exception as exc:
                if not _refused(exc):
                    raise
                self._set_aside(image, f"the original cannot be embedded: {exc}")
                vectors.append(None)
        return vectors

    def _read(self, image: ImageToEmbed) -> bytes | None:
        try:
            return self.read_original(image.object_key)
        except ObjectNotFound:
            self._set_aside(image, "the original is missing from the object store")
        except Exception as exc:  # noqa: BLE001 - the store failing: this image waits
            self._retry_at[image.id] = time.monotonic() + self.retry_s
            self._failed(exc)
        return None

    def _set_aside(self, image: ImageToEmbed, reason: str) -> None:
        if self.switch:  # the CLI leaves decisions about rows to the server
            if self.catalog.set_aside(image.project_id, image.id, reason[:300]):
                with self._lock:
                    self.progress.set_aside += 1
                    self.progress.total -= 1
            return
        self._given_up.add(image.id)
        log.error("image %s of project %s: %s", image.id, image.project_id, reason)

    # --- bookkeeping ----------------------------------------------------------------------

    def _count(self) -> None:
        done, total = self.catalog.reembed_counts()
        with self._lock:
            self.progress.done, self.progress.total = done, total

    def _set_state(self, state: str) -> None:
        with self._lock:
            self.progress.state = state

    def _failed(self, exc: BaseException) -> None:
        api_error = find_api_error(exc)
        message = api_error.message if api_error is not None else f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.progress.state = "waiting"
            self.progress.last_error = message[:300]
        log.warning("re-embedding: %s; retrying", message[:300])

    def _finish(self) -> None:
        self._count()
        with self._lock:
            self.progress.state = "done"
            self.progress.finished_at = time.monotonic()
        log.info("re-embedding done: %s", self.status())

    def _log_progress(self) -> None:
        now = time.monotonic()
        if now - self._logged_at >= self.log_every_s:
            self._logged_at = now
            self._count()
            log.info("re-embedding: %s", self.status())


def _refused(exc: BaseException) -> bool:
    """Whether the model refused this input (4xx through a handle, `ModelInputError` in
    process), as opposed to failing (5xx, timeout)."""
    if isinstance(exc, ModelInputError):
        return True
    api_error = find_api_error(exc)
    return api_error is not None and 400 <= api_error.status_code < 500


class CatalogFile:
    """The re-embedding side of a catalog database opened without its search indexes, for
    filling the new vectors ahead of time (`serve_app.reembed`). It only ever writes pending
    vectors (SQLite's WAL lets it run beside a server using the same file); it never sets
    images aside nor switches: the server does that when it starts with the new model."""

    def __init__(self, db_path: Path, target: EmbeddingSpace, legacy: LegacyModel) -> None:
        upgrade(db_path, legacy)
        self._engine = open_engine(db_path)
        with self._engine.connect() as conn:
            self.active_space = spaces.active_space(conn) or target
        self.target_space = target

    def reembed_todo(self, limit: int) -> list[ImageToEmbed]:
        with self._engine.connect() as conn:
            return spaces.todo(conn, self.target_space, limit)

    def reembed_counts(self) -> tuple[int, int]:
        with self._engine.connect() as conn:
            live = spaces.count_live(conn)
            return live - spaces.count_todo(conn, self.target_space), live

    def store_reembedded(self, vectors: Sequence[tuple[str, Any]]) -> int:
        dim = self.target_space.dim
        blobs = [(image_id, unit_vector(v, dim).tobytes()) for image_id, v in vectors]
        with self._engine.begin() as conn:
            return spaces.store_pending(conn, self.target_space, blobs)

    def set_aside(self, project_id: str, image_id: str, reason: str) -> bool:
        return False

    def switch_to_target(self) -> bool:
        return False

    def close(self) -> None:
        self._engine.dispose()

"""Re-embedding after a model change: `Reembedder` over a real `VectorCatalog` on disk.

The "models" are two deterministic functions of an image's bytes into spaces of different
dimensions, so every assertion can say exactly which space a result came from.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.errors import (
    EmbeddingSpaceChanged,
    InvalidInput,
    ObjectNotFound,
    ServiceUnavailable,
    UnreadableImage,
)
from core.records import NewImage
from deployments.vector_store.catalog import VectorCatalog
from deployments.vector_store.reembed import Reembedder

OLD_DIM, NEW_DIM = 8, 4


def embed(data: bytes, dim: int) -> np.ndarray:
    """A model: the image's bytes -> a unit vector of `dim` floats."""
    seed = int.from_bytes(hashlib.sha256(data + bytes([dim])).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def original(image_id: str) -> bytes:
    return f"pixels of {image_id}".encode()


def new_image(image_id: str, project: str) -> NewImage:
    return NewImage(
        id=image_id,
        project_id=project,
        object_key=f"AI/SEARCH/{project}/{image_id}.png",
        filename=f"{image_id}.png",
        content_type="image/png",
        size_bytes=10,
        width=8,
        height=8,
        sha256=hashlib.sha256(image_id.encode()).hexdigest(),
        vector=embed(original(image_id), OLD_DIM),
    )


class Originals(dict[str, bytes]):
    """The object store: key -> bytes; `failing` makes reads raise 503."""

    failing = False
    reads = 0

    def read(self, key: str) -> bytes:
        self.reads += 1
        if self.failing:
            raise ServiceUnavailable("object store down")
        if key not in self:
            raise ObjectNotFound(f"no object {key}")
        return self[key]


def open_catalog(db: Path, dim: int, model: str) -> VectorCatalog:
    return VectorCatalog(db, dim=dim, max_elements=1000, model=model, persist_indexes=True)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "catalog.db"


@pytest.fixture
def originals(db: Path) -> Originals:
    """A catalog made by the old model: projects a (12 images) and b (5 images)."""
    store = Originals()
    with open_catalog(db, OLD_DIM, "old-model") as catalog:
        for project, count in (("a", 12), ("b", 5)):
            images = [new_image(f"{project}-{i}", project) for i in range(count)]
            catalog.add_many(images)
            for image in images:
                store[image.object_key] = original(image.id)
    return store


def new_model(calls: list[int] | None = None) -> Callable[[list[bytes]], np.ndarray]:
    def run(images: list[bytes]) -> np.ndarray:
        if calls is not None:
            calls.append(len(images))
        return np.stack([embed(data, NEW_DIM) for data in images])

    return run


def top(catalog: VectorCatalog, project: str, image_id: str, dim: int) -> str:
    """The best hit for the vector `image_id`'s original has in the `dim` space."""
    return catalog.search(project, embed(original(image_id), dim), 1)[0].record.id


def test_interrupted_re_embedding_resumes_and_switches_without_mixing(
    db: Path, originals: Originals
) -> None:
    stop = threading.Event()
    calls: list[int] = []

    def embed_then_crash(images: list[bytes]) -> np.ndarray:
        if len(calls) == 2:
            stop.set()  # the process dies after its third batch is stored
        return new_model(calls)(images)

    catalog = open_catalog(db, NEW_DIM, "new-model")
    assert catalog.reembedding and catalog.active_space.dim == OLD_DIM
    worker = Reembedder(catalog, originals.read, embed_then_crash, batch_size=5, retry_s=0.01)
    assert worker.run(stop) is False
    assert catalog.reembed_counts() == (15, 17)
    # still answering, and only from the old space: an old-space query finds its image
    assert top(catalog, "a", "a-7", OLD_DIM) == "a-7"
    with pytest.raises(InvalidInput):
        catalog.search("a", embed(original("a-7"), NEW_DIM), 1)
    catalog.close(save=False)  # a crash: nothing saved on the way out

    catalog = open_catalog(db, NEW_DIM, "new-model")
    assert catalog.reembed_counts() == (15, 17)  # the finished batches survived
    calls.clear()
    worker = Reembedder(catalog, originals.read, new_model(calls), batch_size=5, retry_s=0.01)
    assert worker.status()["done"] == 15  # a resumed run starts from what was committed
    assert worker.run() is True
    assert sum(calls) == 2  # only what was left
    assert not catalog.reembedding and catalog.active_space.dim == NEW_DIM
    assert worker.status()["state"] == "done" and worker.status()["done"] == 17
    for image_id in ("a-0", "a-11", "b-3"):
        assert top(catalog, image_id[0], image_id, NEW_DIM) == image_id
    with pytest.raises(EmbeddingSpaceChanged):
        catalog.search("a", embed(original("a-0"), OLD_DIM), 1, space_key="old-model||8")
    catalog.close()

    with open_catalog(db, NEW_DIM, "new-model") as reopened:  # the switch is durable
        assert not reopened.reembedding
        assert top(reopened, "b", "b-4", NEW_DIM) == "b-4"
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM pending_vector").fetchone() == (0,)
            keys = {r[0] for r in conn.execute("SELECT space_key FROM image")}
        assert keys == {reopened.active_space.key}


def test_uploads_and_deletes_during_re_embedding_are_in_the_switched_index(
    db: Path, originals: Originals
) -> None:
    catalog = open_catalog(db, NEW_DIM, "new-model")
    calls: list[int] = []
    model = new_model(calls)

    def embed_while_users_work(images: list[bytes]) -> np.ndarray:
        if len(calls) == 1:  # between batches: one upload (old space) and one delete
            late = new_image("a-late", "a")
            catalog.add(late.model_copy(update={"space_key": catalog.active_space.key}))
            originals[late.object_key] = original("a-late")
            catalog.begin_delete("a", "a-3")
            catalog.finish_delete("a", "a-3")
        return model(images)

    assert Reembedder(catalog, originals.read, embed_while_users_work, batch_size=4).run()
    assert top(catalog, "a", "a-late", NEW_DIM) == "a-late"
    hits = catalog.search("a", embed(original("a-3"), NEW_DIM), 20)
    assert "a-3" not in {hit.record.id for hit in hits}
    assert len(hits) == 12  # 12 - 1 deleted + 1 uploaded
    assert catalog.stats() == {"a": 12, "b": 5}
    catalog.close()


def test_changes_while_the_new_index_is_built_are_caught_up(
    db: Path, originals: Originals, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The switch builds the new indexes outside the lock: an upload and a delete that land
    during the build must be in (and out of) the index it swaps in."""
    catalog = open_catalog(db, NEW_DIM, "new-model")
    assert Reembedder(catalog, originals.read, new_model(), switch=False).run()
    late = new_image("b-late", "b")
    build = catalog._build_in

    def build_then_users_act(*args: object) -> object:
        built = build(*args)  # type: ignore[arg-type]
        if args[1] == "b":
            catalog.add(late)
            catalog.store_reembedded([("b-late", embed(original("b-late"), NEW_DIM))])
            catalog.begin_delete("b", "b-0")
        return built

    monkeypatch.setattr(catalog, "_build_in", build_then_users_act)
    assert catalog.switch_to_target()
    assert top(catalog, "b", "b-late", NEW_DIM) == "b-late"
    ids = {hit.record.id for hit in catalog.search("b", embed(b"x", NEW_DIM), 20)}
    assert ids == {"b-1", "b-2", "b-3", "b-4", "b-late"}
    catalog.close()


def test_a_missing_or_unreadable_original_is_set_aside_not_blocking(
    db: Path, originals: Originals
) -> None:
    del originals["AI/SEARCH/a/a-2.png"]
    originals["AI/SEARCH/b/b-1.png"] = b"not an image"

    def model(images: list[bytes]) -> np.ndarray:
        if b"not an image" in images:
            raise UnreadableImage(f"image {images.index(b'not an image')} could not be decoded")
        return new_model()(images)

    catalog = open_catalog(db, NEW_DIM, "new-model")
    worker = Reembedder(catalog, originals.read, model, batch_size=8, retry_s=0.01)
    assert worker.run()
    assert worker.status()["set_aside"] == 2
    assert catalog.stats() == {"a": 11, "b": 4}
    catalog.close()
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT id, reason FROM quarantined_image").fetchall())
    assert rows == {
        "a-2": "the original is missing from the object store",
        "b-1": "the original cannot be embedded: image 0 could not be decoded",
    }


def test_a_failing_store_is_waited_for(db: Path, originals: Originals) -> None:
    catalog = open_catalog(db, NEW_DIM, "new-model")
    originals.failing = True
    stop = threading.Event()
    worker = Reembedder(catalog, originals.read, new_model(), batch_size=8, retry_s=0.01)
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        while originals.reads < 40:  # it keeps trying
            threading.Event().wait(0.01)
        status = worker.status()
        assert status["state"] == "waiting"
        assert status["last_error"] == "object store down"
        assert catalog.reembedding and catalog.stats() == {"a": 12, "b": 5}  # nothing set aside
        originals.failing = False
        thread.join(timeout=60)
        assert not thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not catalog.reembedding
    assert catalog.stats() == {"a": 12, "b": 5}
    catalog.close()


def test_ahead_of_time_then_the_server_only_switches(db: Path, originals: Originals) -> None:
    """The CLI fills the new vectors while the old model still serves; the server started
    with the new model has nothing left to embed."""
    with open_catalog(db, NEW_DIM, "new-model") as ahead:
        cli = Reembedder(ahead, originals.read, new_model(), switch=False)
        assert cli.run()
        assert ahead.reembedding  # the CLI never switches
    with open_catalog(db, OLD_DIM, "old-model") as still_old:  # the old server restarts
        assert not still_old.reembedding
        assert top(still_old, "a", "a-1", OLD_DIM) == "a-1"
    calls: list[int] = []
    with open_catalog(db, NEW_DIM, "new-model") as server:
        assert server.reembed_counts() == (17, 17)
        assert Reembedder(server, originals.read, new_model(calls)).run()
        assert calls == []
        assert top(server, "a", "a-1", NEW_DIM) == "a-1"


def test_an_empty_catalog_takes_the_new_model_at_once(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    open_catalog(db, OLD_DIM, "old-model").close()
    with open_catalog(db, NEW_DIM, "new-model") as catalog:
        assert not catalog.reembedding
        assert catalog.active_space.dim == NEW_DIM


def test_batches_shrink_while_users_search_or_upload(db: Path, originals: Originals) -> None:
    """Users' CLIP calls wait behind one re-embedding batch: while they are active the
    batches are small, and full again once they are gone."""
    active = [False]
    sizes: list[int] = []

    def model(images: list[bytes]) -> np.ndarray:
        sizes.append(len(images))
        active[0] = len(sizes) in (1, 2)  # a user shows up after the first batch, for two
        return new_model()(images)

    catalog = open_catalog(db, NEW_DIM, "new-model")
    worker = Reembedder(
        catalog,
        originals.read,
        model,
        batch_size=5,
        busy_batch_size=2,
        users_active=lambda: active[0],
        retry_s=0.01,
    )
    assert worker.run() is True
    assert sizes == [5, 2, 2, 5, 3]  # 17 images
    assert not catalog.reembedding
    catalog.close()

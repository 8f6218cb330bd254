"""VectorIndex finishes deletes left half-done (a tombstone whose caller never came back):
object first, then the row and label. The replica class is built directly, without Ray."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import StorageUnavailable
from core.storage import StorageConfig
from deployments.configs import VectorIndexConfig
from deployments.vector_index import VectorIndex
from tests.unit.test_vector_catalog import DIM, new_image, unit_vectors

Replica: Any = VectorIndex.func_or_class  # the plain class behind the Serve deployment


@pytest.fixture
def make_replica(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    replicas: list[Any] = []

    def make(grace_s: float, interval_s: float = 3600.0) -> Any:
        monkeypatch.setattr(Replica, "delete_grace_s", grace_s)
        monkeypatch.setattr(Replica, "delete_sweep_interval_s", interval_s)
        config = VectorIndexConfig(
            db_path=tmp_path / "db" / "image_search.db",
            dim=DIM,
            max_elements=100,
            storage=StorageConfig(kind="local", local_dir=tmp_path / "objects"),
            backup_enabled=False,
            persist_index=False,
        )
        replica = Replica(config)
        replicas.append(replica)
        vectors = unit_vectors(4, seed=21)
        for i, vector in enumerate(vectors):
            record = replica.add(new_image(i, vector))
            replica._store.put(record.object_key, b"image bytes", "image/png")
        return replica

    yield make
    for replica in replicas:
        replica.__del__()  # stops the threads, closes the catalog


def key(i: int) -> str:
    return f"AI/SEARCH/p1/img-{i}.png"


def test_a_delete_left_half_done_is_finished(make_replica: Any) -> None:
    replica = make_replica(grace_s=0.0)
    assert replica.begin_delete("p1", "img-1") is not None  # then the caller died
    assert replica.begin_delete("p1", "img-2") is not None  # died after deleting the object
    replica._store.delete(key(2))

    assert replica._finish_pending_deletes() == 2

    assert replica._store.head(key(1)) is None and replica._store.head(key(2)) is None
    assert replica._catalog.pending_deletes() == []
    assert replica.begin_delete("p1", "img-1") is None  # the rows are gone
    assert replica.stats() == {"p1": 2}
    assert replica._store.head(key(0)) is not None  # live images keep their objects
    hits = replica.search("p1", unit_vectors(4, seed=21)[1], 4)
    assert {h.record.id for h in hits} == {"img-0", "img-3"}
    assert replica._finish_pending_deletes() == 0


def test_a_young_tombstone_is_left_to_its_caller(make_replica: Any) -> None:
    replica = make_replica(grace_s=3600.0)
    replica.begin_delete("p1", "img-1")
    assert replica._finish_pending_deletes() == 0
    assert replica._store.head(key(1)) is not None
    assert [r.id for r in replica._catalog.pending_deletes()] == ["img-1"]


def test_a_store_failure_leaves_the_tombstone_for_the_next_sweep(
    make_replica: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = make_replica(grace_s=0.0)
    replica.begin_delete("p1", "img-1")

    def unavailable(key: str) -> bool:
        raise StorageUnavailable("injected outage")

    with monkeypatch.context() as patch:
        patch.setattr(replica._store, "delete", unavailable)
        assert replica._finish_pending_deletes() == 0
        assert [r.id for r in replica._catalog.pending_deletes()] == ["img-1"]  # row kept
    assert replica._finish_pending_deletes() == 1
    assert replica._store.head(key(1)) is None


def test_the_sweeper_runs_on_its_own(make_replica: Any) -> None:
    replica = make_replica(grace_s=0.0, interval_s=0.05)
    replica.begin_delete("p1", "img-3")
    deadline = time.monotonic() + 10
    while replica._catalog.pending_deletes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert replica._catalog.pending_deletes() == []
    assert replica._store.head(key(3)) is None
    assert np.isclose(replica.search("p1", unit_vectors(4, seed=21)[0], 1)[0].score, 1.0)

"""VectorIndex.search_many: the Gateway's gathered searches answer exactly what one search
each would, and None for a project that does not exist (the Gateway's 404)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.records import SearchQuery
from core.storage import StorageConfig
from deployments.configs import VectorIndexConfig
from deployments.vector_index import VectorIndex
from tests.unit.test_vector_catalog import DIM, new_image, unit_vectors

Replica: Any = VectorIndex.func_or_class  # the plain class behind the Serve deployment


def test_gathered_searches_equal_single_searches(tmp_path: Path) -> None:
    config = VectorIndexConfig(
        db_path=tmp_path / "image_search.db",
        dim=DIM,
        max_elements=100,
        storage=StorageConfig(kind="local", local_dir=tmp_path / "objects"),
        backup_enabled=False,
        persist_index=False,
    )
    replica = Replica(config)
    try:
        for i, vector in enumerate(unit_vectors(12, seed=5)):
            replica.add(new_image(i, vector, project="p1" if i % 2 else "p2"))
        queries = unit_vectors(3, seed=9)
        batch = [
            SearchQuery("p1", queries[0], 3),
            SearchQuery("nowhere", queries[1], 3),
            SearchQuery("p2", queries[1], 5),
            SearchQuery("p1", queries[2], 1),
        ]
        answers = replica.search_many(batch)
        assert answers[1] is None
        for query, answer in zip(batch, answers, strict=True):
            if query.project_id == "nowhere":
                continue
            single = replica.search(query.project_id, query.vector, query.limit)
            assert answer == single
            assert len(single) == query.limit
    finally:
        replica.__del__()

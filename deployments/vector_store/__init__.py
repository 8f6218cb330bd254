"""Image-search storage: SQLite (source of truth, vectors included) + per-project hnswlib.

Plain Python, no Ray: the `VectorIndex` deployment wraps `VectorCatalog` and `BackupManager`.

- `catalog`: `VectorCatalog`, the API (reads, writes, two-phase deletes, saving indexes).
- `hnsw_index`: one project's hnswlib index and the vectors it accepts.
- `queries`: the SQLite engine, prebuilt statements, rows into records, the listing cursor.
- `index_files`: saved index files beside the database (paths, durable writes, checksums).
- `duplicates`: near-duplicate groups (pure numpy), the scans kept for paging, their cursor.
- `models`: the SQLite tables. `backup`: snapshots to object storage and restoring them.
"""

from deployments.vector_store.backup import BackupManager, snapshot_to_file
from deployments.vector_store.catalog import VectorCatalog

__all__ = [
    "BackupManager",
    "VectorCatalog",
    "snapshot_to_file",
]

"""Image-search storage: SQLite (source of truth, vectors included) + per-project hnswlib.

Plain Python, no Ray: the `VectorIndex` deployment wraps `VectorCatalog` and `BackupManager`.
"""

from deployments.vector_store.backup import BackupManager, snapshot_to_file
from deployments.vector_store.catalog import VectorCatalog


__all__ = [
    "BackupManager",
    "VectorCatalog",
    "snapshot_to_file",
]

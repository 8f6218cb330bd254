"""The image-search records handed to callers: frozen pydantic models, picklable across Ray.

`VectorCatalog` copies its ORM rows into these; nothing here imports SQLModel or hnswlib, so
the Gateway and other Ray apps can use them without the catalog's dependencies.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class EmbeddingSpace(BaseModel):
    """The model that made a set of vectors: vectors are comparable only within one space.

    `model` and `pretrained` are the CLIP_MODEL / CLIP_PRETRAINED references as configured (a
    name, `local-dir:` path or `hf-hub:` id; pretrained empty when the reference carries its
    weights), `dim` the vectors' length. `key` names the space in the catalog and in calls.
    """

    model_config = ConfigDict(frozen=True)

    model: str = Field(min_length=1, max_length=1000)
    pretrained: str = Field(default="", max_length=1000)
    dim: int = Field(ge=1)

    @property
    def key(self) -> str:
        """`model|pretrained|dim`: what the catalog stores beside every vector."""
        return f"{self.model}|{self.pretrained}|{self.dim}"

    def describe(self) -> str:
        """For messages and logs: `model` (+ `/pretrained`), `dim`-d."""
        name = f"{self.model}/{self.pretrained}" if self.pretrained else self.model
        return f"{name} ({self.dim}-d)"


class ImageRecord(BaseModel):
    """An image as callers see it: every column except the vector, plus `duplicate`.

    `duplicate` is True when `add`/`add_many` found the same bytes (sha256) already stored in
    the project and returned that existing record instead of adding a new one.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    project_id: str
    object_key: str
    filename: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    sha256: str
    created_at: datetime
    label: int
    deleting: bool = False
    duplicate: bool = False
    space_key: str = ""  # the embedding space (model) its vector is in: `EmbeddingSpace.key`


class SearchHit(BaseModel):
    """One search result: the image and its cosine similarity to the query (higher is closer)."""

    model_config = ConfigDict(frozen=True)

    record: ImageRecord
    score: float


class ProjectSummary(BaseModel):
    """A project as a listing shows it: its live image count and when it was made."""

    model_config = ConfigDict(frozen=True)

    project_id: str
    images: int = Field(ge=0, description="Live images (not being deleted)")
    created_at: datetime
    last_added_at: datetime | None = Field(
        default=None, description="When its newest live image was added; None when it has none"
    )


class ProjectPage(BaseModel):
    """One page of projects by id; pass `next_cursor` back for the next page."""

    model_config = ConfigDict(frozen=True)

    items: list[ProjectSummary]
    next_cursor: str | None = None


class ImagePage(BaseModel):
    """One page of a newest-first listing; pass `next_cursor` back for the next page."""

    model_config = ConfigDict(frozen=True)

    items: list[ImageRecord]
    total: int
    next_cursor: str | None = None


# What `VectorIndex.duplicates` accepts and lists (the HTTP route uses the same bounds).
# Below the minimum, CLIP joins photos of the same subject, not copies, and groups grow into
# most of a project.
DUPLICATES_DEFAULT_THRESHOLD = 0.95
DUPLICATES_MIN_THRESHOLD = 0.8
DUPLICATES_MAX_GROUP_IMAGES = 100  # images listed per group in a page (`size` counts all)


class DuplicateGroup(BaseModel):
    """Near-identical images: the oldest first, then by `score` (cosine to that first image,
    1.0 for itself), at most `DUPLICATES_MAX_GROUP_IMAGES` of them; `size` counts them all."""

    model_config = ConfigDict(frozen=True)

    size: int
    members: list[SearchHit]


class DuplicatePage(BaseModel):
    """One page of a project's duplicate groups (largest first, then oldest first image).

    `total` counts the groups of the scan the page comes from, which saw `scanned` live
    images at the project's `generation`; pass `next_cursor` back for the next page.
    """

    model_config = ConfigDict(frozen=True)

    groups: list[DuplicateGroup]
    total: int
    threshold: float
    neighbours: int
    scanned: int
    generation: int
    next_cursor: str | None = None


class NewImage(BaseModel):
    """What `VectorCatalog.add` takes: the image's metadata and its CLIP vector, shape (D,)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    id: str = Field(min_length=1, max_length=200)
    project_id: str = Field(min_length=1, max_length=200)
    object_key: str = Field(min_length=1, max_length=1024)
    filename: str
    content_type: str
    size_bytes: int = Field(ge=0)
    width: int = Field(ge=0)
    height: int = Field(ge=0)
    sha256: str = Field(min_length=1, max_length=64)
    vector: np.ndarray
    # The space `vector` was embedded in (`EmbeddingSpace.key`); None: whatever the catalog's
    # active space is. A key that is no longer active is refused (EmbeddingSpaceChanged).
    space_key: str | None = None


class SearchQuery(NamedTuple):
    """One nearest-neighbour query of a batch (`VectorIndex.search_many`)."""

    project_id: str
    vector: np.ndarray
    limit: int
    space_key: str | None = None  # as NewImage.space_key

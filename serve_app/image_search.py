"""The image-search flows: upload (validate -> embed -> store -> index), search, delete.

Every upload either lands whole (object + row + vector) or leaves nothing behind: the object
is stored only after the image decoded and embedded, and deleted again when indexing fails.
A delete tombstones the row first (hidden from list and search at once), then deletes the
object, then the row; if the object store fails in between, the row stays tombstoned and a
retried DELETE finishes the job.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence

import numpy as np

from core.errors import ApiError, NotFound
from core.image_keys import image_key_problem, image_object_key
from core.records import (
    DuplicatePage,
    EmbeddingSpace,
    ImageRecord,
    NewImage,
    SearchHit,
    SearchQuery,
)
from serve_app.deployment_calls import await_deployment
from serve_app.modules import IMAGE_CATALOG, IMAGE_SEARCH
from serve_app.schemas import (
    DuplicateGroupOut,
    DuplicateImage,
    DuplicatesResponse,
    ImageOut,
    SearchResult,
)
from serve_app.services import Services
from serve_app.uploads import CheckedImage

logger = logging.getLogger("ray.serve")


def file_url(project_id: str, image_id: str) -> str:
    """This server's route for an image's original file."""
    return f"/v1/projects/{project_id}/images/{image_id}/file"


def image_out(record: ImageRecord) -> ImageOut:
    return ImageOut(
        id=record.id,
        project_id=record.project_id,
        filename=record.filename,
        content_type=record.content_type,
        size_bytes=record.size_bytes,
        width=record.width,
        height=record.height,
        sha256=record.sha256,
        created_at=record.created_at.isoformat(),
        file_url=file_url(record.project_id, record.id),
        duplicate=record.duplicate,
    )


def search_result(hit: SearchHit) -> SearchResult:
    record = hit.record
    return SearchResult(
        id=record.id,
        score=hit.score,
        filename=record.filename,
        content_type=record.content_type,
        width=record.width,
        height=record.height,
        file_url=file_url(record.project_id, record.id),
    )


async def upload_images(
    services: Services, project_id: str, images: Sequence[CheckedImage]
) -> list[ImageRecord]:
    """Index new images (one embedding batch); known bytes answer their existing record."""
    await services.board.require_ready(IMAGE_SEARCH)
    index = services.vector_index
    timeout_s = services.config.request_timeout_s

    known: dict[int, ImageRecord] = {}
    fresh: list[int] = []
    seen: dict[str, int] = {}
    for position, image in enumerate(images):
        existing = await await_deployment(
            index.find_duplicate.remote(project_id, image.sha256),
            what="the image index",
            timeout_s=timeout_s,
        )
        if existing is not None:
            known[position] = existing.model_copy(update={"duplicate": True})
        elif image.sha256 in seen:
            continue  # the same bytes twice in one batch: resolved after indexing
        else:
            seen[image.sha256] = position
            fresh.append(position)

    records: dict[int, ImageRecord] = dict(known)
    if fresh:
        fresh_images = [images[i] for i in fresh]

        async def add(space: EmbeddingSpace) -> list[ImageRecord]:
            return await _add_fresh(services, project_id, fresh_images, space)

        added = await services.in_search_space(add)
        records.update(dict(zip(fresh, added, strict=True)))
    for position, image in enumerate(images):
        if position not in records:  # repeated within the batch
            first = records[seen[image.sha256]]
            records[position] = first.model_copy(update={"duplicate": True})
    return [records[position] for position in range(len(images))]


async def search_by_vector(
    services: Services,
    project_id: str,
    vector: np.ndarray,
    limit: int,
    space: EmbeddingSpace | None = None,
) -> list[SearchHit]:
    """The project's `limit` closest images (gathered with concurrent searches); 404 when the
    project does not exist. `space`: the one `vector` is in (EmbeddingSpaceChanged when the
    catalog has switched to another since)."""
    query = SearchQuery(project_id, vector, limit, space.key if space is not None else None)
    (hits,) = await services.index_searches([query])
    if hits is None:
        raise NotFound(f"project '{project_id}' does not exist", project_id=project_id)
    return hits


async def require_project(services: Services, project_id: str) -> None:
    """404 unless the project exists (it is created by its first upload).

    Needs the index only, not the CLIP model: listing, reading and deleting keep working
    while the embedder is away. Routes that embed check the whole module themselves.
    """
    await services.board.require_ready(IMAGE_CATALOG)
    exists = await await_deployment(
        services.vector_index.project_exists.remote(project_id),
        what="the image index",
        timeout_s=services.config.request_timeout_s,
    )
    if not exists:
        raise NotFound(f"project '{project_id}' does not exist", project_id=project_id)


async def get_image(services: Services, project_id: str, image_id: str) -> ImageRecord:
    """The live record, or 404."""
    await require_project(services, project_id)
    record = await await_deployment(
        services.vector_index.get.remote(project_id, image_id),
        what="the image index",
        timeout_s=services.config.request_timeout_s,
    )
    if record is None:
        raise image_not_found(project_id, image_id)
    return record


async def similar_images(
    services: Services, project_id: str, image_id: str, limit: int
) -> list[SearchHit]:
    """The `limit` images closest to a stored one, itself excluded; 404 when either is
    unknown. Needs only the index, not the CLIP model."""
    await require_project(services, project_id)
    hits = await await_deployment(
        services.vector_index.similar.remote(project_id, image_id, limit),
        what="the image index",
        timeout_s=services.config.request_timeout_s,
    )
    if hits is None:
        raise image_not_found(project_id, image_id)
    return hits


async def duplicate_groups(
    services: Services, project_id: str, threshold: float, limit: int, cursor: str | None
) -> DuplicatesResponse:
    """A page of the project's near-duplicate groups (`VectorIndex.duplicates`); 404 for an
    unknown project. Needs only the index, not the CLIP model."""
    await require_project(services, project_id)
    page: DuplicatePage = await await_deployment(
        services.vector_index.duplicates.remote(project_id, threshold, limit, cursor),
        what="the image index",
        timeout_s=services.config.request_timeout_s,
    )
    return DuplicatesResponse(
        project_id=project_id,
        threshold=page.threshold,
        neighbours=page.neighbours,
        total_groups=page.total,
        scanned=page.scanned,
        groups=[
            DuplicateGroupOut(
                size=group.size,
                images=[
                    DuplicateImage(**image_out(hit.record).model_dump(), score=hit.score)
                    for hit in group.members
                ],
            )
            for group in page.groups
        ],
        next_cursor=page.next_cursor,
    )


def image_not_found(project_id: str, image_id: str) -> NotFound:
    return NotFound(f"image '{image_id}' not found in project '{project_id}'", id=image_id)


async def delete_image(services: Services, project_id: str, image_id: str) -> ImageRecord:
    """Tombstone, delete the object, then the row; 404 when unknown or already deleted."""
    await require_project(services, project_id)
    index = services.vector_index
    timeout_s = services.config.request_timeout_s
    record = await await_deployment(
        index.begin_delete.remote(project_id, image_id), what="the image index", timeout_s=timeout_s
    )
    if record is None:
        raise image_not_found(project_id, image_id)
    problem = own_key_problem(services, record)
    if problem is None:
        await asyncio.to_thread(services.store.delete, record.object_key)
    else:  # never delete by a key that is not the image's own: drop the row, keep the object
        logger.error(
            "not deleting the object of image %s of project %s: %s",
            record.id,
            record.project_id,
            problem,
        )
    await await_deployment(
        index.finish_delete.remote(project_id, image_id),
        what="the image index",
        timeout_s=timeout_s,
    )
    return record


def own_key_problem(services: Services, record: ImageRecord) -> str | None:
    """None when the record's object key and content type are exactly what an upload of it
    stores (`{IMAGE_SEARCH_REMOTE_PREFIX}{project}/{id}.{ext}`, an accepted image type); else
    why not. Checked before a key is served or deleted: a row is data, not an authority."""
    return image_key_problem(
        services.config.image_search_remote_prefix,
        record.project_id,
        record.id,
        record.object_key,
        record.content_type,
    )


async def _add_fresh(
    services: Services, project_id: str, images: list[CheckedImage], space: EmbeddingSpace
) -> list[ImageRecord]:
    """Embed (in `space`), store and index images new to the project; their records."""
    vectors = await services.embed_images([image.data for image in images], space)
    new_images = [
        _new_image(services, project_id, image, vector, space)
        for image, vector in zip(images, vectors, strict=True)
    ]
    stored = await _store_objects(services, images=images, new=new_images)
    try:
        added: list[ImageRecord] = await await_deployment(
            services.vector_index.add_many.remote(new_images),
            what="the image index",
            timeout_s=services.config.request_timeout_s,
        )
    except BaseException as exc:
        await _undo_stored(services, new_images, stored, exc)
        raise
    # A concurrent upload of the same bytes may have won: drop our now unused copies.
    unused = [
        new.object_key
        for new, rec in zip(new_images, added, strict=True)
        if rec.object_key != new.object_key
    ]
    if unused:
        await _delete_objects(services, unused)
    return added


def _new_image(
    services: Services,
    project_id: str,
    image: CheckedImage,
    vector: np.ndarray,
    space: EmbeddingSpace,
) -> NewImage:
    image_id = uuid.uuid4().hex
    return NewImage(
        id=image_id,
        project_id=project_id,
        object_key=image_object_key(
            services.config.image_search_remote_prefix, project_id, image_id, image.extension
        ),
        filename=image.filename,
        content_type=image.content_type,
        size_bytes=len(image.data),
        width=image.width,
        height=image.height,
        sha256=image.sha256,
        vector=np.asarray(vector, dtype=np.float32),
        space_key=space.key,
    )


async def _store_objects(
    services: Services, *, images: Sequence[CheckedImage], new: Sequence[NewImage]
) -> list[str]:
    """Put every original; on a failure delete the ones already put, then re-raise."""
    stored: list[str] = []
    try:
        for image, record in zip(images, new, strict=True):
            await asyncio.to_thread(
                services.store.put, record.object_key, image.data, image.content_type
            )
            stored.append(record.object_key)
    except BaseException:
        await _delete_objects(services, stored)
        raise
    return stored


async def _undo_stored(
    services: Services, new: Sequence[NewImage], stored: Sequence[str], exc: BaseException
) -> None:
    """Remove the originals of an upload whose indexing failed, without breaking a row.

    A refusal from the index (4xx: a full project, a conflict) rolled everything back. Any
    other failure (the replica died or timed out mid-call) leaves the outcome unknown: the
    rows may have committed just before. The index is asked (the call waits for a restarted
    replica) and the objects of rows that exist are kept; when it cannot tell, every object
    is kept: an orphan object is invisible, a row whose object is gone is a broken image.
    """
    if isinstance(exc, ApiError) and exc.status_code < 500:
        await _delete_objects(services, stored)
        return
    indexed: set[str] = set()
    try:
        for image in new:
            record = await await_deployment(
                services.vector_index.get.remote(image.project_id, image.id),
                what="the image index",
                timeout_s=services.config.request_timeout_s,
            )
            if record is not None and record.object_key == image.object_key:
                indexed.add(image.object_key)
    except ApiError as check:
        logger.error(
            "indexing failed and the index cannot tell what it holds (%s); keeping the objects %s",
            check.message,
            list(stored),
        )
        return
    await _delete_objects(services, [key for key in stored if key not in indexed])


async def _delete_objects(services: Services, keys: Sequence[str]) -> None:
    """Best-effort compensation; a failure here is logged with the keys left behind."""
    for key in keys:
        try:
            await asyncio.to_thread(services.store.delete, key)
        except ApiError as exc:
            logger.error("could not remove orphan object %s: %s", key, exc.message)

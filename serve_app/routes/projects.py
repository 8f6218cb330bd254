"""The seed's image-search routes under /v1/projects/{project_id}/images, plus batch upload
and search by image."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from core.errors import ObjectNotFound
from core.image_keys import media_type_for_key
from core.records import (
    DUPLICATES_DEFAULT_THRESHOLD,
    DUPLICATES_MIN_THRESHOLD,
    EmbeddingSpace,
    SearchHit,
)
from serve_app.access import (
    model_work,
    module_access,
    project_access,
    request_key,
    write_access,
)
from serve_app.deployment_calls import await_deployment
from serve_app.file_links import RedirectParam, link_to_stored
from serve_app.image_search import (
    delete_image,
    duplicate_groups,
    get_image,
    image_out,
    own_key_problem,
    require_project,
    search_by_vector,
    search_result,
    similar_images,
    upload_images,
)
from serve_app.modules import IMAGE_CATALOG, IMAGE_SEARCH
from serve_app.relevance import (
    MAX_SEARCH_DEPTH,
    candidates_for,
    cut_scores,
    decode_search_cursor,
    encode_search_cursor,
    search_fingerprint,
)
from serve_app.schemas import (
    ERROR_RESPONSES,
    IMAGE_ID_PATTERN,
    PROJECT_ID_PATTERN,
    BatchUploadResponse,
    DeleteResponse,
    DuplicatesResponse,
    ErrorResponse,
    FileLink,
    ImageListResponse,
    ImageOut,
    ProjectListResponse,
    ProjectOut,
    SearchCut,
    SearchRequest,
    SearchResponse,
)
from serve_app.services import Services, get_services
from serve_app.uploads import CheckedImage, check_image, read_multipart_files

logger = logging.getLogger("ray.serve")
# The API key's scope: the image_search module and the project (serve_app/access.py).
router = APIRouter(
    prefix="/v1/projects/{project_id}/images",
    tags=["image search"],
    dependencies=[module_access("image_search"), project_access],
)
# GET /v1/projects: the projects this key may see, for the image_search module.
listing = APIRouter(
    prefix="/v1/projects", tags=["image search"], dependencies=[module_access("image_search")]
)
ServicesDep = Annotated[Services, Depends(get_services)]
ProjectId = Annotated[
    str,
    Path(pattern=PROJECT_ID_PATTERN, description="Letters, digits, '_' and '-', 1-64 chars"),
]
ImageId = Annotated[str, Path(pattern=IMAGE_ID_PATTERN)]

UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    413: {"model": ErrorResponse, "description": "Over IMAGE_SEARCH_MAX_BYTES or too many pixels"},
    415: {"model": ErrorResponse, "description": "Not an image in an accepted format"},
}


def _multipart_body(field: str, many: bool) -> dict[str, Any]:
    file_schema = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": file_schema} if many else file_schema
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": [field], "properties": {field: schema}}
                }
            },
        }
    }


async def _checked_uploads(
    request: Request, services: Services, *, field: str, max_files: int
) -> list[CheckedImage]:
    await services.board.require_ready(IMAGE_SEARCH)
    uploads = await read_multipart_files(
        request,
        field=field,
        max_file_bytes=services.config.image_search_max_bytes,
        max_files=max_files,
    )
    max_pixels = services.config.image_search_max_pixels
    return await asyncio.to_thread(lambda: [check_image(u, max_pixels=max_pixels) for u in uploads])


@router.post(
    "",
    status_code=201,
    response_model=ImageOut,
    responses={
        200: {"model": ImageOut, "description": "Already stored: the existing record"},
        **UPLOAD_RESPONSES,
    },
    openapi_extra=_multipart_body("file", many=False),
    dependencies=[write_access, model_work],
)
async def upload_image(project_id: ProjectId, request: Request, services: ServicesDep) -> Response:
    """Upload one image (multipart field `file`); the project is created by its first upload."""
    (image,) = await _checked_uploads(request, services, field="file", max_files=1)
    (record,) = await upload_images(services, project_id, [image])
    body = image_out(record).model_dump(mode="json")
    return JSONResponse(body, status_code=200 if record.duplicate else 201)


@router.post(
    "/batch",
    status_code=201,
    response_model=BatchUploadResponse,
    responses=UPLOAD_RESPONSES,
    openapi_extra=_multipart_body("files", many=True),
    dependencies=[write_access, model_work],
)
async def upload_image_batch(
    project_id: ProjectId, request: Request, services: ServicesDep
) -> BatchUploadResponse:
    """Upload several images (repeated multipart field `files`), embedded as one batch.

    Every file is checked before anything is stored: one bad file rejects the request.
    """
    images = await _checked_uploads(
        request, services, field="files", max_files=services.config.image_search_max_batch_files
    )
    records = await upload_images(services, project_id, images)
    duplicates = sum(record.duplicate for record in records)
    return BatchUploadResponse(
        project_id=project_id,
        items=[image_out(record) for record in records],
        created=len(records) - duplicates,
        duplicates=duplicates,
    )


@listing.get("", response_model=ProjectListResponse, responses=ERROR_RESPONSES)
async def list_projects(
    request: Request,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(pattern=PROJECT_ID_PATTERN)] = None,
) -> ProjectListResponse:
    """Projects by id, each with its image count; an API key scoped to some projects sees
    only those. Follow `next_cursor` for more. Needs only the index, not the CLIP model."""
    await services.board.require_ready(IMAGE_CATALOG)
    key = request_key(request)
    scope = None if key is None else list(key.projects)
    page = await await_deployment(
        services.vector_index.list_projects.remote(limit, cursor, scope),
        what="the image index",
        timeout_s=services.config.request_timeout_s,
    )
    return ProjectListResponse(
        items=[
            ProjectOut(
                project_id=item.project_id,
                images=item.images,
                created_at=item.created_at.isoformat(),
                last_added_at=item.last_added_at and item.last_added_at.isoformat(),
            )
            for item in page.items
        ],
        next_cursor=page.next_cursor,
    )


@router.get("", response_model=ImageListResponse, responses=ERROR_RESPONSES)
async def list_images(
    project_id: ProjectId,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> ImageListResponse:
    """Newest first; `total` counts the project's images; follow `next_cursor` for more."""
    await require_project(services, project_id)
    page = await await_deployment(
        services.vector_index.list.remote(project_id, limit, cursor),
        what="the image index",
        timeout_s=services.config.request_timeout_s,
    )
    return ImageListResponse(
        project_id=project_id,
        items=[image_out(record) for record in page.items],
        total=page.total,
        next_cursor=page.next_cursor,
    )


@router.post(
    "/search", response_model=SearchResponse, responses=ERROR_RESPONSES, dependencies=[model_work]
)
async def search_images(
    project_id: ProjectId, body: SearchRequest, services: ServicesDep
) -> SearchResponse:
    """Text-to-image search: the `limit` closest images, best first."""
    await services.board.require_ready(IMAGE_SEARCH)
    # Concurrent searches share one embedding request and one index request; the index
    # answers 404 for an unknown project.
    fingerprint = search_fingerprint(
        body.query, body.limit, body.min_score, body.cutoff, body.cutoff_k
    )
    offset = decode_search_cursor(body.cursor, fingerprint) if body.cursor else 0
    # The cut is computed over the same best candidates on every page; a page is a window of
    # the ranking past it (one more hit tells whether another page follows).
    candidates = candidates_for(body.limit, body.cutoff)
    depth = min(max(candidates, offset + body.limit + 1), MAX_SEARCH_DEPTH)

    async def search(space: EmbeddingSpace) -> list[SearchHit]:
        (vector,) = await services.embed_texts([body.query], space)
        return await search_by_vector(services, project_id, vector, depth, space)

    hits = await services.in_search_space(search)
    head = hits[:candidates]
    cut = cut_scores(
        [hit.score for hit in head], min_score=body.min_score, cutoff=body.cutoff, k=body.cutoff_k
    )
    ranked = hits if cut.threshold is None else [h for h in hits if h.score >= cut.threshold]
    page = ranked[offset : offset + body.limit]
    more = len(ranked) > offset + body.limit and offset + body.limit < MAX_SEARCH_DEPTH
    return SearchResponse(
        project_id=project_id,
        results=[search_result(hit) for hit in page],
        cut=SearchCut(
            min_score=body.min_score,
            cutoff=body.cutoff,
            threshold=cut.threshold,
            candidates=len(head),
            dropped=len(head) - cut.kept,
        ),
        next_cursor=encode_search_cursor(offset + body.limit, fingerprint) if more else None,
    )


@router.post(
    "/search/by-image",
    response_model=SearchResponse,
    responses=UPLOAD_RESPONSES,
    openapi_extra=_multipart_body("file", many=False),
    dependencies=[model_work],
)
async def search_images_by_image(
    project_id: ProjectId,
    request: Request,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> SearchResponse:
    """Image-to-image search with an uploaded query image (multipart field `file`)."""
    await services.board.require_ready(IMAGE_SEARCH)
    await require_project(services, project_id)
    (image,) = await _checked_uploads(request, services, field="file", max_files=1)

    async def search(space: EmbeddingSpace) -> list[SearchHit]:
        (vector,) = await services.embed_images([image.data], space)
        return await search_by_vector(services, project_id, vector, limit, space)

    hits = await services.in_search_space(search)
    return SearchResponse(project_id=project_id, results=[search_result(hit) for hit in hits])


# Before every "/{image_id}..." route, so that "duplicates" is never taken for an image id.
@router.get(
    "/duplicates",
    response_model=DuplicatesResponse,
    responses={
        **ERROR_RESPONSES,
        404: {"model": ErrorResponse, "description": "Unknown project"},
        409: {
            "model": ErrorResponse,
            "description": "The project changed since the cursor was issued and its scan is "
            "no longer kept: start again without a cursor",
        },
    },
)
async def duplicate_images(
    project_id: ProjectId,
    services: ServicesDep,
    threshold: Annotated[
        float,
        Query(
            ge=DUPLICATES_MIN_THRESHOLD,
            le=1.0,
            description="Cosine similarity an image must reach with a neighbour to join it",
        ),
    ] = DUPLICATES_DEFAULT_THRESHOLD,
    limit: Annotated[int, Query(ge=1, le=50, description="Groups per page")] = 20,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> DuplicatesResponse:
    """Groups of near-identical images (re-encodes, resizes, slight crops): images joined
    by a CLIP cosine >= `threshold` with one of their nearest neighbours (the answer's
    `neighbours` of each), transitively.
    Largest group first; in a group the oldest image first, each with its score against it.

    The first page scans the project (seconds for 50k images) and the scan is kept for the
    pages after it: a `cursor` pages through the project as it was at its first page, with
    images deleted since left out. 409 when the project changed and that scan is no longer
    kept. Needs only the index, not the CLIP model.
    """
    return await duplicate_groups(services, project_id, threshold, limit, cursor)


@router.get(
    "/{image_id}/file",
    responses={
        200: {
            "content": {
                "image/*": {},
                "application/json": {"schema": FileLink.model_json_schema()},
            },
            "description": "The original (local store), or with `redirect=false` on R2/S3 its URL",
        },
        307: {"description": "Redirect to a presigned or public URL (R2/S3)"},
        **ERROR_RESPONSES,
    },
)
async def get_image_file(
    project_id: ProjectId, image_id: ImageId, services: ServicesDep, redirect: RedirectParam = True
) -> Response:
    """The original upload: a 307 to R2 (presigned; with `redirect=false` that URL as JSON),
    or the bytes from the local store."""
    record = await get_image(services, project_id, image_id)
    problem = own_key_problem(services, record)
    media_type = media_type_for_key(record.object_key)
    if problem is not None or media_type is None:  # not its own key: never served
        logger.error(
            "refusing to serve image %s of project %s: %s",
            image_id,
            project_id,
            problem or "no image type for its key",
        )
        raise ObjectNotFound("the image's file is not available", id=image_id)
    store = services.store
    if store.kind != "local":
        return await link_to_stored(store, record.object_key, redirect)
    path = store.path_for(record.object_key)  # type: ignore[attr-defined]
    if not path.is_file():
        raise ObjectNotFound("the image's file is missing from storage", id=image_id)
    # The media type comes from the accepted set (by the checked key), never from the row.
    return FileResponse(path, media_type=media_type, filename=record.filename)


@router.get(
    "/{image_id}/similar",
    response_model=SearchResponse,
    responses=ERROR_RESPONSES,
)
async def similar_images_route(
    project_id: ProjectId,
    image_id: ImageId,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> SearchResponse:
    """The `limit` images closest to a stored one (its stored vector), itself excluded, best
    first. Needs only the index, not the CLIP model; 404 for an unknown project or image."""
    hits = await similar_images(services, project_id, image_id, limit)
    return SearchResponse(project_id=project_id, results=[search_result(hit) for hit in hits])


@router.delete(
    "/{image_id}",
    response_model=DeleteResponse,
    responses=ERROR_RESPONSES,
    dependencies=[write_access],
)
async def delete_image_route(
    project_id: ProjectId, image_id: ImageId, services: ServicesDep
) -> DeleteResponse:
    """Remove the image's object, row and vector; 404 when unknown or already deleted."""
    record = await delete_image(services, project_id, image_id)
    return DeleteResponse(project_id=project_id, id=record.id)

"""GET /v1/storage/{key}: fetch a stored result (generated images, uploaded originals).

With the local store this streams the file; with S3/R2 it redirects (307) to a presigned or
public URL. Only keys under the public result prefixes are served (generated images, search
uploads, synthesized speech): backups, voice references and transcripts stay private.
"""

from __future__ import annotations

import asyncio
import mimetypes
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response

from core.errors import ObjectNotFound
from core.storage import validate_key
from serve_app.access import check_stored_object
from serve_app.file_links import RedirectParam, link_to_stored
from serve_app.schemas import ErrorResponse, FileLink
from serve_app.services import Services, get_services

router = APIRouter(tags=["storage"])
ServicesDep = Annotated[Services, Depends(get_services)]


@router.get(
    "/v1/storage/{key:path}",
    responses={
        200: {
            "content": {"*/*": {}, "application/json": {"schema": FileLink.model_json_schema()}},
            "description": "The file (local store), or with `redirect=false` on R2/S3 its URL",
        },
        307: {"description": "Redirect to the object in S3/R2"},
        404: {"model": ErrorResponse, "description": "No such object"},
        422: {"model": ErrorResponse, "description": "Invalid key"},
    },
)
async def get_stored_object(
    key: str, request: Request, services: ServicesDep, redirect: RedirectParam = True
) -> Response:
    """Return (local store) or redirect to (S3/R2; with `redirect=false` the URL as JSON) a
    stored result object."""
    key = validate_key(key)
    if not key.startswith(services.config.public_prefixes):
        raise ObjectNotFound("no such object", key=key)
    check_stored_object(request, services.config, key)  # the API key's project/voice scope
    store = services.store
    if store.kind != "local":
        if await asyncio.to_thread(store.head, key) is None:
            raise ObjectNotFound("no such object", key=key)
        return await link_to_stored(store, key, redirect)
    path = store.path_for(key)  # type: ignore[attr-defined]
    if not path.is_file():
        raise ObjectNotFound("no such object", key=key)
    media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type)

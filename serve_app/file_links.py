"""Stored files behind R2/S3: a 307 to the store's link, or that link as JSON.

A browser page that shows a stored image cannot follow the redirect itself: the request
carries the API key, and the redirect leads to another origin. With `?redirect=false` it gets
the link (`{"url": ...}`) and shows the file from there. The local store has no link to give:
its routes send the file, whatever `redirect` says.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Query
from fastapi.responses import JSONResponse, RedirectResponse, Response

from core.storage import ObjectStore
from serve_app.schemas import FileLink

RedirectParam = Annotated[
    bool,
    Query(
        description="false: with R2/S3, answer 200 with the store's link as JSON instead of a "
        "307 to it; no effect on the local store, which sends the file"
    ),
]


async def store_and_link(store: ObjectStore, key: str, data: bytes, content_type: str) -> str:
    """Store a result at `key` and answer its link: public or presigned for S3/R2, this
    server's `/v1/storage/{key}` route (a path, relative to the server) for the local store."""
    await asyncio.to_thread(store.put, key, data, content_type)
    return await asyncio.to_thread(store.url, key)


async def link_to_stored(store: ObjectStore, key: str, redirect: bool) -> Response:
    """A 307 to the store's (presigned or public) URL of `key`, or that URL as JSON."""
    url = await asyncio.to_thread(store.url, key)
    if redirect:
        return RedirectResponse(url, status_code=307)
    return JSONResponse(FileLink(url=url).model_dump())

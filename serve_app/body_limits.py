"""Bounds on request bodies, before any route reads them: a cap per request and a budget of
bytes held at once by one Gateway replica.

- A JSON (or any non-multipart) body is read here, in full, up to `json_max_bytes`: one byte
  more is a 413, whether the client declared a Content-Length or streamed it chunked. The
  route then reads the buffered copy (FastAPI buffers JSON bodies whole anyway).
- A multipart body (uploads) declared larger than `multipart_max_bytes` is a 413 before a byte
  is read; the upload routes then enforce their own, tighter budgets while streaming
  (`serve_app/uploads.py`).
- Every body reserves its size (its Content-Length, or its cap when streamed) against
  `in_flight_max_bytes` until the response is sent; a request that would exceed it is a
  503 with Retry-After, so a burst of large uploads cannot exhaust the replica's memory.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import ApiError, Overloaded, PayloadTooLarge
from serve_app.http_errors import api_error_response

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True)
class BodyLimits:
    """The caps (bytes); built from the settings by the app builder."""

    json_max_bytes: int
    multipart_max_bytes: int
    in_flight_max_bytes: int


class BodyLimitMiddleware:
    """ASGI middleware applying `BodyLimits` (see the module docstring)."""

    def __init__(self, app: ASGIApp, limits: BodyLimits):
        self.app = app
        self.limits = limits
        self._in_flight = 0
        self._lock = asyncio.Lock()

    @property
    def in_flight_bytes(self) -> int:
        """Bytes reserved by the bodies being handled now."""
        return self._in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        multipart = _header(scope, b"content-type").lower().startswith(b"multipart/form-data")
        cap = self.limits.multipart_max_bytes if multipart else self.limits.json_max_bytes
        setting = "GATEWAY_MAX_UPLOAD_BYTES" if multipart else "GATEWAY_MAX_JSON_BYTES"
        declared = _declared_length(scope)
        if declared is not None and declared > cap:
            await self._refuse(_too_large(cap, setting), scope, receive, send)
            return
        reserved = cap if declared is None else declared
        if not await self._reserve(reserved):
            busy = Overloaded(
                "the server is holding too many request bodies at once; retry shortly",
                headers={"Retry-After": "1"},
            )
            await self._refuse(busy, scope, receive, send)
            return
        try:
            if multipart:
                await self.app(scope, receive, send)
                return
            body = await _read_body(receive, cap)
            if body is None:
                await self._refuse(_too_large(cap, setting), scope, receive, send)
                return
            await self.app(scope, _replay(body, receive), send)
        finally:
            async with self._lock:
                self._in_flight -= reserved

    async def _reserve(self, size: int) -> bool:
        async with self._lock:
            if self._in_flight and self._in_flight + size > self.limits.in_flight_max_bytes:
                return False  # one body alone may use the whole budget; a second may not
            self._in_flight += size
            return True

    @staticmethod
    async def _refuse(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
        await api_error_response(error)(scope, receive, send)


def _too_large(cap: int, setting: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body over {cap} bytes ({setting})", limit=cap)


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value)
    return b""


def _declared_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value.isdigit() else None


async def _read_body(receive: Receive, cap: int) -> bytes | None:
    """The whole body, or None once it passes `cap` (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client left: the route sees an empty body and its disconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: disconnect notices pass through

    return replay

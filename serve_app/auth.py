"""Bearer API keys for every route but the health probes, per-key request rates, and the
audit log.

Keys come from API_KEYS and/or API_KEYS_FILE (serve_app/api_keys.py), read once by the
builder; the gateway only ever holds their SHA-256 digests with their scopes, compared in
constant time, so no key sits in a config object, a log line or the dashboard.

- `/healthz` is open; `/readyz` is open too, and says more to a valid key (routes/health.py).
- The console's static files (`GET`/`HEAD` under `/ui`, serve_app/console) are open: they
  hold no data and no secret; the calls the page makes need a key like any other.
- Every other route: 401 without a known key (when keys are configured), 429 with
  Retry-After past the key's requests per minute, then the route, whose dependencies check
  the key's scope (serve_app/access.py).
- One audit line per mutating request (POST, PUT, PATCH, DELETE), answered or refused:
  `audit key=<name> method=<method> route=<template> status=<status> request_id=<id>`,
  through the `ray.serve` logger (so into the Gateway replica's Serve log). Never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import ApiError, Unauthorized
from serve_app.access import KEY_SCOPE, KeyLimits
from serve_app.api_keys import ApiKey, digest
from serve_app.console import is_console_path
from serve_app.http_errors import api_error_response

__all__ = ["OPEN_PATHS", "ApiKeyMiddleware", "digest"]

logger = logging.getLogger("ray.serve")

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
NO_KEY = "-"  # the audit's key name when the request has none
READ_METHODS = frozenset({"GET", "HEAD"})


class ApiKeyMiddleware:
    """ASGI middleware: identify the key, refuse 401/429, audit mutating requests."""

    def __init__(self, app: ASGIApp, keys: Sequence[ApiKey], limits: KeyLimits):
        self.app = app
        self._keys = tuple((bytes.fromhex(key.digest), key) for key in keys)
        self._limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _relative_path(scope)
        key = self._identify(scope) if self._keys else None
        if key is not None:
            scope[KEY_SCOPE] = key
        refusal: ApiError | None = None
        if path in OPEN_PATHS or _is_console_read(scope, path):
            pass
        elif self._keys and key is None:
            refusal = Unauthorized(
                "a valid API key is required: Authorization: Bearer <key>",
                headers={"WWW-Authenticate": 'Bearer realm="common-ai-server"'},
            )
        elif key is not None:
            try:
                self._limits.admit_request(key)
            except ApiError as exc:
                refusal = exc
        if scope.get("method", "") not in MUTATING_METHODS:
            if refusal is None:
                await self.app(scope, receive, send)
            else:
                await api_error_response(refusal)(scope, receive, send)
            return
        await self._audited(scope, receive, send, key, refusal, path)

    async def _audited(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        key: ApiKey | None,
        refusal: ApiError | None,
        path: str,
    ) -> None:
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if refusal is None:
                await self.app(scope, receive, send_and_record)
            else:
                await api_error_response(refusal)(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None)
            logger.info(
                "audit key=%s method=%s route=%s status=%d request_id=%s",
                key.name if key is not None else NO_KEY,
                scope.get("method", ""),
                template if template else f"- path={path[:200]!r}",
                status,
                _request_id() or "-",
            )

    def _identify(self, scope: Scope) -> ApiKey | None:
        header = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return None
        offered = hashlib.sha256(token.strip()).digest()
        matched: ApiKey | None = None
        for known, key in self._keys:  # no early exit: the time does not depend on which key
            if hmac.compare_digest(offered, known):
                matched = key
        return matched


def _is_console_read(scope: Scope, path: str) -> bool:
    return scope.get("method", "") in READ_METHODS and is_console_path(path)


def _relative_path(scope: Scope) -> str:
    root = scope.get("root_path", "")
    path: str = scope.get("path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path


def _request_id() -> str | None:
    """Serve's id of the request (the client's X-Request-ID when it sent one)."""
    try:
        from ray.serve.context import _get_serve_request_context
    except ImportError:  # pragma: no cover - a Ray without request contexts
        return None
    return _get_serve_request_context().request_id or None

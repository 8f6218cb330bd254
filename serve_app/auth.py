"""Bearer API keys for every route but the health probes.

Keys come from API_KEYS and/or API_KEYS_FILE, read once by the builder; the gateway only
ever holds their SHA-256 digests, compared in constant time, so no key sits in a config
object, a log line or the dashboard.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import Unauthorized
from serve_app.http_errors import api_error_response

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def digest(key: str) -> str:
    """The SHA-256 hex digest a key is known by."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_key_file(path: Path) -> list[str]:
    """One key per line; blank lines and lines starting with '#' are ignored."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class ApiKeyMiddleware:
    """ASGI middleware: 401 JSON unless `Authorization: Bearer <key>` matches a known key."""

    def __init__(self, app: ASGIApp, key_digests: Iterable[str]):
        self.app = app
        self._digests = tuple(bytes.fromhex(d) for d in key_digests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._digests or self._is_open(scope):
            await self.app(scope, receive, send)
            return
        if self._authorized(scope):
            await self.app(scope, receive, send)
            return
        refusal = Unauthorized(
            "a valid API key is required: Authorization: Bearer <key>",
            headers={"WWW-Authenticate": 'Bearer realm="common-ai-server"'},
        )
        await api_error_response(refusal)(scope, receive, send)

    @staticmethod
    def _is_open(scope: Scope) -> bool:
        root = scope.get("root_path", "")
        path = scope.get("path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        return path in OPEN_PATHS

    def _authorized(self, scope: Scope) -> bool:
        header = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return False
        offered = hashlib.sha256(token.strip()).digest()
        matched = False
        for known in self._digests:  # no early exit: the time does not depend on which key
            matched |= hmac.compare_digest(offered, known)
        return matched

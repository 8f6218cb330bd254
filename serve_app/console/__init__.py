"""The web console: static files served by the Gateway at `/ui`.

The page is plain HTML, CSS and JavaScript modules (no build step, no CDN, nothing
vendored). It is public, like any static file, and holds no secret: every API call it makes
carries the API key the user typed, from the browser's session storage, and goes through the
same middleware, scopes and limits as any other client. Its responses carry a strict
Content-Security-Policy (scripts and styles from this origin only, no inline script, calls
to this origin only; images and audio also from the object store's links with R2/S3), so a
value shown in the page can never run as code.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.storage import ObjectStore

CONSOLE_PATH = "/ui"
STATIC_DIR = Path(__file__).parent / "static"


# Images and audio this server stores itself are fetched with the key and shown from blob:
# URLs; with R2/S3 they come straight from the object store's presigned or public links,
# whose origin the policy names (images and audio only, never scripts or API calls); data:
# for the page's own small icons. Nothing inline, no other origin, no framing, no plugin.
def content_security_policy(storage_origin: str | None = None) -> str:
    """The console's policy; `storage_origin` may serve its images and audio."""
    store = f" {storage_origin}" if storage_origin else ""
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' blob: data:{store}",
            f"media-src 'self' blob:{store}",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


# Any key, made only to read the origin of the links a store hands out.
_ORIGIN_PROBE_KEY = "console/origin-probe.png"


def storage_origin(store: ObjectStore) -> str | None:
    """The origin of the links the store gives browsers (presigned or public URLs), or None
    when this server serves the files itself (the local store). Reads no object."""
    if store.kind == "local":
        return None
    parts = urllib.parse.urlsplit(store.url(_ORIGIN_PROBE_KEY))
    return f"{parts.scheme}://{parts.netloc}"


def security_headers(policy: str) -> tuple[tuple[bytes, bytes], ...]:
    """The headers on every console file."""
    return (
        (b"content-security-policy", policy.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        # A new release's files are fetched again (revalidated with the ETag StaticFiles sends).
        (b"cache-control", b"no-cache"),
    )


def is_console_path(path: str) -> bool:
    """True for `/ui` and what lies under it: the static files, open without a key."""
    return path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/")


class SecuredStatic:
    """ASGI wrapper: the console's files with the security headers on every response."""

    def __init__(self, app: ASGIApp, headers: tuple[tuple[bytes, bytes], ...]) -> None:
        self.app = app
        self.headers = headers
        self.names = {name for name, _ in headers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(n, v) for n, v in message.get("headers", ()) if n not in self.names]
                message["headers"] = [*headers, *self.headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def mount_console(app: FastAPI, store: ObjectStore) -> None:
    """Serve the console's files at `/ui/` (`index.html` for the folder itself)."""
    static = StaticFiles(directory=STATIC_DIR, html=True, follow_symlink=False)
    policy = content_security_policy(storage_origin(store))
    app.mount(CONSOLE_PATH, SecuredStatic(static, security_headers(policy)), name="console")

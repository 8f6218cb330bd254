"""The web console: static files served by the Gateway at `/ui`.

The page is plain HTML, CSS and JavaScript modules (no build step, no CDN, nothing
vendored). It is public, like any static file, and holds no secret: every API call it makes
carries the API key the user typed, from the browser's session storage, and goes through the
same middleware, scopes and limits as any other client. Its responses carry a strict
Content-Security-Policy (scripts and styles from this origin only, no inline script, calls
to this origin only), so a value shown in the page can never run as code.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONSOLE_PATH = "/ui"
STATIC_DIR = Path(__file__).parent / "static"

# Images and audio are fetched with the key and shown from blob: URLs; data: for the
# page's own small icons. Nothing inline, no other origin, no framing, no plugin.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
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

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in SECURITY_HEADERS}
                headers = [(n, v) for n, v in message.get("headers", ()) if n not in names]
                message["headers"] = [*headers, *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def mount_console(app: FastAPI) -> None:
    """Serve the console's files at `/ui/` (`index.html` for the folder itself)."""
    static = StaticFiles(directory=STATIC_DIR, html=True, follow_symlink=False)
    app.mount(CONSOLE_PATH, SecuredStatic(static), name="console")

"""ASGI middleware that counts the Gateway's HTTP responses (the metric is in core.metrics)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from core.metrics import http_requests
from serve_app.console import CONSOLE_PATH, is_console_path

# nginx's "client closed request": the client left before any answer started. Serve cancels
# the request then; counting it as a 500 would page someone for a user closing a tab.
CLIENT_CLOSED_REQUEST = 499

CountResponse = Callable[[dict[str, str]], None]


def _count_in_ray(tags: dict[str, str]) -> None:
    http_requests().inc(1, tags=tags)


class RequestMetricsMiddleware:
    """ASGI middleware counting responses by route template (not raw path), method, status."""

    def __init__(self, app: Callable[..., Awaitable[None]], count: CountResponse = _count_in_ray):
        self.app = app
        self.count = count

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: int | None = None
        # Before the app runs: routing into a mount rewrites the scope's root_path.
        unrouted = _unrouted(scope)

        async def send_and_record(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        except asyncio.CancelledError:
            if status is None:
                status = CLIENT_CLOSED_REQUEST
            raise
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or unrouted
            self.count(
                {
                    "route": template,
                    "method": scope.get("method", ""),
                    "status": str(500 if status is None else status),
                }
            )


def _unrouted(scope: dict[str, Any]) -> str:
    """The label of a response no route answered: the console's files are one label."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return CONSOLE_PATH if is_console_path(path) else "unmatched"

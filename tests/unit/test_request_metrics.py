"""The Gateway's response counter: route templates, statuses, and clients that leave."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from serve_app.request_metrics import CLIENT_CLOSED_REQUEST, RequestMetricsMiddleware


class Recorder:
    def __init__(self) -> None:
        self.counted: list[dict[str, str]] = []

    def __call__(self, tags: dict[str, str]) -> None:
        self.counted.append(tags)


def build(recorder: Recorder, inside: asyncio.Event) -> RequestMetricsMiddleware:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    @app.get("/slow")
    async def slow() -> None:
        inside.set()
        await asyncio.Event().wait()

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first"
            inside.set()
            await asyncio.Event().wait()

        return StreamingResponse(chunks())

    return RequestMetricsMiddleware(app, count=recorder)


def scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


async def call(path: str, *, leave: bool) -> tuple[list[dict[str, str]], list[int]]:
    """Run one request; with `leave`, cancel it (as Serve does when the client goes) once inside."""
    recorder, inside = Recorder(), asyncio.Event()
    middleware = build(recorder, inside)
    statuses: list[int] = []

    bodies = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if bodies:
            return bodies.pop()
        await asyncio.Event().wait()  # the client stays connected until the task is cancelled
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    task = asyncio.create_task(middleware(scope(path), receive, send))
    if leave:
        await asyncio.wait_for(inside.wait(), timeout=30)
        task.cancel()
    try:
        await task
    except (asyncio.CancelledError, RuntimeError):
        pass
    return recorder.counted, statuses


def test_an_answer_is_counted_under_its_route_template() -> None:
    counted, statuses = asyncio.run(call("/items/42", leave=False))
    assert statuses == [200]
    assert counted == [{"route": "/items/{item_id}", "method": "GET", "status": "200"}]


def test_an_unmatched_path_is_one_label() -> None:
    counted, _ = asyncio.run(call("/nowhere/../etc", leave=False))
    assert counted == [{"route": "unmatched", "method": "GET", "status": "404"}]


def test_a_failure_is_a_500() -> None:
    counted, _ = asyncio.run(call("/boom", leave=False))
    assert [c["status"] for c in counted] == ["500"]


def test_a_client_that_leaves_before_an_answer_is_not_a_server_error() -> None:
    counted, statuses = asyncio.run(call("/slow", leave=True))
    assert statuses == []
    assert counted == [{"route": "/slow", "method": "GET", "status": str(CLIENT_CLOSED_REQUEST)}]


def test_a_client_that_leaves_a_started_stream_keeps_its_status() -> None:
    counted, statuses = asyncio.run(call("/stream", leave=True))
    assert statuses == [200]
    assert [c["status"] for c in counted] == ["200"]

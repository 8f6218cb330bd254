"""Load generation: closed-loop clients (asyncio for HTTP and Serve handles, threads for
in-process calls), the aiohttp session they share and the 2xx check of each response.

A closed loop keeps `concurrency` callers busy back to back for a fixed time and returns a
`bench.stats.Sample` of what completed. A 503 (the server refusing work for lack of room,
`HttpOverloaded`) is an error like any other, and is also counted on its own
(`Sample.rejected`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from bench.stats import Sample

if TYPE_CHECKING:
    import aiohttp


async def closed_loop(
    call: Callable[[], Awaitable[object]], concurrency: int, duration_s: float
) -> Sample:
    """`concurrency` workers each call `call()` back to back for `duration_s`.

    A call that raises counts as an error (its latency is not kept), an `HttpOverloaded`
    also as rejected. Throughput counts the requests that completed; the wall time runs
    until the last worker's request finished.
    """
    sample = Sample()
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await call()
            except Exception as exc:  # noqa: BLE001 - counted and shown, not fatal
                sample.errors += 1
                if isinstance(exc, HttpOverloaded):
                    sample.rejected += 1
                if len(sample.error_examples) < 3:
                    sample.error_examples.append(f"{type(exc).__name__}: {exc}"[:200])
                await asyncio.sleep(0.01)
                continue
            sample.latencies_s.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    sample.wall_s = time.perf_counter() - started
    return sample


def threaded_closed_loop(call: Callable[[], object], concurrency: int, duration_s: float) -> Sample:
    """`closed_loop` with threads and a synchronous `call` (for in-process direct calls)."""
    sample = Sample()
    deadline = time.perf_counter() + duration_s
    lock = threading.Lock()

    def worker() -> None:
        local: list[float] = []
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            call()
            local.append(time.perf_counter() - started)
        with lock:
            sample.latencies_s.extend(local)

    started = time.perf_counter()
    if concurrency == 1:
        worker()
    else:
        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    sample.wall_s = time.perf_counter() - started
    return sample


def http_session(timeout_s: float = 600) -> aiohttp.ClientSession:
    """An aiohttp session for load: connections reused, but never after 3 s idle (servers
    close idle keep-alive connections after 5 s; reusing one that is closing fails)."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=3)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
    )


class HttpStatusError(Exception):
    """A response that is not 2xx."""


class HttpOverloaded(HttpStatusError):
    """A 503: the server refused the request for lack of room (a full queue, a module away)."""


async def expect_ok(response: aiohttp.ClientResponse) -> bytes:
    """Read an aiohttp response; raise unless it is 2xx (`HttpOverloaded` for a 503)."""
    body = await response.read()
    if response.status >= 300:
        error = HttpOverloaded if response.status == 503 else HttpStatusError
        raise error(f"HTTP {response.status}: {body[:160]!r}")
    return body

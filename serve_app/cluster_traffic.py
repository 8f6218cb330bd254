"""Queue depths and request counts of this Serve application, for the console's Status page,
read from the Prometheus text Ray exports on each node (the same series a Prometheus server
would scrape: README, Monitoring).

The Gateway asks Ray for its nodes' metrics ports, reads each node's export (a bounded
number of nodes and bytes, a short timeout) and keeps only this application's series:
waiting requests per deployment (`ray_serve_deployment_queued_queries`, at the callers'
routers), requests being processed (`ray_serve_replica_processing_queries`), responses per
route template and status (`ray_ai_http_requests_total`) and queue-full refusals
(`ray_ai_queue_rejections_total`). Counters are totals; a client takes rates from two reads.
The answer is computed at most once per TRAFFIC_CACHE_S per Gateway replica, one computation
shared by every request that arrives meanwhile. Nothing names a node, an address or a
project.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client.parser import text_string_to_metric_families

from serve_app.schemas import DeploymentTraffic, RouteCount, TrafficResponse

logger = logging.getLogger("ray.serve")

TRAFFIC_CACHE_S = 2.0
SCRAPE_TIMEOUT_S = 2.0
MAX_NODES = 64
MAX_EXPORT_BYTES = 16 * 1024 * 1024

QUEUED = "ray_serve_deployment_queued_queries"
PROCESSING = "ray_serve_replica_processing_queries"
REQUESTS = "ray_ai_http_requests_total"
REJECTIONS = "ray_ai_queue_rejections_total"
WANTED = frozenset({QUEUED, PROCESSING, REQUESTS, REJECTIONS})


def summarize(exports: Iterable[str], app_name: str) -> TrafficResponse:
    """This application's traffic from Prometheus text exports (one per node)."""
    queued: dict[str, float] = defaultdict(float)
    processing: dict[str, float] = defaultdict(float)
    requests: dict[tuple[str, str, str], float] = defaultdict(float)
    rejections: dict[str, float] = defaultdict(float)
    nodes = 0
    for text in exports:
        nodes += 1
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name not in WANTED or sample.labels.get("application") != app_name:
                    continue
                labels = sample.labels
                if sample.name == QUEUED:
                    queued[labels.get("deployment", "")] += sample.value
                elif sample.name == PROCESSING:
                    processing[labels.get("deployment", "")] += sample.value
                elif sample.name == REQUESTS:
                    key = (
                        labels.get("route", ""),
                        labels.get("method", ""),
                        labels.get("status", ""),
                    )
                    requests[key] += sample.value
                else:
                    rejections[labels.get("call", "")] += sample.value
    deployments = {
        name: DeploymentTraffic(queued=queued.get(name, 0.0), processing=processing.get(name, 0.0))
        for name in sorted({*queued, *processing} - {""})
    }
    return TrafficResponse(
        available=nodes > 0,
        reason=None if nodes else "no node's metrics could be read",
        nodes=nodes,
        deployments=deployments,
        requests=[
            RouteCount(route=route, method=method, status=status, count=count)
            for (route, method, status), count in sorted(requests.items())
        ],
        rejections=dict(sorted(rejections.items())),
        read_at=time.time(),
    )


def metrics_urls() -> list[str]:
    """The Prometheus export of every live node of the Ray cluster (a GCS call: blocking)."""
    import ray

    urls = []
    for node in ray.nodes():
        port = node.get("MetricsExportPort")
        host = str(node.get("NodeManagerAddress", ""))
        if not node.get("Alive") or not port or not host:
            continue
        host = f"[{host}]" if ":" in host else host
        urls.append(f"http://{host}:{int(port)}/metrics")
    return urls[:MAX_NODES]


def read_export(url: str) -> str | None:
    """One node's export, or None when it does not answer in time (logged, not raised)."""
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
            data: bytes = response.read(MAX_EXPORT_BYTES + 1)
    except OSError as exc:
        logger.warning("metrics export %s not read: %s", url, exc)
        return None
    if len(data) > MAX_EXPORT_BYTES:
        logger.warning("metrics export %s is over %d bytes: left out", url, MAX_EXPORT_BYTES)
        return None
    return data.decode("utf-8", errors="replace")


async def read_traffic(app_name: str) -> TrafficResponse:
    """Read every node's export (in threads, at once) and summarize this app's series."""
    try:
        urls = await asyncio.to_thread(metrics_urls)
    except Exception as exc:  # noqa: BLE001 - Ray not reachable: say so, do not fail
        logger.warning("cannot list the Ray nodes for metrics: %s", exc)
        urls = []
    texts = await asyncio.gather(*(asyncio.to_thread(read_export, url) for url in urls))
    return summarize((text for text in texts if text is not None), app_name)


class TrafficCache:
    """The last traffic answer for `ttl_s`; one computation at a time, shared."""

    def __init__(self, ttl_s: float = TRAFFIC_CACHE_S) -> None:
        self.ttl_s = ttl_s
        self._answer: TrafficResponse | None = None
        self._at = float("-inf")
        self._running: asyncio.Future[TrafficResponse] | None = None

    async def get(self, compute: Callable[[], Awaitable[TrafficResponse]]) -> TrafficResponse:
        if self._answer is not None and time.monotonic() - self._at <= self.ttl_s:
            return self._answer
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._compute(compute))
        return await asyncio.shield(self._running)

    async def _compute(self, compute: Callable[[], Awaitable[TrafficResponse]]) -> TrafficResponse:
        answer = await compute()
        self._answer, self._at = answer, time.monotonic()
        return answer

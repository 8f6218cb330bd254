"""The Status page's traffic: this application's series picked out of Ray's Prometheus text
exports (other applications' left out), a node's export read over HTTP within its bounds, and
the route answering `available: false` where no export can be read (no Ray here)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from serve_app import cluster_traffic
from serve_app.cluster_traffic import read_export, summarize
from tests.unit.test_api_keys import make_client

QUEUED = "ray_serve_deployment_queued_queries"
PROCESSING = "ray_serve_replica_processing_queries"
REQUESTS = "ray_ai_http_requests_total"
IMAGES = "/v1/images/generate"


def series(name: str, value: float, **labels: str) -> str:
    """One sample line of Prometheus's text format."""
    text = ",".join(f'{key}="{label}"' for key, label in labels.items())
    return f"{name}{{{text}}} {value}"


NODE_A = "\n".join(
    (
        f"# TYPE {QUEUED} gauge",
        series(QUEUED, 3, application="ai", deployment="ImageGenerator", handle="h1"),
        series(QUEUED, 1, application="ai", deployment="ImageGenerator", handle="h2"),
        series(QUEUED, 9, application="other", deployment="ImageGenerator", handle="h3"),
        f"# TYPE {PROCESSING} gauge",
        series(PROCESSING, 1, application="ai", deployment="ImageGenerator", replica="r1"),
        series(PROCESSING, 0, application="ai", deployment="VoiceCloner", replica="r2"),
        f"# TYPE {REQUESTS} counter",
        series(REQUESTS, 5, application="ai", route=IMAGES, method="POST", status="200"),
        series(REQUESTS, 50, application="other", route=IMAGES, method="POST", status="200"),
        "# TYPE ray_ai_queue_rejections_total counter",
        series("ray_ai_queue_rejections_total", 2, application="ai", call="image generation"),
        "# TYPE ray_ai_index_images gauge",
        series("ray_ai_index_images", 7, application="ai", project="secret-project"),
        "",
    )
)
NODE_B = "\n".join(
    (
        f"# TYPE {REQUESTS} counter",
        series(REQUESTS, 2, application="ai", route=IMAGES, method="POST", status="200"),
        series(REQUESTS, 1, application="ai", route="/readyz", method="GET", status="503"),
        "",
    )
)


def test_summarize_keeps_this_applications_series_across_nodes() -> None:
    traffic = summarize([NODE_A, NODE_B], "ai")
    assert traffic.available and traffic.nodes == 2
    assert {name: (d.queued, d.processing) for name, d in traffic.deployments.items()} == {
        "ImageGenerator": (4.0, 1.0),
        "VoiceCloner": (0.0, 0.0),
    }
    assert [(r.route, r.method, r.status, r.count) for r in traffic.requests] == [
        ("/readyz", "GET", "503", 1.0),
        (IMAGES, "POST", "200", 7.0),
    ]
    assert traffic.rejections == {"image generation": 2.0}
    assert "secret-project" not in traffic.model_dump_json()  # no per-project series


def test_summarize_without_any_export_says_so() -> None:
    traffic = summarize([], "ai")
    assert not traffic.available and traffic.reason and traffic.requests == []


@pytest.fixture
def export_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = NODE_A.encode() if self.path == "/metrics" else b"x" * 4096
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_nodes_export_is_read_within_its_bounds(
    export_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert read_export(f"{export_server}/metrics") == NODE_A
    monkeypatch.setattr(cluster_traffic, "MAX_EXPORT_BYTES", 1024)
    assert read_export(f"{export_server}/big") is None  # over the cap: left out
    assert read_export("http://127.0.0.1:9/metrics") is None  # nothing listens: left out


def test_the_route_needs_a_key_and_says_when_nothing_is_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The node list comes from whatever Ray this process joined (another test's, in a full
    # run): name a node whose export nobody serves instead.
    monkeypatch.setattr(cluster_traffic, "metrics_urls", lambda: ["http://127.0.0.1:9/metrics"])
    client = make_client(tmp_path, API_KEYS="traffic-key-0123456789")
    assert client.get("/v1/console/traffic").status_code == 401
    response = client.get(
        "/v1/console/traffic", headers={"Authorization": "Bearer traffic-key-0123456789"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["available"] is False and body["reason"] and body["nodes"] == 0

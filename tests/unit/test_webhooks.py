"""Webhook deliveries go to the address that was checked, under the URL's own name."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from core.jobs import SIGNATURE_HEADER, JobView
from serve_app.webhooks import deliver, pin_to_address


@pytest.mark.parametrize(
    ("url", "address", "pinned", "host", "sni"),
    [
        ("http://hooks.example.com/a?b=1", "93.184.216.34", "http://93.184.216.34:80/a?b=1",
         "hooks.example.com", None),
        ("https://hooks.example.com:8443/a", "93.184.216.34",
         "https://93.184.216.34:8443/a", "hooks.example.com:8443", "hooks.example.com"),
        ("https://hooks.example.com/", "2606:2800:220:1::1", "https://[2606:2800:220:1::1]:443/",
         "hooks.example.com", "hooks.example.com"),
        ("http://[2606:2800:220:1::1]:81/h", "2606:2800:220:1::1",
         "http://[2606:2800:220:1::1]:81/h", "[2606:2800:220:1::1]:81", None),
    ],
)  # fmt: skip
def test_a_url_is_pinned_to_an_address_keeping_its_name(
    url: str, address: str, pinned: str, host: str, sni: str | None
) -> None:
    target = pin_to_address(url, address)
    assert (target.url, target.host_header) == (pinned, host)
    assert target.extensions.get("sni_hostname") == sni


class Receiver:
    """A loopback HTTP server that records what each POST carried."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                seen.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": self.rfile.read(length),
                    }
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.server.shutdown()
    running.server.server_close()


def job() -> JobView:
    return JobView(
        id="job_" + "0" * 32, kind="image", state="succeeded", attempts=1, max_attempts=2,
        created_at="2026-12-02T00:00:00Z",
    )  # fmt: skip


async def post(url: str) -> None:
    async with httpx.AsyncClient() as client:
        await deliver(client, url, job(), "s3cret", allow_private=True)


def test_a_delivery_carries_the_urls_host_and_path(receiver: Receiver) -> None:
    asyncio.run(post(f"http://localhost:{receiver.port}/hooks/done?x=1"))
    (request,) = receiver.seen
    assert request["path"] == "/hooks/done?x=1"
    assert request["headers"]["Host"] == f"localhost:{receiver.port}"
    assert request["headers"]["X-Job-Id"] == job().id
    assert request["headers"][SIGNATURE_HEADER].startswith("t=")
    assert request["body"] == job().model_dump_json().encode()


def test_a_name_that_changes_its_answer_after_the_check_is_not_followed(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name answers the checked address once, then an address that
    must never be reached (TEST-NET-1, nothing listens there). The delivery uses the first."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.invalid":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "192.0.2.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    asyncio.run(post(f"http://rebind.invalid:{receiver.port}/hook"))
    assert lookups == ["rebind.invalid"]
    (request,) = receiver.seen
    assert request["headers"]["Host"] == f"rebind.invalid:{receiver.port}"

"""Job webhooks: which URLs may be called, and one signed delivery.

A webhook URL comes from a client, and the server POSTs to it: a way into the server's own
network (SSRF). So a URL must be http(s) with a host, and every address its host resolves
to must be public, unless JOBS_WEBHOOK_ALLOW_PRIVATE=1 (tests, or a receiver on the same
private network on purpose). The check is made at submission (a 422 the client sees) and
again before each delivery (DNS may have changed). A delivery then connects to an address it
checked, not to the name: a name that resolves to a public address for the check and to a
private one for the connection (DNS rebinding) reaches only the checked one. The request keeps
the URL's Host header and, over TLS, its name for SNI and the certificate check. Redirects are
not followed.

The body is the job's JSON (`core.jobs.JobView`), signed with `core.jobs.webhook_signature`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
import urllib.parse
from typing import Any, NamedTuple

import httpx

from core.errors import InvalidInput
from core.jobs import SIGNATURE_HEADER, JobView, webhook_signature

MAX_URL_CHARS = 2048
DELIVERY_TIMEOUT_S = 10.0


class WebhookRefused(Exception):
    """The URL may not be called (the message says why)."""


def _refuse(message: str) -> InvalidInput:
    return InvalidInput(message, fields=[{"field": "webhook_url", "message": message}])


def parse_webhook_url(url: str) -> tuple[str, int]:
    """(host, port) of an acceptable URL's form; 422 otherwise."""
    if len(url) > MAX_URL_CHARS:
        raise _refuse(f"webhook_url is longer than {MAX_URL_CHARS} characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _refuse("webhook_url must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise _refuse("webhook_url must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _refuse("webhook_url has an invalid port") from None
    return parts.hostname, port


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def resolve_checked(url: str, allow_private: bool) -> list[str]:
    """The addresses of the URL's host, every one of which may be called; WebhookRefused
    otherwise (blocking: resolves the name)."""
    host, port = parse_webhook_url(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise WebhookRefused(f"the webhook host '{host}' does not resolve") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise WebhookRefused(f"the webhook host '{host}' does not resolve")
    if allow_private:
        return addresses
    private = sorted(address for address in addresses if not _public(address))
    if private:
        raise WebhookRefused(
            f"the webhook host '{host}' resolves to a non-public address ({private[0]}); "
            "JOBS_WEBHOOK_ALLOW_PRIVATE=1 allows that"
        )
    return addresses


class PinnedTarget(NamedTuple):
    """A webhook request aimed at one checked address with the URL's own name kept."""

    url: str
    host_header: str
    extensions: dict[str, Any]


def pin_to_address(url: str, address: str) -> PinnedTarget:
    """The URL with its host replaced by `address`, plus the Host header and (https) the SNI
    name that keep the request what it was for the receiver."""
    parts = urllib.parse.urlsplit(url)
    host, port = parse_webhook_url(url)
    literal = f"[{address}]" if ":" in address else address
    default_port = 443 if parts.scheme == "https" else 80
    named_host = f"[{host}]" if ":" in host else host
    host_header = named_host if port == default_port else f"{named_host}:{port}"
    pinned = parts._replace(netloc=f"{literal}:{port}")
    extensions: dict[str, Any] = {"sni_hostname": host} if parts.scheme == "https" else {}
    return PinnedTarget(urllib.parse.urlunsplit(pinned), host_header, extensions)


async def check_webhook_url(url: str, allow_private: bool) -> None:
    """422 naming `webhook_url` unless the URL may be called now."""
    parse_webhook_url(url)
    try:
        await asyncio.to_thread(resolve_checked, url, allow_private)
    except WebhookRefused as exc:
        raise _refuse(str(exc)) from None


async def deliver(
    client: httpx.AsyncClient, url: str, job: JobView, secret: str, allow_private: bool
) -> None:
    """POST the signed job to `url`; raise WebhookRefused or httpx.HTTPError on failure
    (a non-2xx answer is a failure too)."""
    addresses = await asyncio.to_thread(resolve_checked, url, allow_private)
    target = pin_to_address(url, addresses[0])
    body = job.model_dump_json().encode()
    headers = {
        "Host": target.host_header,
        "Content-Type": "application/json",
        SIGNATURE_HEADER: webhook_signature(secret, int(time.time()), body),
        "X-Job-Id": job.id,
        # The pool keys connections by address: one made with another name's SNI is not reused.
        "Connection": "close",
    }
    response = await client.post(
        target.url,
        content=body,
        headers=headers,
        extensions=target.extensions,
        timeout=DELIVERY_TIMEOUT_S,
        follow_redirects=False,
    )
    if not 200 <= response.status_code < 300:
        raise httpx.HTTPStatusError(
            f"the receiver answered HTTP {response.status_code}",
            request=response.request,
            response=response,
        )

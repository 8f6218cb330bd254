"""Whether the HTTP API can be reached from other machines, and what that demands of auth.

The address Serve listens on is not one of our settings: it is `http_options.host` of the
Serve config, held by Serve's controller (`ServeController.get_http_config()`; `serve run` /
`serve deploy` start the controller with the config's options before the builder runs, and
every ingress, the Python proxy, HAProxy on the fast path and the replicas' direct-ingress
ports alike, binds that host). So the builder, when it runs where the controller is (a
config's builder runs as a task in the cluster), and every Gateway replica at start ask the
controller.

- A loopback host (127.0.0.0/8, ::1, localhost): the server may run without keys (a warning
  says every route is open).
- Any other host (0.0.0.0, ::, an interface address, a name): keys are required, unless
  AUTH_DISABLED=1 says so on purpose, which logs a warning at every start.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from serve_app.settings import SettingsError

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class HttpBind:
    """Where Serve's HTTP ingress listens (host None: HTTP is off)."""

    host: str | None
    port: int | None = None

    @property
    def loopback(self) -> bool:
        return self.host is None or is_loopback(self.host)

    def __str__(self) -> str:
        if self.host is None:
            return "no HTTP (http_options.host is unset)"
        return f"{self.host}:{self.port}" if self.port is not None else self.host


def is_loopback(host: str) -> bool:
    """Only this machine can connect to `host` (a literal loopback address or localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


def serve_http_bind() -> HttpBind:
    """The HTTP host and port of the running Serve instance, from its controller.

    Raises LookupError when there is no Ray or no Serve controller to ask (a builder called
    before Serve starts, e.g. `serve run module:builder` or a unit test).
    """
    import ray

    if not ray.is_initialized():
        raise LookupError("Ray is not initialised here")
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        raise LookupError("no Serve controller is running")
    options = client.http_config
    return HttpBind(host=options.host, port=options.port)


class AuthRequired(SettingsError):
    """Serving on a non-loopback address without API keys and without AUTH_DISABLED=1."""


def check_auth(bind: HttpBind, *, has_keys: bool, auth_disabled: bool, where: str) -> None:
    """Refuse (AuthRequired) or allow the start; log the warnings an open server deserves.

    `where` names the caller in the log ("builder", "Gateway replica").
    """
    if has_keys:
        return
    if auth_disabled:
        logger.warning(
            "AUTH_DISABLED=1: authentication is off on purpose; every route of this server is "
            "open to anyone who can reach %s (%s)",
            bind,
            where,
        )
        return
    if not bind.loopback:
        raise AuthRequired(
            f"refusing to start without API keys: Serve listens on {bind} (http_options.host), "
            "which is not a loopback address, so anyone who can reach it could use every "
            "route. Set API_KEYS or API_KEYS_FILE, or AUTH_DISABLED=1 to serve without "
            "authentication on purpose (or bind http_options.host to 127.0.0.1)"
        )
    logger.warning(
        "no API keys: every route is open to anyone who can reach %s (loopback only; set "
        "API_KEYS or API_KEYS_FILE before binding another address) (%s)",
        bind,
        where,
    )

"""A Ray of its own whose Serve listens on all interfaces, to see what the server does there.

Run as `python -m tests.support.exposed_serve <port> <storage dir>` from the repository root
(tests/integration/test_api_keys.py does): the test session's own Ray listens on loopback,
and one process joins one Ray only. It deploys, as `serve run <config>` does (the builder
runs in the cluster, after Serve has started with the config's http_options):

- `refused`: no API keys, no AUTH_DISABLED -> the builder refuses, the app DEPLOY_FAILED;
- `backstop`: the Gateway bound without the builder's check -> its replicas refuse to start;
- `open`: AUTH_DISABLED=1 -> RUNNING, a warning in the Gateway replica's log;
- `keyed`: API_KEYS -> RUNNING, 401 without a key.

and prints one JSON line with what it saw (statuses, messages, HTTP answers, log lines).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from serve_app import deploy_configs
from serve_app.gateway import Gateway
from serve_app.settings import load_settings

KEY = "exposed-key-5e2b7d0c"
AUTH_OFF = "AUTH_DISABLED=1: authentication is off on purpose"
WAIT_S = 240.0  # a loaded two-core machine; a Gateway alone starts in seconds


def gateway_without_builder_check(args: dict[str, Any]) -> Any:
    """A builder that binds the Gateway alone and skips the builder's own check, so that the
    Gateway's check at start is what is seen."""
    settings = load_settings(None, args["settings"])
    return Gateway.bind(deploy_configs.gateway_config(settings))


def app_entry(name: str, storage: Path, import_path: str, **settings: Any) -> dict[str, Any]:
    values = {
        "IMAGE_ENABLED": False,
        "IMAGE_SEARCH_ENABLED": False,
        "VOICE_ENABLED": False,
        "LOCAL_STORAGE_DIR": str(storage / name),
        **settings,
    }
    return {
        "name": name,
        "route_prefix": f"/{name}",
        "import_path": import_path,
        "args": {"env_files": [], "settings": values},
        "deployments": [{"name": "Gateway", "max_constructor_retry_count": 2}],
    }


def wait_for(app: str, states: set[str]) -> tuple[str, str]:
    """The app's status once it is one of `states`, with its and its deployments' messages."""
    deadline = time.monotonic() + WAIT_S
    status, message = "NOT_STARTED", ""
    while time.monotonic() < deadline:
        found = serve.status().applications.get(app)
        if found is not None:
            status = str(getattr(found.status, "value", found.status))
            messages = [found.message or ""] + [
                deployment.message or "" for deployment in found.deployments.values()
            ]
            message = "\n".join(text for text in messages if text)
            if status in states:
                break
        time.sleep(1)
    return status, message


def serve_log_lines(containing: str) -> list[str]:
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    lines = []
    for path in sorted(logs.glob("*.log")):
        lines += [
            line for line in path.read_text(errors="replace").splitlines() if containing in line
        ]
    return lines


def main(port: int, storage: Path) -> dict[str, Any]:
    client = _get_global_client()
    seen: dict[str, Any] = {"http_host": client.http_config.host}
    entries = {
        "refused": app_entry("refused", storage, "serve_app.app:build_app"),
        "backstop": app_entry(
            "backstop", storage, "tests.support.exposed_serve:gateway_without_builder_check"
        ),
        "open": app_entry("open", storage, "serve_app.app:build_app", AUTH_DISABLED=True),
        "keyed": app_entry("keyed", storage, "serve_app.app:build_app", API_KEYS=KEY),
    }
    client.deploy_apps(
        ServeDeploySchema.model_validate({"applications": list(entries.values())}),
        _blocking=False,
    )
    for name in entries:
        status, message = wait_for(name, {"RUNNING", "DEPLOY_FAILED"})
        seen[name] = {"status": status, "message": message}
    base = f"http://127.0.0.1:{port}"
    seen["open"]["healthz"] = httpx.get(f"{base}/open/healthz", timeout=30).status_code
    seen["keyed"]["without_key"] = httpx.get(f"{base}/keyed/openapi.json", timeout=30).status_code
    seen["keyed"]["with_key"] = httpx.get(
        f"{base}/keyed/openapi.json", headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    ).status_code
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not serve_log_lines(AUTH_OFF):
        time.sleep(1)
    seen["warnings"] = serve_log_lines(AUTH_OFF)
    seen["refusals"] = serve_log_lines("refusing to start without API keys")
    return seen


if __name__ == "__main__":
    http_port, storage_dir = int(sys.argv[1]), Path(sys.argv[2])
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=128 * 1024**2,
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": "0.0.0.0", "port": http_port})
        result = main(http_port, storage_dir)
    finally:
        serve.shutdown()
        ray.shutdown()
    sys.stdout.write(json.dumps(result) + "\n")

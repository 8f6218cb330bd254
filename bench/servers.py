"""Starting and stopping what the benchmarks measure: server processes (started from the
repository root, stopped with SIGTERM then SIGKILL), waiting for a URL to answer 200, and a
local Ray + Serve of this process's own on a loopback port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.env import REPO, child_environment
from bench.machine import free_port


def wait_http_ok(
    url: str,
    timeout_s: float,
    process: subprocess.Popen[bytes] | None = None,
    poll_s: float = 0.2,
    log_path: Path | None = None,
) -> float:
    """Poll `url` until it answers 200; return the perf_counter time it did.

    If `process` exits first, the error quotes the end of its log (`log_path`), which the
    scratch directory takes with it at the end of the run.
    """
    import httpx

    deadline = time.perf_counter() + timeout_s
    last = "no answer"
    while time.perf_counter() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"server process exited with {process.returncode} ({url})" + log_tail(log_path)
            )
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return time.perf_counter()
            last = f"{response.status_code}: {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}"
        time.sleep(poll_s)
    raise TimeoutError(f"{url} not ready after {timeout_s}s: {last}")


def log_tail(log_path: Path | None, chars: int = 3000) -> str:
    """The last `chars` of a log, as lines to append to an error ("" without a log)."""
    if log_path is None or not log_path.is_file():
        return ""
    text = log_path.read_bytes()[-chars:].decode(errors="replace")
    return f"; the end of {log_path.name}:\n{text}"


@contextmanager
def subprocess_server(
    args: list[str], log_path: Path, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `python <args>` from the repository root; SIGTERM (then SIGKILL) it at the end."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env=child_environment(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 40) -> None:
    """SIGTERM `process`; SIGKILL its process group if it has not exited after `timeout_s`."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: only what it started
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


class LocalServe:
    """A Ray instance of our own (`address="local"`) with Serve's proxy on a loopback port."""

    def __init__(self, num_cpus: int = 8) -> None:
        self.num_cpus = num_cpus
        self.port = 0
        self.url = ""
        self.started = False

    def start(self) -> LocalServe:
        if self.started:
            return self
        import ray
        from ray import serve

        self.port = free_port()
        ray.init(
            address="local",
            num_cpus=self.num_cpus,  # logical CPUs for placement; the machine has what it has
            include_dashboard=False,
            object_store_memory=256 * 1024**2,
            configure_logging=False,
            log_to_driver=False,
        )
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = True
        return self

    def deploy(
        self, name: str, route_prefix: str, settings: dict[str, Any], timeout_s: float = 600
    ) -> str:
        """Deploy our application with `settings` (no env files) and wait for /readyz 200."""
        from ray import serve

        from serve_app.app import build_app

        self.start()
        app = build_app({"env_files": [], "settings": settings})
        serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
        url = self.url + route_prefix.rstrip("/")
        wait_http_ok(f"{url}/readyz", timeout_s)
        return url

    def delete(self, name: str) -> None:
        from ray import serve

        serve.delete(name, _blocking=True)

    def shutdown(self) -> None:
        if not self.started:
            return
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self.started = False


def wait_project_filled(
    url: str,
    project: str,
    count: int,
    timeout_s: float,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Poll a graph's listing of `project` until it holds `count` images (a filled graph
    in another process: `bench.serve_child --fill`)."""
    import httpx

    deadline = time.perf_counter() + timeout_s
    last = "no answer"
    while time.perf_counter() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"server process exited with {process.returncode} ({url})" + log_tail(log_path)
            )
        try:
            response = httpx.get(
                f"{url}/v1/projects/{project}/images", params={"limit": 1}, timeout=5
            )
            if response.status_code == 200 and response.json()["total"] == count:
                return
            last = f"{response.status_code}: {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}"
        time.sleep(0.5)
    raise TimeoutError(f"project {project!r} at {url} not filled after {timeout_s}s: {last}")

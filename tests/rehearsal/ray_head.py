"""A Ray head started with the `ray` CLI, and the `serve` CLI pointed at it.

`RayHead.start` runs `ray start --head --block` in a working directory (where the cluster's
processes, and so the app builder, find `.env`), with a temp dir and every port of its own,
in a session of its own. `stop` ends exactly the processes that head started (its process
tree, by pid): never `ray stop`, which would end every Ray on the machine, other people's
clusters included. `serve(...)` runs the `serve` CLI against this head only.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from tests.support.ports import free_port, port_in_use

START_TIMEOUT_S = 180
STOP_TIMEOUT_S = 60
PORT_RELEASE_TIMEOUT_S = 120
CLI_TIMEOUT_S = 180


@dataclass
class RayHead:
    """One single-node cluster: `ray start --head --block` and what it started."""

    workdir: Path
    env: dict[str, str]  # the environment of `ray start` (and so of every worker)
    num_cpus: int = 8
    num_gpus: int = 1
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rh-")))
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _tree: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """The GCS address `serve run` and drivers connect to."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard (and Serve REST API) address `serve deploy/status` talk to."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def command(self) -> list[str]:
        """`ray start` for a head with one logical GPU and every port chosen here (Ray's fixed
        defaults, 8265, 52365, 10001, ..., may be taken by other clusters on this machine)."""
        ports = {
            "--port": self.gcs_port,
            "--dashboard-port": self.dashboard_port,
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--metrics-export-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--ray-client-server-port": free_port(),
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
        }
        return [
            "ray",
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            "--num-gpus",
            str(self.num_gpus),
            "--num-cpus",
            str(self.num_cpus),
            "--node-ip-address",
            "127.0.0.1",
            "--dashboard-host",
            "127.0.0.1",
            "--include-dashboard",
            "true",
            "--object-store-memory",
            str(512 * 1024**2),
            "--temp-dir",
            str(self.temp_dir),
            *(item for flag, port in ports.items() for item in (flag, str(port))),
        ]

    def start(self) -> None:
        """Start the head and wait until its dashboard's Serve API answers."""
        self.log_path = self.workdir.parent / "ray-start.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self._remember_tree()
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited {self.process.returncode}:\n{self.log()}")
            try:
                if (
                    httpx.get(
                        f"{self.dashboard_url}/api/serve/applications/", timeout=5
                    ).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"the Ray head did not come up in {START_TIMEOUT_S} s:\n{self.log()}")

    def cli_env(self) -> dict[str, str]:
        """The environment of the `ray`/`serve` CLI: this head's addresses, no auth token."""
        return {
            **self.env,
            "RAY_ADDRESS": self.address,
            "RAY_DASHBOARD_ADDRESS": self.dashboard_url,
        }

    def serve(
        self, *args: str, timeout_s: float = CLI_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run `serve <args>` in the working directory against this head."""
        self._remember_tree()
        return subprocess.run(
            ["serve", *args],
            cwd=self.workdir,
            env=self.cli_env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def popen_serve(self, *args: str, log_path: Path) -> subprocess.Popen[bytes]:
        """Start `serve <args>` (e.g. `run serve_config.yaml`) in the background."""
        with open(log_path, "wb") as log:
            return subprocess.Popen(
                ["serve", *args],
                cwd=self.workdir,
                env=self.cli_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self, limit: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-limit:] if self.log_path else ""

    def session_logs(self, pattern: str, limit: int = 3000) -> str:
        """The tails of this head's log files matching `pattern` (e.g. "serve/*.log")."""
        logs = self.temp_dir / "session_latest" / "logs"
        parts = []
        for path in sorted(logs.glob(pattern)):
            text = path.read_text(errors="replace")
            if text.strip():
                parts.append(f"--- {path.name}\n{text[-limit:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM `ray start --block` (it stops its node's processes), then whatever of its
        process tree is left, by pid; wait until its ports are free."""
        if self.process is None:
            return
        self._remember_tree()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _end(list(self._tree.values()))
        deadline = time.monotonic() + PORT_RELEASE_TIMEOUT_S
        while time.monotonic() < deadline and any(
            port_in_use(p) for p in (self.gcs_port, self.dashboard_port)
        ):
            time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.process = None

    def _remember_tree(self) -> None:
        """Add the head's current descendants (gcs, raylet, dashboard, workers, ...) to the
        processes `stop` ends; workers are the raylet's children, whatever session they set."""
        if self.process is None:
            return
        try:
            root = psutil.Process(self.process.pid)
            for child in root.children(recursive=True):
                self._tree.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass


def _end(processes: list[psutil.Process]) -> None:
    """SIGTERM each process still running, wait, then SIGKILL what is left. psutil refuses
    to signal a pid that was reused by another process since it was recorded."""
    alive = []
    for process in processes:
        try:
            process.terminate()
            alive.append(process)
        except psutil.NoSuchProcess:
            continue
    _, left = psutil.wait_procs(alive, timeout=20)
    for process in left:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(left, timeout=10)


def without(env: dict[str, str], names: set[str]) -> dict[str, str]:
    """`env` without the variables in `names` (case-insensitive) or starting with RAY_ADDRESS."""
    lowered = {name.lower() for name in names}
    return {
        k: v for k, v in env.items() if k.lower() not in lowered and not k.startswith("RAY_ADDRESS")
    }

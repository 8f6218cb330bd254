"""A simulated two-node Ray cluster, run by a child process of its own.

A process connects to one Ray at a time, and the test session's process stays connected to
the single-node Ray of tests/integration/conftest.py (`local_ray`). So the cluster's driver
is a separate process (multiprocessing, spawn): it starts `ray.cluster_utils.Cluster` (a head
holding the custom resource `head`, and a model node holding `gpu_node`), connects, starts
Serve, deploys the app, and then does what the test asks over a pipe: report where replicas
run, remove the model node (a crash), add a new one, shut everything down. HTTP traffic goes
from the test to the cluster's proxy on loopback as usual.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

MODEL_NODE = {"num_cpus": 2, "resources": {"gpu_node": 1}, "object_store_memory": 96 * 1024**2}
START_TIMEOUT_S = 600  # three tries of a raylet start (30 s each) and the model loads
COMMAND_TIMEOUT_S = 300


@dataclass(frozen=True)
class ClusterSpec:
    """What the child needs: ports, the app's settings and Serve's proxy timeout."""

    dashboard_port: int
    http_port: int
    proxy_timeout_s: float
    settings: dict[str, Any]


class ClusterError(RuntimeError):
    """The cluster's process failed to do what was asked (its traceback is the message)."""


class ClusterProcess:
    """The test's side: start the child, send it commands, stop it."""

    def __init__(self, spec: ClusterSpec) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=_run, args=(child_conn, spec), name="ray-cluster", daemon=False
        )
        self._process.start()
        child_conn.close()
        started = self._receive(START_TIMEOUT_S)
        self.head_node_id: str = started["head"]
        self.worker_node_id: str = started["worker"]

    def _receive(self, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._conn.poll(1):
                status, value = self._conn.recv()
                if status == "error":
                    raise ClusterError(value)
                return value
            if not self._process.is_alive():
                raise ClusterError(f"the cluster process exited ({self._process.exitcode})")
        raise ClusterError(f"no answer from the cluster process in {timeout_s:.0f} s")

    def call(self, command: str, timeout_s: float = COMMAND_TIMEOUT_S) -> Any:
        self._conn.send(command)
        return self._receive(timeout_s)

    def replica_nodes(self) -> dict[str, set[str]]:
        """Deployment name -> ids of the nodes its live replicas run on."""
        return {name: set(nodes) for name, nodes in self.call("replica_nodes").items()}

    def remove_model_node(self) -> None:
        """Kill the model node's processes at once, like a crash."""
        self.call("remove_model_node")

    def add_model_node(self) -> str:
        """Start a new model node (after the last one was removed); its id."""
        self.worker_node_id = self.call("add_model_node")
        return self.worker_node_id

    def has_model_node(self) -> bool:
        return bool(self.call("has_model_node"))

    def close(self) -> None:
        """Shut Serve, Ray and the cluster down, and wait for the process to end."""
        try:
            if self._process.is_alive():
                self._conn.send("shutdown")
        except OSError:
            pass
        self._process.join(timeout=180)
        if self._process.is_alive():
            self._process.kill()  # its nodes' reapers take Ray's processes down with it
            self._process.join(timeout=30)
        self._conn.close()


# --- the child --------------------------------------------------------------------------------


def _start_cluster(dashboard_port: int, attempts: int = 3) -> tuple[Any, Any]:
    """Head + model node. Ray gives a raylet 30 s to register; on a machine loaded by other
    work that can run out, so a start that timed out is torn down and tried again."""
    from ray.cluster_utils import Cluster

    for attempt in range(1, attempts + 1):
        cluster = None
        try:
            cluster = Cluster(
                initialize_head=True,
                head_node_args={
                    "num_cpus": 2,
                    "resources": {"head": 1},
                    "include_dashboard": True,  # the state API (list_actors) is served by it
                    "dashboard_host": "127.0.0.1",
                    "dashboard_port": dashboard_port,
                    "object_store_memory": 128 * 1024**2,
                },
            )
            return cluster, cluster.add_node(**MODEL_NODE)
        except Exception as exc:  # Ray raises a bare Exception for this
            if cluster is not None:
                cluster.shutdown()
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _run(conn: Connection, spec: ClusterSpec) -> None:
    os.environ.pop("RAY_ADDRESS", None)  # never attach to the test session's Ray
    import ray
    from ray import serve
    from ray.util.state import list_actors

    from serve_app.app import build_app

    cluster = None
    try:
        cluster, worker = _start_cluster(spec.dashboard_port)
        ray.init(address=cluster.address, configure_logging=False)
        serve.start(
            proxy_location="HeadOnly",  # the nodes share 127.0.0.1
            http_options={
                "host": "127.0.0.1",
                "port": spec.http_port,
                "request_timeout_s": spec.proxy_timeout_s,
            },
        )
        serve.run(
            build_app({"env_files": [], "settings": spec.settings}), name="ai", route_prefix="/"
        )
        conn.send(("ok", {"head": cluster.head_node.node_id, "worker": worker.node_id}))

        def replica_nodes() -> dict[str, list[str]]:
            actors = list_actors(
                address=f"http://127.0.0.1:{spec.dashboard_port}",
                filters=[("state", "=", "ALIVE")],
                detail=True,
                raise_on_missing_output=False,
            )
            nodes: dict[str, set[str]] = {}
            for actor in actors:
                if actor.class_name.startswith("ServeReplica:ai:"):
                    nodes.setdefault(actor.class_name.rsplit(":", 1)[1], set()).add(actor.node_id)
            return {name: sorted(ids) for name, ids in nodes.items()}

        while True:
            command = conn.recv()
            if command == "shutdown":
                break
            try:
                if command == "replica_nodes":
                    answer: Any = replica_nodes()
                elif command == "remove_model_node":
                    if worker is not None:
                        cluster.remove_node(worker, allow_graceful=False)
                        worker = None
                    answer = None
                elif command == "add_model_node":
                    if worker is not None:
                        raise ValueError("the model node is still there")
                    worker = cluster.add_node(**MODEL_NODE)
                    answer = worker.node_id
                elif command == "has_model_node":
                    answer = worker is not None
                else:
                    raise ValueError(f"unknown command {command!r}")
                conn.send(("ok", answer))
            except Exception:  # noqa: BLE001 - reported to the test, which fails with it
                conn.send(("error", traceback.format_exc()))
    except Exception:  # noqa: BLE001 - reported to the test, which fails with it
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        if cluster is not None:
            cluster.shutdown()

"""Shared pieces of the reliability drills (tests/integration/test_drill_*.py).

- `drill_report`: a session fixture that appends one JSON line per drill to
  `$RELIABILITY_REPORT` (or `<pytest tmp>/reliability.jsonl`); `bench/reliability_table.py`
  turns the file into the table of docs/reliability.md.
- Replica faults: the pid of a Serve replica, SIGKILL, waiting for Serve's replacement.
- Reconciliation: every object under a project's prefix has its row in the VectorIndex, and
  every row its object.

Every loop here is bounded in count and time; traffic only goes to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve

from tests.integration.conftest import SearchApp, wait_until_ready
from tests.support.fake_openai import FakeOpenAIServer

REPORT_ENV = "RELIABILITY_REPORT"
SEARCH_PREFIX = "AI/SEARCH/"


# --- the report ---------------------------------------------------------------------------------


@dataclass
class DrillReport:
    """Appends drill results, one JSON object per line (later rows of a drill win)."""

    path: Path

    def add(
        self,
        *,
        drill: str,
        injected: str,
        sent: int,
        acknowledged: int,
        lost: int,
        orphans: int | None,
        recovery_s: float | None,
        notes: str = "",
    ) -> None:
        row = {
            "drill": drill,
            "injected": injected,
            "sent": sent,
            "acknowledged": acknowledged,
            "lost": lost,
            "orphans": orphans,
            "recovery_s": None if recovery_s is None else round(recovery_s, 2),
            "notes": notes,
            "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"\nreliability drill: {json.dumps(row, ensure_ascii=False)}")  # noqa: T201 - shown with -s


@pytest.fixture(scope="session")
def drill_report(tmp_path_factory: pytest.TempPathFactory) -> DrillReport:
    """Where the drills write their numbers: $RELIABILITY_REPORT, else the session tmp dir."""
    configured = os.environ.get(REPORT_ENV)
    path = Path(configured) if configured else tmp_path_factory.getbasetemp() / "reliability.jsonl"
    return DrillReport(path)


@dataclass
class Timer:
    """Seconds since it was made."""

    started: float = field(default_factory=time.monotonic)

    def __call__(self) -> float:
        return time.monotonic() - self.started


def summary(values: Iterable[float]) -> str:
    """'p50 x s, max y s' of some durations (or 'none')."""
    values = sorted(values)
    if not values:
        return "none"
    return f"p50 {statistics.median(values):.2f} s, max {values[-1]:.2f} s"


def restart_fake_openai(server: FakeOpenAIServer, port: int) -> None:
    """Start a stopped FakeOpenAIServer again on the port the app was configured with."""
    server._port = port  # start() binds `_port`; 0 (a fresh port) by default
    server.start()


# --- replicas -----------------------------------------------------------------------------------


def replica_names(app_name: str, deployment: str) -> set[str]:
    """Named actors of the deployment's replicas (Serve names them SERVE_REPLICA::app#dep#id)."""
    prefix = f"SERVE_REPLICA::{app_name}#{deployment}#"
    return {
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(prefix)
    }


def replica_pid(actor_name: str) -> int:
    """The OS process of a replica actor (asked from inside the actor: no dashboard needed)."""
    actor = ray.get_actor(actor_name, namespace="serve")
    return int(ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()), timeout=30))


def sigkill_replica(app_name: str, deployment: str) -> str:
    """SIGKILL the deployment's only replica process; returns the dead actor's name."""
    (name,) = replica_names(app_name, deployment)
    os.kill(replica_pid(name), signal.SIGKILL)
    return name


def deployment_status(app_name: str, deployment: str) -> str:
    app = serve.status().applications.get(app_name)
    if app is None or deployment not in app.deployments:
        return "NOT_DEPLOYED"
    status = app.deployments[deployment].status
    return str(getattr(status, "value", status))


def wait_replaced(app_name: str, deployment: str, dead: str, timeout_s: float = 180) -> None:
    """Wait until Serve runs a replacement for the replica `dead` and reports it HEALTHY."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fresh = replica_names(app_name, deployment) - {dead}
        if fresh and deployment_status(app_name, deployment) == "HEALTHY":
            return
        time.sleep(0.25)
    raise AssertionError(f"{app_name}/{deployment}: no healthy replacement after {timeout_s}s")


def replica_log_files(app_name: str, deployment: str) -> list[Path]:
    """This Ray session's Serve log files of the deployment's replicas (dead ones included)."""
    from ray._private import worker

    logs = Path(worker._global_node.get_logs_dir_path()) / "serve"
    return sorted(logs.glob(f"replica_{app_name}_{deployment}_*.log"))


def wait_for_log(app_name: str, deployment: str, needle: str, timeout_s: float = 60) -> str:
    """The first line of the deployment's replica logs containing `needle` (waits a little
    for the file handler)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in replica_log_files(app_name, deployment):
            for line in path.read_text(errors="replace").splitlines():
                if needle in line:
                    return line
        time.sleep(0.5)
    raise AssertionError(f"no log line with {needle!r} in {app_name}/{deployment} replica logs")


# --- the search app's bucket and catalog -------------------------------------------------------


def index_handle(app: SearchApp) -> Any:
    return serve.get_deployment_handle("VectorIndex", app_name=app.app_name)


def rows_of(app: SearchApp, project_id: str) -> dict[str, str]:
    """Live rows of a project: image id -> object key (read through the VectorIndex)."""
    index = index_handle(app)
    rows: dict[str, str] = {}
    cursor = None
    for _ in range(100):  # 200 rows a page: far more than any drill writes
        page = index.list.remote(project_id, 200, cursor).result(timeout_s=60)
        rows.update({record.id: record.object_key for record in page.items})
        cursor = page.next_cursor
        if not cursor:
            break
    return rows


@dataclass(frozen=True)
class Reconciliation:
    """Objects without a row and rows without an object, over some projects."""

    objects_without_rows: frozenset[str]
    rows_without_objects: frozenset[str]

    @property
    def orphans(self) -> int:
        return len(self.objects_without_rows) + len(self.rows_without_objects)


def reconcile(app: SearchApp, project_ids: Iterable[str]) -> Reconciliation:
    """Compare the bucket under each project's prefix with the project's rows."""
    objects: set[str] = set()
    rows: set[str] = set()
    for project_id in project_ids:
        objects |= app.object_keys(f"{SEARCH_PREFIX}{project_id}/")
        rows |= set(rows_of(app, project_id).values())
    return Reconciliation(frozenset(objects - rows), frozenset(rows - objects))


def reconcile_all(app: SearchApp) -> Reconciliation:
    """`reconcile` over every project the catalog or the bucket knows."""
    projects = set(index_handle(app).stats.remote().result(timeout_s=60))
    keys = app.object_keys(SEARCH_PREFIX)
    projects |= {key[len(SEARCH_PREFIX) :].split("/", 1)[0] for key in keys}
    return reconcile(app, sorted(projects))


def listed_ids(app: SearchApp, project_id: str) -> set[str]:
    """Image ids the HTTP list route shows for a project (empty for an unknown one)."""
    response = httpx.get(
        f"{app.url}/v1/projects/{project_id}/images", params={"limit": 200}, timeout=30
    )
    if response.status_code == 404:
        return set()
    assert response.status_code == 200, response.text
    return {item["id"] for item in response.json()["items"]}


def top_hit(app: SearchApp, project_id: str, data: bytes) -> str | None:
    """The id of the best match when searching the project by these image bytes."""
    response = httpx.post(
        f"{app.url}/v1/projects/{project_id}/images/search/by-image",
        params={"limit": 1},
        files={"file": ("query.png", data)},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    return results[0]["id"] if results else None


def lost_uploads(app: SearchApp, acknowledged: dict[str, tuple[str, bytes]]) -> list[str]:
    """Acknowledged uploads (id -> (project, bytes)) that are not listed, or are not their own
    top hit when searched by their bytes."""
    listed: dict[str, set[str]] = {}
    lost = []
    for image_id, (project_id, data) in acknowledged.items():
        if project_id not in listed:
            listed[project_id] = listed_ids(app, project_id)
        if image_id not in listed[project_id] or top_hit(app, project_id, data) != image_id:
            lost.append(image_id)
    return lost


def wait_ready(url: str, timeout_s: float = 180) -> float:
    """Seconds until /readyz answers 200."""
    timer = Timer()
    wait_until_ready(url, timeout_s)
    return timer()


def refusal_codes(responses: Iterable[httpx.Response | Exception]) -> str:
    """'503 model_not_ready x3, 503 storage_unavailable x1' (exceptions by type name)."""
    counts: Counter[str] = Counter()
    for response in responses:
        if isinstance(response, httpx.Response):
            try:
                code = response.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = "no JSON error"
            counts[f"{response.status_code} {code}"] += 1
        else:
            counts[type(response).__name__] += 1
    return ", ".join(f"{name} x{n}" for name, n in sorted(counts.items())) or "none"


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The `error` object of a JSON error response (fails when the body is not one)."""
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(
            f"{response.status_code} without a JSON body: {response.text[:200]!r}"
        ) from None
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    assert body["error"].get("message"), body
    return body["error"]

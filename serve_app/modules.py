"""The server's modules, the variables that enable them, and their readiness.

A module is ready when every deployment it owns is running its model. The state comes from
Serve's own deployment status (the same one the Ray dashboard shows): a model loads in its
replica's constructor, so a deployment still starting is "loading" and one whose constructor
kept failing is "failed" with Serve's message as the reason. A deployment being updated
while replicas of it still run (a rolling update: `serve deploy` of a changed config) is
ready: Serve routes to the running replicas until their replacements have loaded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import NamedTuple

from core.errors import ModelNotReady, ModuleDisabled
from serve_app.schemas import ComponentStatus

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ModuleSpec:
    """A switchable feature: its enabling variable and the deployments it needs."""

    name: str
    enabled_by: str
    deployments: tuple[str, ...]
    implemented: bool = True


IMAGE = ModuleSpec("image", "IMAGE_ENABLED", ("PromptOptimizer", "ImageGenerator"))
IMAGE_SEARCH = ModuleSpec("image_search", "IMAGE_SEARCH_ENABLED", ("ClipEmbedder", "VectorIndex"))
VOICE = ModuleSpec("voice", "VOICE_ENABLED", ("VoiceCloner",))
JOBS = ModuleSpec("jobs", "JOBS_ENABLED", ("JobRunner",))
MODULES: tuple[ModuleSpec, ...] = (IMAGE, IMAGE_SEARCH, VOICE, JOBS)
# Reading and deleting what the image index holds needs the VectorIndex only: it keeps
# answering while the CLIP model is away (e.g. its GPU node was lost).
IMAGE_CATALOG = ModuleSpec("image_search", "IMAGE_SEARCH_ENABLED", ("VectorIndex",))


class DeploymentState(NamedTuple):
    """What Serve says of one deployment: its status, message and RUNNING replica count."""

    status: str
    message: str
    running: int = 0


_READY = {"HEALTHY", "UPSCALING", "DOWNSCALING"}
_LOADING = {"UPDATING"}


def module_state(
    spec: ModuleSpec, enabled: bool, deployment_states: dict[str, DeploymentState]
) -> ComponentStatus:
    """Fold the Serve status of a module's deployments into one module state."""
    if not enabled:
        return ComponentStatus(state="disabled", enabled_by=spec.enabled_by)
    if not spec.implemented:
        return ComponentStatus(
            state="failed",
            enabled_by=spec.enabled_by,
            reason=f"the {spec.name} module is not available in this version; "
            f"set {spec.enabled_by}=0",
        )
    shown: dict[str, str] = {}
    failures: list[str] = []
    loading = False
    for name in spec.deployments:
        status, message, running = deployment_states.get(
            name, DeploymentState("NOT_DEPLOYED", "deployment not found")
        )
        shown[name] = status
        if status in _READY or (status in _LOADING and running > 0):
            continue
        if status in _LOADING:
            loading = True
        else:
            failures.append(f"{name}: {status.lower()}: {_first_line(message)}")
    if failures:
        return ComponentStatus(
            state="failed",
            enabled_by=spec.enabled_by,
            reason="; ".join(failures),
            deployments=shown,
        )
    if loading:
        return ComponentStatus(
            state="loading",
            enabled_by=spec.enabled_by,
            reason="model is loading",
            deployments=shown,
        )
    return ComponentStatus(state="ready", enabled_by=spec.enabled_by, deployments=shown)


def _not_ready(spec: ModuleSpec, state: ComponentStatus) -> ModelNotReady:
    return ModelNotReady(
        f"the {spec.name} module is {state.state}: {state.reason}",
        module=spec.name,
        headers={"Retry-After": "5"} if state.state == "loading" else None,
    )


def _first_line(message: str, limit: int = 500) -> str:
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    # Serve's failure messages end with the exception line, which names the cause.
    text = lines[-1] if lines else "no details"
    return text[:limit]


class ModuleBoard:
    """Caches module states read from Serve for a moment, so routes can check cheaply.

    Reading Serve's status takes tens of milliseconds, so once the cache is `ttl_s` old it
    is refreshed in the background while routes go on with the states they have (they used
    to wait for the read, every request arriving meanwhile with them); only the first read,
    and a `fresh` one, wait for Serve. A refusal never rests on a stale state: a module the
    cache says is not ready is read again first when the cache is older than `ttl_s` (with
    several Gateway replicas, the one a request reaches may not have read Serve's status
    since the models were loading, minutes ago, though /readyz answered 200 from another).
    """

    def __init__(self, app_name: str, enabled: dict[str, bool], ttl_s: float = 1.0):
        self._app_name = app_name
        self._enabled = enabled
        self._ttl_s = ttl_s
        self._states: dict[str, ComponentStatus] = {}
        self._deployment_states: dict[str, DeploymentState] = {}
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()
        self._refresh: asyncio.Task[None] | None = None

    @property
    def app_name(self) -> str:
        """The Serve application whose deployments this board reads."""
        return self._app_name

    async def states(self, fresh: bool = False) -> dict[str, ComponentStatus]:
        """Every module's state; read from Serve first when asked `fresh` or never read."""
        if fresh or not self._states:
            await self._read_if_older_than(0.0 if fresh else float("inf"))
        elif self._age_s() > self._ttl_s and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.get_running_loop().create_task(self._refresh_quietly())
        return dict(self._states)

    def _age_s(self) -> float:
        return time.monotonic() - self._read_at

    async def _read_if_older_than(self, max_age_s: float) -> None:
        # Callers queued on the lock behind a read skip their own when it is recent enough.
        async with self._lock:
            if not self._states or self._age_s() > max_age_s:
                self._keep(await asyncio.to_thread(self._read_serve_status))

    async def _refresh_quietly(self) -> None:
        # Unless another read is recent; a failure is logged and the cached states stand.
        try:
            await self._read_if_older_than(self._ttl_s)
        except Exception as exc:  # noqa: BLE001 - the next request tries again
            logger.warning("cannot read Serve's status: %s", exc)

    async def read_now(self) -> dict[str, ComponentStatus]:
        """Every module's state, read from Serve now without taking the lock the routes wait
        on (for /readyz, which caches its own answer); the routes' cache is refreshed too."""
        self._keep(await asyncio.to_thread(self._read_serve_status))
        return dict(self._states)

    def _keep(self, deployment_states: dict[str, DeploymentState]) -> None:
        # On the event loop, between awaits: a reader sees the old states or the new ones.
        self._deployment_states = deployment_states
        self._states = {
            spec.name: module_state(spec, self._enabled.get(spec.name, False), deployment_states)
            for spec in MODULES
        }
        self._read_at = time.monotonic()

    async def require_ready(self, spec: ModuleSpec) -> None:
        """Raise the right 503 unless the module is enabled and the deployments `spec` names
        (all of the module's, or a part such as IMAGE_CATALOG) are running."""
        if not self._enabled.get(spec.name, False):
            raise ModuleDisabled(
                f"the {spec.name} module is disabled; set {spec.enabled_by}=1 to enable it",
                module=spec.name,
                enabled_by=spec.enabled_by,
            )
        await self.states()
        state = module_state(spec, True, self._deployment_states)
        if state.state != "ready" and self._age_s() > self._ttl_s:
            await self._refresh_quietly()  # refuse on a recent state only
            state = module_state(spec, True, self._deployment_states)
        if state.state != "ready":
            raise _not_ready(spec, state)

    async def watch(self, spec: ModuleSpec, poll_s: float = 1.0) -> None:
        """Wait while `spec`'s deployments are up; raise its 503 once one of them has failed.

        `await_deployment(..., watch=board.watch(MODULE))` races this against a model call.
        When a replica is lost, Serve keeps the request waiting for a replacement, which does
        not come while its node is gone (a lost GPU node): the call would wait out the whole
        REQUEST_TIMEOUT_SECONDS. Only "failed" ends the wait, not "loading": during a rolling
        update the old replicas still answer.
        """
        while True:
            await asyncio.sleep(poll_s)
            try:
                await self.states()
            except Exception as exc:  # noqa: BLE001 - the call's own timeout still holds
                logger.warning("cannot read the Serve status of %s: %s", spec.name, exc)
                continue
            state = module_state(spec, True, self._deployment_states)
            if state.state == "failed":
                raise _not_ready(spec, state)

    def _read_serve_status(self) -> dict[str, DeploymentState]:
        from ray import serve

        app = serve.status().applications.get(self._app_name)
        if app is None:
            return {}
        return {
            name: DeploymentState(
                str(getattr(dep.status, "value", dep.status)),
                dep.message or "",
                sum(
                    count
                    for state, count in (dep.replica_states or {}).items()
                    if str(getattr(state, "value", state)) == "RUNNING"
                ),
            )
            for name, dep in app.deployments.items()
        }

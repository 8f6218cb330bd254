"""Gateway: the Serve ingress. Validation, storage I/O and encoding happen here, on CPU."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from core.cpu_priority import yield_cpu
from core.storage import make_object_store
from serve_app.exposure import AuthRequired, HttpBind, check_auth, serve_http_bind
from serve_app.http_app import create_http_app
from serve_app.modules import ModuleBoard
from serve_app.services import GatewayConfig, Services


@serve.deployment(
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 0.1},
)
@serve.ingress()
class Gateway:
    """HTTP front door of the graph; holds handles to the enabled model deployments."""

    def __init__(
        self,
        config: GatewayConfig,
        prompt_optimizer: DeploymentHandle | None = None,
        image_generator: DeploymentHandle | None = None,
        clip_embedder: DeploymentHandle | None = None,
        vector_index: DeploymentHandle | None = None,
        voice_cloner: DeploymentHandle | None = None,
        job_runner: DeploymentHandle | None = None,
    ):
        app_name = serve.get_replica_context().app_name
        require_auth_where_exposed(config)
        yield_cpu(config.cpu_nice)
        self._services = Services(
            config=config,
            store=make_object_store(config.storage),
            board=ModuleBoard(app_name, config.enabled),
            prompt_optimizer=prompt_optimizer,
            image_generator=image_generator,
            clip_embedder=clip_embedder,
            vector_index=vector_index,
            voice_cloner=voice_cloner,
            job_runner=job_runner,
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_http_app(self._services)

    def describe(self) -> dict[str, Any]:
        """Which modules are enabled and which storage backend is used (no secrets)."""
        return {"enabled": self._services.config.enabled, "storage": self._services.store.kind}


def require_auth_where_exposed(config: GatewayConfig) -> None:
    """Refuse to start (the deployment fails with the message) when Serve listens on a
    non-loopback address and there are no API keys, unless AUTH_DISABLED=1. The builder
    checks the same when it can ask Serve; this holds whichever way the app was built."""
    if config.api_keys:
        return
    try:
        bind = serve_http_bind()
    except Exception as exc:  # noqa: BLE001 - fail closed: no keys where we cannot tell
        if not config.auth_disabled:
            raise AuthRequired(
                "refusing to start without API keys: cannot tell which address Serve listens "
                f"on ({type(exc).__name__}: {exc}); set API_KEYS or API_KEYS_FILE, or "
                "AUTH_DISABLED=1"
            ) from None
        bind = HttpBind(host="an address Serve did not say")
    check_auth(bind, has_keys=False, auth_disabled=config.auth_disabled, where="Gateway replica")

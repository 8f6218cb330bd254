"""Gateway: the Serve ingress. Validation, storage I/O and encoding happen here, on CPU."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.http_app import create_http_app
from serve_app.modules import ModuleBoard
from serve_app.services import GatewayConfig, Services
from core.storage import make_object_store


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
    ):
        app_name = serve.get_replica_context().app_name
        self._services = Services(
            config=config,
            store=make_object_store(config.storage),
            board=ModuleBoard(app_name, config.enabled),
            prompt_optimizer=prompt_optimizer,
            image_generator=image_generator,
            clip_embedder=clip_embedder,
            vector_index=vector_index,
            voice_cloner=voice_cloner,
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_http_app(self._services)

    def describe(self) -> dict[str, Any]:
        """Which modules are enabled and which storage backend is used (no secrets)."""
        return {"enabled": self._services.config.enabled, "storage": self._services.store.kind}

"""ClipEmbedder deployment: one open_clip model embeds images and texts, one request at a time.

Calls may name the embedding space they need (`core.records.EmbeddingSpace`): the configured
model's, or, while the image catalog is being re-embedded after a model change, the one its
stored vectors are from. That other model is loaded on first use beside the configured one
(same device and settings) and released when the catalog has switched. One that cannot be
loaded answers 503 saying why, and the call is retried on the next request after a minute.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from ray import serve

from core import defaults
from core.cpu_priority import yield_cpu
from core.errors import ServiceUnavailable
from core.records import EmbeddingSpace
from deployments.clip_model import ClipModel
from deployments.configs import ClipEmbedderConfig
from deployments.model_queue import ModelQueue

logger = logging.getLogger("ray.serve")


@serve.deployment(
    num_replicas=1,
    # The model runs one request at a time (ModelQueue, FIFO). The builder sets how many the
    # replica holds (MODEL_MAX_ONGOING_REQUESTS, default 1): above 1 the next request waits in
    # the replica and starts the moment the model is free, instead of backing off in Serve's
    # router; the queue bound stays Serve's max_queued_requests.
    max_ongoing_requests=1,
    max_queued_requests=defaults.CLIP_MAX_QUEUED_REQUESTS,
    ray_actor_options={"num_cpus": 1},
)
class ClipEmbedder:
    """Image and text embeddings in one space. The model loads in the constructor."""

    # After a failed load of another space's model, how long before trying again.
    retry_load_after_s: float = 60.0

    def __init__(self, config: ClipEmbedderConfig):
        yield_cpu(config.cpu_nice)  # before the model loads: its threads inherit it
        self._config = config
        self._model = ClipModel(config)
        self.space = EmbeddingSpace(
            model=config.model, pretrained=config.pretrained or "", dim=self._model.dim
        )
        self._others: dict[str, ClipModel] = {}  # space key -> model (re-embedding only)
        self._failed_loads: dict[str, tuple[float, str]] = {}  # space key -> (when, why)
        self._queue = ModelQueue("clip-embedder")
        if config.warm_up:  # before the replica reports ready: the first request is not slower
            self._queue.call(self._model.warm_up)

    async def embed_images(
        self, images: list[bytes], space: EmbeddingSpace | None = None
    ) -> np.ndarray:
        """Embed encoded images: float32 (n, dim) unit vectors; bad images answer 415.
        `space`: the model to use (None: the configured one)."""
        model = await self._model_of(space)
        return await self._queue.run("image embedding", model.embed_images, images)

    async def embed_text(self, texts: list[str], space: EmbeddingSpace | None = None) -> np.ndarray:
        """Embed texts: float32 (n, dim) unit vectors; empty texts answer 422.
        `space`: the model to use (None: the configured one)."""
        model = await self._model_of(space)
        return await self._queue.run("text embedding", model.embed_texts, texts)

    def describe(self) -> dict[str, str]:
        """Which model is loaded, on which device and dtype, and its embedding dimension."""
        return self._model.describe()

    def release_other_models(self) -> list[str]:
        """Drop the models of other spaces (the catalog has switched); returns their keys."""
        released = list(self._others)
        self._others.clear()
        if released:
            logger.info("released CLIP model(s) of %s", released)
        return released

    async def _model_of(self, space: EmbeddingSpace | None) -> ClipModel:
        if space is None or space == self.space:
            return self._model
        model = self._others.get(space.key)
        if model is not None:
            return model
        failed = self._failed_loads.get(space.key)
        if failed is not None and time.monotonic() - failed[0] < self.retry_load_after_s:
            raise self._unavailable(space, failed[1])
        # Loading runs in the queue: one model on the device at a time, in request order.
        return await self._queue.run("model load", self._load, space)

    def _load(self, space: EmbeddingSpace) -> ClipModel:
        if space.key in self._others:  # loaded by a request queued before this one
            return self._others[space.key]
        config = self._config.model_copy(
            update={"model": space.model, "pretrained": space.pretrained or None}
        )
        try:
            model = ClipModel(config)
            if model.dim != space.dim:
                raise ValueError(f"it embeds in {model.dim} dimensions, not {space.dim}")
        except Exception as exc:  # noqa: BLE001 - any failure: say so, retry later
            reason = f"{type(exc).__name__}: {exc}"[:300]
            logger.error("cannot load the CLIP model of %s: %s", space.describe(), reason)
            self._failed_loads[space.key] = (time.monotonic(), reason)
            raise self._unavailable(space, reason) from None
        logger.info(
            "loaded the CLIP model of %s beside %s", space.describe(), self.space.describe()
        )
        self._others[space.key] = model
        return model

    def _unavailable(self, space: EmbeddingSpace, reason: str) -> ServiceUnavailable:
        return ServiceUnavailable(
            f"image search is being re-indexed for {self.space.describe()} and the model of the "
            f"stored vectors ({space.describe()}) cannot be loaded here: search answers again "
            "when re-embedding is done (see /readyz)",
            reason=reason,
        )

"""ClipEmbedder deployment: one open_clip model embeds images and texts, one request at a time."""

from __future__ import annotations

import numpy as np
from ray import serve

from core import defaults
from core.cpu_priority import yield_cpu
from deployments.clip_model import ClipModel
from deployments.configs import ClipEmbedderConfig
from deployments.model_queue import ModelQueue


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

    def __init__(self, config: ClipEmbedderConfig):
        yield_cpu(config.cpu_nice)  # before the model loads: its threads inherit it
        self._model = ClipModel(config)
        self._queue = ModelQueue("clip-embedder")
        if config.warm_up:  # before the replica reports ready: the first request is not slower
            self._queue.call(self._model.warm_up)

    async def embed_images(self, images: list[bytes]) -> np.ndarray:
        """Embed encoded images: float32 (n, dim) unit vectors; bad images answer 415."""
        return await self._queue.run("image embedding", self._model.embed_images, images)

    async def embed_text(self, texts: list[str]) -> np.ndarray:
        """Embed texts: float32 (n, dim) unit vectors; empty texts answer 422."""
        return await self._queue.run("text embedding", self._model.embed_texts, texts)

    def describe(self) -> dict[str, str]:
        """Which model is loaded, on which device and dtype, and its embedding dimension."""
        return self._model.describe()

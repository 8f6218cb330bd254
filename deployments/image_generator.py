"""ImageGenerator deployment: one diffusers pipeline, one request at a time."""

from __future__ import annotations

from ray import serve

from core import defaults
from core.cpu_priority import yield_cpu
from core.metrics import image_generation_seconds
from core.types import GeneratedImage, ImageParams
from deployments.configs import ImageGeneratorConfig
from deployments.diffusion_model import DiffusionImageModel
from deployments.model_queue import ModelQueue


@serve.deployment(
    num_replicas=1,
    # The model runs one request at a time (ModelQueue, FIFO). The builder sets how many the
    # replica holds (MODEL_MAX_ONGOING_REQUESTS, default 1): above 1 the next request waits in
    # the replica and starts the moment the model is free, instead of backing off in Serve's
    # router; the queue bound stays Serve's max_queued_requests.
    max_ongoing_requests=1,
    max_queued_requests=defaults.IMAGE_MAX_QUEUED_REQUESTS,
    ray_actor_options={"num_cpus": 1},
)
class ImageGenerator:
    """Text-to-image generation. The model loads in the constructor (Serve shows "UPDATING")."""

    def __init__(self, config: ImageGeneratorConfig):
        yield_cpu(config.cpu_nice)  # before the model loads: its threads inherit it
        self._model = DiffusionImageModel(config)
        self._device = self._model.describe().get("device", "unknown")
        self._queue = ModelQueue("image-generator")
        if config.warm_up:  # before the replica reports ready: the first request is not slower
            self._queue.call(self._model.warm_up)

    async def generate(self, prompt: str, params: ImageParams | None = None) -> GeneratedImage:
        """Generate one image; the same prompt, params and seed give the same pixels."""
        image = await self._queue.run(
            "image generation", self._model.generate, prompt, params or ImageParams()
        )
        image_generation_seconds().observe(image.elapsed_ms / 1000, tags={"device": self._device})
        return image

    def describe(self) -> dict[str, str]:
        """Which model is loaded, on which device and dtype."""
        return self._model.describe()

"""ImageGenerator deployment: one diffusers pipeline, one request at a time."""

from __future__ import annotations

from ray import serve

from deployments.configs import ImageGeneratorConfig
from deployments.diffusion_model import DiffusionImageModel
from deployments.serial import ModelQueue
from deployments.types import GeneratedImage, ImageParams
from serve_app.errors import InvalidInput, ModelFailed
from serve_app.metrics import image_generation_seconds


@serve.deployment(
    num_replicas=1,
    # The model runs one request at a time (ModelQueue, FIFO); the builder sets how many the
    # replica holds (MODEL_MAX_ONGOING_REQUESTS, default 1 + the queue bound) so that the
    # next one starts the moment the model is free instead of backing off in Serve's router.
    max_ongoing_requests=1,
    max_queued_requests=8,
    ray_actor_options={"num_cpus": 1},
)
class ImageGenerator:
    """Text-to-image generation. The model loads in the constructor (Serve shows "UPDATING")."""

    def __init__(self, config: ImageGeneratorConfig):
        self._model = DiffusionImageModel(config)
        self._device = self._model.describe().get("device", "unknown")
        self._queue = ModelQueue("image-generator")
        if config.warm_up:  # before the replica reports ready: the first request is not slower
            self._queue.call(self._model.warm_up)

    async def generate(self, prompt: str, params: ImageParams | None = None) -> GeneratedImage:
        """Generate one image; the same prompt, params and seed give the same pixels."""
        try:
            image = await self._queue.run(self._model.generate, prompt, params or ImageParams())
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - a model failure must not look like a bug in the caller
            raise ModelFailed(f"image generation failed: {type(exc).__name__}: {exc}"[:500]) from None
        image_generation_seconds().observe(image.elapsed_ms / 1000, tags={"device": self._device})
        return image

    def describe(self) -> dict[str, str]:
        """Which model is loaded, on which device and dtype."""
        return self._model.describe()

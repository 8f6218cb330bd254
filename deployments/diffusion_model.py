"""Plain-Python text-to-image wrapper over a diffusers pipeline (no Ray).

Owns loading the pipeline named by an `ImageGeneratorConfig` (hub id or local directory)
onto one device, and turning a prompt plus `ImageParams` into seeded, reproducible
`GeneratedImage` pixels. Run by a `ModelQueue` whose caller is cancelled, a generation stops
between denoising steps (`CallCancelled`, through the pipeline's `callback_on_step_end`). The
Ray deployment is a thin shell around `DiffusionImageModel`.
"""

from __future__ import annotations

import inspect
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from core.errors import ModelInputError
from core.types import GeneratedImage, ImageParams
from deployments.configs import ImageGeneratorConfig
from deployments.gpu_budget import apply_memory_budget, loading_within_budget
from deployments.model_loading import (
    pick_device,
    pick_dtype,
    quiet_progress_bars,
    resolve_model_ref,
    set_torch_threads,
)
from deployments.model_queue import CallCancelled, cancel_flag


class DiffusionImageModel:
    """A loaded text-to-image pipeline; `generate` is safe to call from several threads."""

    def __init__(self, config: ImageGeneratorConfig) -> None:
        from diffusers import AutoPipelineForText2Image

        self.config = config
        set_torch_threads(config.torch_threads)
        self.model_path, self.is_local = resolve_model_ref(config.model)
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device)
        apply_memory_budget(self.device, config.gpu_memory_fraction)
        budget = loading_within_budget("the image model", self.device, config.gpu_memory_fraction)
        with budget, quiet_progress_bars():
            # `dtype` is diffusers 0.42's name for the deprecated `torch_dtype`.
            pipeline = AutoPipelineForText2Image.from_pretrained(  # type: ignore[no-untyped-call]
                self.model_path,
                dtype=self.dtype,
                local_files_only=self.is_local,
                safety_checker=None,
            )
        if getattr(pipeline, "safety_checker", None) is not None:
            pipeline.safety_checker = None
        pipeline.set_progress_bar_config(disable=True)
        with loading_within_budget("the image model", self.device, config.gpu_memory_fraction):
            self.pipeline = pipeline.to(self.device)
        # Pipelines keep per-call state (scheduler timesteps): one call at a time.
        self._lock = threading.Lock()
        self._stops_between_steps = "callback_on_step_end" in _parameters(pipeline)

    def generate(self, prompt: str, params: ImageParams) -> GeneratedImage:
        """Render `prompt`; the same seed and params give byte-identical pixels."""
        if not prompt or not prompt.strip():
            raise ModelInputError("prompt must not be empty")
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        kwargs: dict[str, Any] = {
            "prompt": prompt,
            "width": params.width,
            "height": params.height,
            "num_inference_steps": params.steps,
            "guidance_scale": params.guidance_scale,
            "output_type": "np",
        }
        if params.negative_prompt:
            kwargs["negative_prompt"] = params.negative_prompt
        cancel = cancel_flag()
        if cancel is not None and self._stops_between_steps:
            kwargs["callback_on_step_end"] = _stop_when_set(cancel, params.steps)
        with self._lock, torch.inference_mode():
            start = time.perf_counter()
            generator = torch.Generator(device=self.device).manual_seed(seed)
            images = self.pipeline(generator=generator, **kwargs).images
            elapsed_ms = (time.perf_counter() - start) * 1000.0
        return GeneratedImage(
            pixels=_to_uint8_rgb(images[0]),
            seed=seed,
            steps=params.steps,
            elapsed_ms=elapsed_ms,
        )

    def warm_up(self) -> float:
        """One 1-step generation at the warm-up size, so that the first request does not pay
        for lazy initialisation (kernels, allocator, scheduler); returns its milliseconds."""
        start = time.perf_counter()
        params = ImageParams(
            width=self.config.warm_up_width, height=self.config.warm_up_height, steps=1, seed=0
        )
        self.generate("warm-up", params)
        return (time.perf_counter() - start) * 1000.0

    def describe(self) -> dict[str, str]:
        """Model reference, where it came from, device and dtype, for health and info routes."""
        return {
            "model": self.config.model,
            "source": "local" if self.is_local else "hub",
            "path": self.model_path,
            "pipeline": type(self.pipeline).__name__,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }


def _parameters(pipeline: Any) -> set[str]:
    try:
        return set(inspect.signature(pipeline.__call__).parameters)
    except (TypeError, ValueError):  # pragma: no cover - a pipeline without a signature
        return set()


def _stop_when_set(cancel: threading.Event, steps: int) -> Callable[..., dict[str, Any]]:
    """A diffusers step-end callback that stops the generation once `cancel` is set."""

    def callback(
        pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        if cancel.is_set():
            raise CallCancelled(
                f"image generation stopped after step {step + 1} of {steps}: its caller went away"
            )
        return callback_kwargs

    return callback


def _to_uint8_rgb(image: Any) -> np.ndarray:
    """Convert a float HxWxC image in [0, 1] to contiguous uint8 HxWx3."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = array[:, :, :3]
    pixels = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(pixels)

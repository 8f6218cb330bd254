"""The torch device benchmark 6 measures on: loading a model once the previous one is
released, synchronised timing, and the device's memory counters (NaN on the CPU).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from core.types import Device as ConfigDevice

M = TypeVar("M")


class Device:
    """The torch device under test, its synchronisation and its memory counters."""

    def __init__(self, name: str) -> None:
        import torch

        self.torch = torch
        self.name = name
        self.cuda = name.startswith("cuda")
        if self.cuda and not torch.cuda.is_available():
            raise RuntimeError(f"--device {name}: CUDA is not available here")
        self.description = torch.cuda.get_device_name(torch.device(name)) if self.cuda else "CPU"
        # Set on every model: torch's thread count is process-wide, and the benchmarks run
        # before this one leave it at 1 (their tiny models run on one thread).
        self.torch_threads = os.cpu_count() or 1

    @property
    def config_name(self) -> ConfigDevice:
        """`name` as the model configs take it (they validate it: "cpu" or "cuda")."""
        return cast("ConfigDevice", self.name)

    def load(self, factory: Callable[[], M]) -> tuple[M, dict[str, Any]]:
        """Build a model once the previous one is released: the model, its load seconds and
        the device memory its weights took."""
        self.release()
        before = self.allocated_gib()
        started = time.perf_counter()
        model = factory()
        return model, {
            "load_s": time.perf_counter() - started,
            "weights_gib": self.allocated_gib() - before,
        }

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.name)

    def allocated_gib(self) -> float:
        if not self.cuda:
            return float("nan")
        return float(self.torch.cuda.memory_allocated(self.name) / 2**30)

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.name)

    def peak_gib(self) -> float:
        if not self.cuda:
            return float("nan")
        return float(self.torch.cuda.max_memory_allocated(self.name) / 2**30)

    def release(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def timed(self, call: Callable[[], object]) -> float:
        """Seconds of one `call()`, the device synchronised before and after."""
        self.sync()
        t0 = time.perf_counter()
        call()
        self.sync()
        return time.perf_counter() - t0

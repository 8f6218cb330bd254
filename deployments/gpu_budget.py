"""A model replica's share of a GPU it shares with others: a cap on the card's memory.

Ray's fractional `num_gpus` only schedules; nothing stops one model from taking the whole
card. With a cap, a model that outgrows its share fails alone (its request answers 503, or
its replica fails to start with a message saying how to give it more) instead of pushing its
neighbours out of memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class ModelDoesNotFit(RuntimeError):
    """The model did not load within its share of the GPU's memory."""


def apply_memory_budget(device: torch.device, fraction: float | None) -> None:
    """Cap this process's allocations on `device` at `fraction` of the card (CUDA only)."""
    if fraction is None or device.type != "cuda":
        return
    torch.cuda.set_per_process_memory_fraction(fraction, device)


@contextmanager
def loading_within_budget(
    what: str, device: torch.device, fraction: float | None
) -> Iterator[None]:
    """Turn running out of GPU memory while loading `what` into `ModelDoesNotFit` with a
    message that says what the share was and which settings give it more."""
    try:
        yield
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
        else:
            total_gib = 0.0
        share = "the whole card" if fraction is None else f"{fraction:.0%} of the card"
        raise ModelDoesNotFit(
            f"{what} does not fit in its GPU memory ({share}, {total_gib:.1f} GiB card): give "
            "it a larger share or a card of its own with its *_NUM_GPUS setting, or move it or "
            "another model to the CPU with *_DEVICE=cpu"
        ) from None

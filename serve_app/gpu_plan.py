"""How the GPU models share the cluster's GPUs: `*_NUM_GPUS=auto` (the default) or numbers.

Ray schedules a replica only where its whole GPU request fits on one node, and a fraction
only where it fits on one card. So a request that can never be met leaves the replica
pending forever, which on the seed's one-GPU box (three models, one card) was the default.
This module decides, before anything is bound:

- `auto`: each GPU model gets a card of its own when there are enough free cards; else the
  models share the cards, grouped so that the loads even out, each getting a fraction of its
  card in proportion to the GPU memory it needs (`MODEL_GPU_MEMORY_GIB`).
- a number: honoured as it is, after a check that it can be scheduled at all (a whole number
  above 1, no more than a node has, and all the fractions packed onto cards); if not, a
  `SettingsError` that names the variables.
- no GPU in the cluster: the CPU with `CPU_FALLBACK=1` (the default); with `CPU_FALLBACK=0`
  (autoscaling clusters whose GPU nodes start on demand) the requests stand and wait.

A shared card also gets a memory cap per replica (its fraction of the card), applied by the
model replica, so one model cannot starve its neighbours (`deployments.gpu_budget`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from core.types import Device
from serve_app.settings import Settings, SettingsError

logger = logging.getLogger("ray.serve")

GpuModule = Literal["image", "image_search", "voice"]

# GiB each default model needs on a GPU in fp16: weights plus working memory, computed from the
# parameter counts (bench/real_models.py builds them; tests/unit/test_real_model_sizes.py
# checks the counts) and not yet measured on a GPU:
# - image: sd-turbo UNet 865.9M + VAE 83.7M + text encoder 340.4M = 2.4 GiB of fp16 weights,
#   plus about 2.5 GiB for a 512x512 step and the VAE decode;
# - image_search: CLIP xlm-roberta-base-ViT-B-32 366.1M = 0.7 GiB (a ViT-B-32 image tower
#   87.9M and an XLM-R base text tower 278.3M), plus a 32-image batch;
# - voice: F5-TTS v1 base 337.1M + Vocos 13.5M + Whisper large-v3-turbo 809M = 2.2 GiB, plus
#   the flow-matching activations of a 30 s chunk with CFG.
# Only the ratios matter for sharing; other models: set *_NUM_GPUS yourself.
MODEL_GPU_MEMORY_GIB: dict[GpuModule, float] = {"image": 5.0, "image_search": 1.5, "voice": 3.5}

VARIABLE: dict[GpuModule, str] = {
    "image": "IMAGE_NUM_GPUS",
    "image_search": "CLIP_NUM_GPUS",
    "voice": "VOICE_NUM_GPUS",
}
FRACTION_STEP = 0.01  # fractions are rounded down to this, so a card's shares sum to <= 1


@dataclass(frozen=True)
class GpuPlan:
    """Where one model deployment runs."""

    num_gpus: float  # what its replica reserves in Ray
    device: Device
    memory_fraction: float | None  # the replica's cap on its card's memory; None: no cap
    reason: str  # the decision in words, for the log and /readyz


def module_requests(settings: Settings) -> dict[GpuModule, tuple[float | str, Device]]:
    """The enabled GPU modules with their *_NUM_GPUS and *_DEVICE settings."""
    requests: dict[GpuModule, tuple[float | str, Device]] = {}
    if settings.image_enabled:
        requests["image"] = (settings.image_num_gpus, settings.image_device)
    if settings.image_search_enabled:
        requests["image_search"] = (settings.clip_num_gpus, settings.clip_device)
    if settings.voice_enabled:
        requests["voice"] = (settings.voice_num_gpus, settings.voice_device)
    return requests


def plan_gpus(settings: Settings, node_gpus: Sequence[float] | None) -> dict[GpuModule, GpuPlan]:
    """Decide every enabled GPU model's placement on a cluster with `node_gpus` GPUs per node
    (None: not connected to Ray, so nothing can be checked). Raise `SettingsError` when a
    request can never be scheduled."""
    requests = module_requests(settings)
    plans: dict[GpuModule, GpuPlan] = {}
    wanting: dict[GpuModule, float | str] = {}
    for module, (gpus, device) in requests.items():
        if device == "cpu" or gpus == 0:
            why = f"{VARIABLE[module]}=0" if gpus == 0 else "its *_DEVICE=cpu"
            plans[module] = GpuPlan(0.0, "cpu", None, f"CPU ({why})")
        else:
            wanting[module] = gpus
    if not wanting:
        return plans
    devices = {module: requests[module][1] for module in wanting}
    if node_gpus is None:
        for module, gpus in wanting.items():
            share = 1.0 if gpus == "auto" else float(gpus)
            plans[module] = GpuPlan(share, devices[module], _cap(share), "cluster not inspected")
        return plans
    if sum(node_gpus) == 0:
        if settings.cpu_fallback:
            for module in wanting:
                plans[module] = GpuPlan(
                    0.0, "cpu", None, "CPU: the cluster has no GPU (CPU_FALLBACK=1)"
                )
            return plans
        for module, gpus in wanting.items():
            share = 1.0 if gpus == "auto" else float(gpus)
            plans[module] = GpuPlan(
                share, devices[module], _cap(share), "waiting for a GPU node (CPU_FALLBACK=0)"
            )
        return plans
    cards = _Cards(node_gpus)
    explicit = {m: float(g) for m, g in wanting.items() if g != "auto"}
    for module, gpus in sorted(explicit.items(), key=lambda item: -item[1]):
        if not cards.take(gpus):
            raise SettingsError(_cannot_fit(explicit, node_gpus, module))
        plans[module] = GpuPlan(gpus, devices[module], _cap(gpus), f"{VARIABLE[module]}={gpus:g}")
    auto = [m for m, g in wanting.items() if g == "auto"]
    for module, share, mates in cards.share(auto):
        if share <= 0:
            raise SettingsError(_cannot_fit(explicit, node_gpus, module, auto=auto))
        reason = (
            "a GPU of its own"
            if not mates
            else (f"{share:.0%} of a GPU shared with {', '.join(mates)} (by memory need)")
        )
        plans[module] = GpuPlan(share, devices[module], _cap(share), f"auto: {reason}")
    return plans


def read_node_gpus(resource: str | None) -> list[float] | None:
    """GPUs of each alive node of the connected Ray cluster (only the nodes offering
    `resource`, the model-node resource, when it is set); None when Ray is not initialised."""
    import ray

    if not ray.is_initialized():
        return None
    gpus = []
    for node in ray.nodes():
        offered = node.get("Resources", {})
        if node.get("Alive") and (resource is None or resource in offered):
            gpus.append(float(offered.get("GPU", 0)))
    return gpus


def log_plans(plans: dict[GpuModule, GpuPlan]) -> None:
    """One line per GPU model saying where it runs and why."""
    for module, plan in plans.items():
        logger.info("placement of %s: %s on %s (%s)", module, _gpus(plan), plan.device, plan.reason)


def describe(plan: GpuPlan) -> str:
    """The decision for /readyz, e.g. "0.55 GPU, memory capped at 55% (auto: ...)"."""
    cap = f", memory capped at {plan.memory_fraction:.0%}" if plan.memory_fraction else ""
    return f"{_gpus(plan)}{cap} ({plan.reason})"


class _Cards:
    """Free capacity of each GPU card, grouped by node (whole requests need one node)."""

    def __init__(self, node_gpus: Sequence[float]):
        self.nodes = [[1.0] * int(gpus) for gpus in node_gpus]

    def take(self, gpus: float) -> bool:
        """Reserve a request: whole cards on one node, or a fraction of one card."""
        if gpus >= 1:
            if gpus != int(gpus):
                return False  # Ray accepts fractions only below 1
            for node in self.nodes:
                free = [i for i, capacity in enumerate(node) if capacity == 1.0]
                if len(free) >= gpus:
                    for i in free[: int(gpus)]:
                        node[i] = 0.0
                    return True
            return False
        fitting = [card for card in self._cards() if card[2] >= gpus - 1e-9]
        if not fitting:
            return False
        node_index, card_index, capacity = min(fitting, key=lambda card: card[2])  # tightest
        self.nodes[node_index][card_index] = round(capacity - gpus, 6)
        return True

    def share(self, modules: list[GpuModule]) -> list[tuple[GpuModule, float, list[GpuModule]]]:
        """Put each module on a card: alone while free cards last, else grouped so the
        cards' loads (memory need over free capacity) even out; each gets its card's free
        capacity in proportion to its need. Share 0 means no card had room."""
        if not modules:
            return []
        cards = sorted(((c, n, i) for n, i, c in self._cards() if c > 0), reverse=True)
        if not cards:
            return [(module, 0.0, []) for module in modules]
        cards = cards[: len(modules)]
        load = [0.0] * len(cards)
        members: list[list[GpuModule]] = [[] for _ in cards]
        for module in sorted(modules, key=lambda m: -MODEL_GPU_MEMORY_GIB[m]):
            need = MODEL_GPU_MEMORY_GIB[module]
            best = min(range(len(cards)), key=lambda b: (load[b] + need) / cards[b][0])
            load[best] += need
            members[best].append(module)
        result = []
        for (capacity, _node, _index), group, total in zip(cards, members, load, strict=True):
            for module in group:
                share = capacity * MODEL_GPU_MEMORY_GIB[module] / total if total else 0.0
                share = 1.0 if len(group) == 1 and capacity == 1.0 else _round_down(share)
                mates = [m for m in group if m != module]
                result.append((module, share, mates))
        return result

    def _cards(self) -> list[tuple[int, int, float]]:
        return [(n, i, c) for n, node in enumerate(self.nodes) for i, c in enumerate(node)]


def _cannot_fit(
    explicit: dict[GpuModule, float],
    node_gpus: Sequence[float],
    module: GpuModule,
    auto: list[GpuModule] | None = None,
) -> str:
    asked = ", ".join(f"{VARIABLE[m]}={g:g}" for m, g in explicit.items())
    if auto:
        asked = ", ".join(filter(None, [asked, *(f"{VARIABLE[m]}=auto" for m in auto)]))
    nodes = ", ".join(f"{g:g}" for g in node_gpus)
    return (
        f"the GPU models cannot all be scheduled ({asked}) on a cluster whose nodes have "
        f"[{nodes}] GPUs: {VARIABLE[module]} does not fit. Lower the *_NUM_GPUS values (a "
        "fraction below 1 shares a card; whole numbers above 1 must fit on one node), use "
        "auto, or move a model to the CPU with its *_DEVICE=cpu"
    )


def _cap(gpus: float) -> float | None:
    return gpus if 0 < gpus < 1 else None


def _round_down(share: float) -> float:
    return math.floor(share / FRACTION_STEP + 1e-9) * FRACTION_STEP


def _gpus(plan: GpuPlan) -> str:
    return "no GPU" if plan.num_gpus == 0 else f"{plan.num_gpus:g} GPU"

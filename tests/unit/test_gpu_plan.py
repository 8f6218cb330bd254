"""GPU placement (serve_app.gpu_plan): auto shares the cards that exist, numbers are checked
against them, and nothing is left waiting for a GPU that the cluster does not have."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.gpu_plan import MODEL_GPU_MEMORY_GIB, describe, plan_gpus
from serve_app.settings import SettingsError, load_settings


def _plan(nodes: list[float] | None, **overrides: Any) -> dict[str, tuple[float, str, Any]]:
    plans = plan_gpus(load_settings(None, overrides), nodes)
    return {m: (p.num_gpus, p.device, p.memory_fraction) for m, p in plans.items()}


def test_one_gpu_box_shares_the_card_by_memory_need() -> None:
    """The seed's box: three models, one card. Every share fits on it, in proportion."""
    plans = _plan([1])
    shares = {module: gpus for module, (gpus, _, _) in plans.items()}
    assert set(shares) == {"image", "image_search", "voice"}
    assert sum(shares.values()) <= 1.0
    assert shares["image"] > shares["voice"] > shares["image_search"] > 0
    total_need = sum(MODEL_GPU_MEMORY_GIB.values())
    for module, share in shares.items():
        assert share == pytest.approx(MODEL_GPU_MEMORY_GIB[module] / total_need, abs=0.011)
    for gpus, device, cap in plans.values():  # a shared card caps each replica's memory
        assert device == "auto" and cap == gpus


def test_enough_cards_give_each_model_its_own() -> None:
    assert {m: p[0] for m, p in _plan([4]).items()} == {
        "image": 1.0,
        "image_search": 1.0,
        "voice": 1.0,
    }
    assert all(cap is None for _, _, cap in _plan([1, 1, 1]).values())


def test_two_cards_put_the_largest_alone() -> None:
    plans = _plan([2])
    assert plans["image"][0] == 1.0
    assert plans["voice"][0] + plans["image_search"][0] <= 1.0
    assert plans["voice"][0] > plans["image_search"][0] > 0


def test_disabled_and_cpu_models_take_no_gpu() -> None:
    plans = _plan([1], VOICE_ENABLED=False, CLIP_DEVICE="cpu")
    assert plans["image_search"] == (0.0, "cpu", None)
    assert "voice" not in plans
    assert plans["image"] == (1.0, "auto", None)  # alone on the card now


def test_no_gpu_falls_back_to_the_cpu_or_waits() -> None:
    assert all(p == (0.0, "cpu", None) for p in _plan([0, 0]).values())
    waiting = _plan([0], CPU_FALLBACK=False, IMAGE_NUM_GPUS=0.5)
    assert waiting["image"] == (0.5, "auto", 0.5)
    assert waiting["voice"] == (1.0, "auto", None)


def test_explicit_numbers_are_honoured_and_auto_takes_the_rest() -> None:
    plans = _plan([1], IMAGE_NUM_GPUS=0.6)
    assert plans["image"][0] == 0.6
    assert plans["voice"][0] + plans["image_search"][0] <= 0.4 + 1e-9
    assert plans["voice"][0] > plans["image_search"][0] > 0


@pytest.mark.parametrize(
    ("nodes", "overrides", "named"),
    [
        (
            [1],
            {"IMAGE_NUM_GPUS": 1, "CLIP_NUM_GPUS": 1, "VOICE_ENABLED": False},
            "CLIP_NUM_GPUS",
        ),  # the README's old default on a one-GPU box
        ([1], {"IMAGE_NUM_GPUS": 0.6, "CLIP_NUM_GPUS": 0.6, "VOICE_NUM_GPUS": 0}, "NUM_GPUS"),
        ([1, 1], {"IMAGE_NUM_GPUS": 2}, "IMAGE_NUM_GPUS"),  # two cards, but not on one node
        ([4], {"IMAGE_NUM_GPUS": 1.5}, "IMAGE_NUM_GPUS"),  # Ray takes fractions below 1 only
        ([1], {"IMAGE_NUM_GPUS": 1}, "VOICE_NUM_GPUS=auto"),  # nothing left for auto
    ],
)
def test_a_request_that_can_never_be_scheduled_is_an_error_at_start(
    nodes: list[float], overrides: dict[str, Any], named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        plan_gpus(load_settings(None, overrides), nodes)


def test_not_connected_to_ray_takes_the_settings_as_they_are() -> None:
    plans = _plan(None, IMAGE_NUM_GPUS=0.25)
    assert plans["image"] == (0.25, "auto", 0.25)
    assert plans["voice"] == (1.0, "auto", None)


def test_the_decision_is_said_in_words() -> None:
    (image,) = [p for m, p in plan_gpus(load_settings(None), [1]).items() if m == "image"]
    text = describe(image)
    assert "GPU" in text and "memory capped at" in text and "shared with" in text


def test_settings_accept_auto_or_a_number() -> None:
    assert load_settings(None).image_num_gpus == "auto"
    assert load_settings(None, {"CLIP_NUM_GPUS": "0.5"}).clip_num_gpus == 0.5
    with pytest.raises(SettingsError, match="VOICE_NUM_GPUS"):
        load_settings(None, {"VOICE_NUM_GPUS": "some"})
    with pytest.raises(SettingsError, match="IMAGE_NUM_GPUS"):
        load_settings(None, {"IMAGE_NUM_GPUS": -1})

"""DiffusionImageModel on the tiny offline SD pipeline, the tiny-model builder and model_loading."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import ModelInputError
from core.types import ImageParams
from deployments.configs import ImageGeneratorConfig
from deployments.diffusion_model import DiffusionImageModel
from deployments.model_loading import pick_device, pick_dtype, resolve_model_ref, set_torch_threads
from serve_app.tiny import build_tiny_diffusion_pipeline
from serve_app.tiny.__main__ import main as tiny_cli

PROMPT = "a photo of a red cat"


def _tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """Relative path -> (sha256, mtime_ns) for every file under root."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def diffusion_dir(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / "diffusion"


@pytest.fixture(scope="module")
def model(diffusion_dir: Path) -> DiffusionImageModel:
    return DiffusionImageModel(ImageGeneratorConfig(model=str(diffusion_dir), device="cpu"))


def _params(**overrides: object) -> ImageParams:
    base: dict[str, object] = {"width": 64, "height": 96, "steps": 1, "guidance_scale": 0.0}
    base.update(overrides)
    return ImageParams(**base)


# --- builder -------------------------------------------------------------------------------


def test_builder_is_idempotent(diffusion_dir: Path) -> None:
    assert (diffusion_dir / "model_index.json").is_file()
    before = _tree_digest(diffusion_dir)
    assert build_tiny_diffusion_pipeline(diffusion_dir) == diffusion_dir
    assert _tree_digest(diffusion_dir) == before
    # The atomic write left no temporary siblings behind.
    assert not [p for p in diffusion_dir.parent.iterdir() if p.name.startswith(".")]
    size = sum(p.stat().st_size for p in diffusion_dir.rglob("*") if p.is_file())
    assert size < 10 * 2**20


def test_builder_is_deterministic_given_seed(diffusion_dir: Path, tmp_path: Path) -> None:
    rebuilt = build_tiny_diffusion_pipeline(tmp_path / "again", seed=0)
    digest = {k: v[0] for k, v in _tree_digest(rebuilt).items()}
    assert digest == {k: v[0] for k, v in _tree_digest(diffusion_dir).items()}


def test_builder_refuses_a_foreign_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "other.txt").write_text("not a pipeline")
    with pytest.raises(FileExistsError):
        build_tiny_diffusion_pipeline(tmp_path)


def test_cli_prints_the_built_path(
    tiny_models_dir: Path, diffusion_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tiny_cli(["--out", str(tiny_models_dir), "--only", "diffusion"]) == 0
    assert capsys.readouterr().out.strip() == str(diffusion_dir)


# --- DiffusionImageModel -------------------------------------------------------------------


def test_loads_from_local_dir(model: DiffusionImageModel, diffusion_dir: Path) -> None:
    info = model.describe()
    assert info["model"] == str(diffusion_dir)
    assert info["source"] == "local"
    assert info["path"] == str(diffusion_dir)
    assert info["device"] == "cpu"
    assert info["dtype"] == "float32"
    assert getattr(model.pipeline, "safety_checker", None) is None


def test_output_shape_matches_non_square_size(model: DiffusionImageModel) -> None:
    image = model.generate(PROMPT, _params(seed=1))
    assert image.pixels.shape == (96, 64, 3)
    assert image.pixels.dtype == np.uint8
    assert (image.width, image.height) == (64, 96)
    assert image.seed == 1 and image.steps == 1
    assert image.elapsed_ms > 0


def test_same_seed_gives_identical_bytes_and_png(model: DiffusionImageModel) -> None:
    first = model.generate(PROMPT, _params(seed=42))
    second = model.generate(PROMPT, _params(seed=42))
    assert first.pixels.tobytes() == second.pixels.tobytes()
    assert first.to_png() == second.to_png()


def test_different_seeds_give_different_pixels(model: DiffusionImageModel) -> None:
    first = model.generate(PROMPT, _params(seed=1))
    second = model.generate(PROMPT, _params(seed=2))
    assert not np.array_equal(first.pixels, second.pixels)


def test_random_seed_is_reported_and_reproducible(model: DiffusionImageModel) -> None:
    image = model.generate(PROMPT, _params(seed=None))
    assert 0 <= image.seed < 2**63
    again = model.generate(PROMPT, _params(seed=image.seed))
    assert again.pixels.tobytes() == image.pixels.tobytes()


def test_guidance_and_negative_prompt_run(model: DiffusionImageModel) -> None:
    params = _params(seed=3, steps=2, guidance_scale=4.0, negative_prompt="dog")
    image = model.generate(PROMPT, params)
    assert image.pixels.shape == (96, 64, 3)


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_is_rejected(model: DiffusionImageModel, prompt: str) -> None:
    with pytest.raises(ModelInputError, match="empty"):
        model.generate(prompt, _params(seed=1))


# --- model_loading -------------------------------------------------------------------------


def test_resolve_existing_dir(diffusion_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_model_ref(str(diffusion_dir)) == (str(diffusion_dir), True)
    monkeypatch.chdir(diffusion_dir.parent)
    assert resolve_model_ref("./diffusion") == (str(diffusion_dir), True)


@pytest.mark.parametrize("ref", ["./no-such", "../no-such", "/no/such/model", "~/no-such"])
def test_resolve_missing_path_raises(
    ref: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_ref(ref)


def test_resolve_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_model_ref("stabilityai/sd-turbo") == ("stabilityai/sd-turbo", False)


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError):
        pick_device("tpu")
    if torch.cuda.is_available():  # a GPU machine: auto and cuda both pick it
        assert pick_device("auto").type == "cuda" and pick_device("cuda").type == "cuda"
        return
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        pick_device("cuda")


def test_pick_dtype() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_dtype("auto", cpu) is torch.float32
    assert pick_dtype("auto", cuda) is torch.float16
    assert pick_dtype("float16", cpu) is torch.float16
    assert pick_dtype("bfloat16", cuda) is torch.bfloat16
    assert pick_dtype("float32", cuda) is torch.float32
    with pytest.raises(ValueError):
        pick_dtype("int8", cpu)


def test_set_torch_threads() -> None:
    before = torch.get_num_threads()
    try:
        set_torch_threads(None)
        assert torch.get_num_threads() == before
        set_torch_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_cancelled_generation_stops_between_steps_and_the_next_call_runs(
    model: DiffusionImageModel,
) -> None:
    """Run through a ModelQueue, a generation whose caller is cancelled stops at the end of
    the step it is in (diffusers' callback_on_step_end); the queue runs the next call."""
    import asyncio
    import time

    from deployments.model_queue import CallCancelled, ModelQueue, current_request_id

    current_request_id()  # imports Ray's request context now, as a replica has
    steps_seen: list[float] = []
    outcome: dict[str, object] = {}
    queue = ModelQueue("image-test")
    original = model.pipeline.unet.forward

    def slow_step(*args: object, **kwargs: object) -> object:
        steps_seen.append(time.perf_counter())
        time.sleep(0.05)  # a step of a real model: long enough to cancel in the middle
        return original(*args, **kwargs)

    def generate() -> None:
        try:
            model.generate(PROMPT, _params(steps=150))
            outcome["result"] = "finished"
        except CallCancelled as exc:
            outcome["result"] = str(exc)
            raise

    async def main() -> float:
        task = asyncio.create_task(queue.run("image generation", generate))
        while len(steps_seen) < 3:
            await asyncio.sleep(0.01)
        cancelled_at = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        ran_at: float = await queue.run("next", time.perf_counter)
        return ran_at - cancelled_at

    model.pipeline.unet.forward = slow_step  # type: ignore[method-assign]
    try:
        next_after = asyncio.run(main())
    finally:
        model.pipeline.unet.forward = original  # type: ignore[method-assign]
        queue.shutdown()
    assert str(outcome["result"]).startswith("image generation stopped after step"), outcome
    assert len(steps_seen) < 150
    assert next_after < 3.0, next_after  # about one step (50 ms), with room for a loaded box
    # a direct call (no queue, no flag) is unaffected, and the pipeline works afterwards
    assert model.generate(PROMPT, _params(seed=3)).pixels.shape == (96, 64, 3)

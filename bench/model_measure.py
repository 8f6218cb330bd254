"""Benchmark 6's measurements, through the production wrappers: `DiffusionImageModel.generate`
and one UNet forward, `ClipModel.embed_images` one at a time and in a batch, and
`VoiceModel.synthesize` (real-time factor = synthesis seconds over output audio seconds).

Every dtype of the `Settings` is a variant measured against fp32 in the same run; for the
image model on CUDA also `channels_last` on the UNet and VAE and, when asked, `torch.compile`
of the UNet, both applied here to the loaded pipeline's modules (production code unchanged).
A variant that fails is recorded with its error and the others still run. Random weights
make the images and audio noise: only times, memory and parameter counts mean anything.
"""

from __future__ import annotations

import io
import json
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.inputs import random_images, reference_wav
from bench.model_device import Device
from bench.model_workload import PROMPT, REF_SECONDS, REF_TEXT, SHORT_DTYPE, Settings
from bench.real_models import F5_CONFIG
from bench.stats import median
from bench.tables import fmt_dict

if TYPE_CHECKING:
    from core.types import TorchDType
    from deployments.clip_model import ClipModel
    from deployments.diffusion_model import DiffusionImageModel


def measure(
    paths: dict[str, Path],
    asr: Path,
    dev: Device,
    s: Settings,
    compile_mode: str | None = None,
    f5_config: str = F5_CONFIG,
) -> dict[str, Any]:
    """Every measurement of the section on the models at `paths` (diffusion, clip, f5tts,
    vocos: as `bench.real_models.build_real_models` returns), `asr` the Whisper directory."""
    params: dict[str, int] = {}
    figures: dict[str, Any] = {
        "device": dev.name,
        "device_name": dev.description,
        "settings": asdict(s),
        "compile_mode": compile_mode,
        "disk_gib": {name: _disk_gib(path) for name, path in paths.items()},
        "clip_image_size": _clip_image_size(paths["clip"]),
        "params": params,
    }
    figures["image"] = _image(paths["diffusion"], dev, s, compile_mode, params)
    figures["clip"] = _clip(paths["clip"], dev, s, params)
    figures["voice"] = _voice(paths, asr, dev, s, params, f5_config)
    return figures


@contextmanager
def _quiet() -> Iterator[None]:
    """Random weights give NaN images; their uint8 cast warns. Timing is unaffected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _params(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _disk_gib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**30


def _clip_image_size(path: Path) -> int:
    from serve_app.tiny.clip import CONFIG_FILE

    return int(json.loads((path / CONFIG_FILE).read_text())["preprocess_cfg"]["size"])


def _variant_error(results: dict[str, Any], variant: str, exc: BaseException) -> None:
    results[variant] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    print(f"  {variant} failed: {results[variant]['error']}", flush=True)


def _each_variant(
    dev: Device,
    dtypes: tuple[TorchDType, ...],
    what: str,
    measure: Callable[[TorchDType, str], dict[str, Any]],
) -> dict[str, Any]:
    """`measure(dtype, variant)` for each dtype; a variant that fails is recorded, not raised,
    and the device is released after each."""
    results: dict[str, Any] = {}
    for dtype in dtypes:
        variant = SHORT_DTYPE[dtype]
        try:
            print(f"  {what} {variant} ...", flush=True)
            results[variant] = measure(dtype, variant)
        except Exception as exc:  # noqa: BLE001 - the other variants still run
            _variant_error(results, variant, exc)
        finally:
            dev.release()
    return results


# --- image ----------------------------------------------------------------------------------


def _generate(
    model: DiffusionImageModel, s: Settings, steps: int, seed: int
) -> Callable[[], object]:
    """One `generate` call at the run's size, guidance 0 (as sd-turbo is used)."""
    from core.types import ImageParams

    params = ImageParams(
        width=s.image_size, height=s.image_size, steps=steps, guidance_scale=0.0, seed=seed
    )
    return lambda: model.generate(PROMPT, params)


def _image_entry(
    model: DiffusionImageModel,
    dev: Device,
    s: Settings,
    variant: str,
    load_s: float,
    weights_gib: float,
    first_s: float | None = None,
) -> dict[str, Any]:
    """One image variant: the wrapper's warm-up, `generate` per step count, one UNet forward."""
    import torch

    print(f"  image {variant} ...", flush=True)
    pipe = model.pipeline
    dev.reset_peak()
    entry: dict[str, Any] = {"load_s": load_s, "weights_gib": weights_gib}
    with _quiet():
        if first_s is None:
            # The served warm-up (64x64, 1 step); not once compiled, where a second
            # shape would recompile the UNet with dynamic shapes.
            entry["wrapper_warm_up_s"] = dev.timed(model.warm_up)
        if s.full_size_warm_up:
            entry["first_full_size_s"] = dev.timed(_generate(model, s, steps=1, seed=0))
        if first_s is not None:
            entry["compile_first_call_s"] = first_s
        generate: dict[str, list[float]] = {}
        for steps in s.image_steps:
            call = _generate(model, s, steps=steps, seed=1)
            generate[str(steps)] = [dev.timed(call) for _ in range(s.image_repeats)]
    entry["generate_s"] = generate
    entry["generate_p50_ms"] = {k: median(v) * 1000 for k, v in generate.items()}
    if len(s.image_steps) > 1:
        lo, hi = min(s.image_steps), max(s.image_steps)
        entry["per_step_ms"] = (
            entry["generate_p50_ms"][str(hi)] - entry["generate_p50_ms"][str(lo)]
        ) / (hi - lo)
    # The UNet alone: one denoising forward at the 512x512 latent size, batch 1 (no CFG),
    # with inputs of the shapes and dtypes the pipeline gives it.
    unet = pipe.unet
    dtype = pipe.unet.dtype
    side = s.image_size // pipe.vae_scale_factor
    generator = torch.Generator(device="cpu").manual_seed(2)
    latents = torch.randn((1, 4, side, side), generator=generator).to(dev.name, dtype)
    text = torch.randn((1, 77, unet.config.cross_attention_dim), generator=generator).to(
        dev.name, dtype
    )
    timestep = torch.tensor(999, device=dev.name)  # 0-d, as the pipeline's loop passes

    def forward() -> None:
        unet(latents, timestep, encoder_hidden_states=text, return_dict=False)

    with torch.inference_mode():
        forward()  # untimed: a first call at this shape (and a compile, if compiled)
        unet_s = [dev.timed(forward) for _ in range(s.unet_repeats)]
    entry["unet_s"] = unet_s
    entry["unet_p50_ms"] = median(unet_s) * 1000
    if "1" in entry["generate_p50_ms"]:  # text encoder, VAE decode, image conversion
        entry["one_step_minus_unet_ms"] = entry["generate_p50_ms"]["1"] - entry["unet_p50_ms"]
    entry["peak_gib"] = dev.peak_gib()
    print(
        f"    {variant}: generate p50 ms {fmt_dict(entry['generate_p50_ms'])}, "
        f"UNet {entry['unet_p50_ms']:.0f} ms",
        flush=True,
    )
    return entry


def _image(
    path: Path, dev: Device, s: Settings, compile_mode: str | None, params: dict[str, int]
) -> dict[str, Any]:
    import torch

    from deployments.configs import ImageGeneratorConfig
    from deployments.diffusion_model import DiffusionImageModel

    results: dict[str, Any] = {}
    for dtype in s.dtypes:
        variant = SHORT_DTYPE[dtype]
        model: DiffusionImageModel | None = None
        try:
            dev.release()
            before = dev.allocated_gib()
            t0 = time.perf_counter()
            model = DiffusionImageModel(
                ImageGeneratorConfig(
                    model=str(path),
                    device=dev.config_name,
                    dtype=dtype,
                    warm_up=False,
                    torch_threads=dev.torch_threads,
                )
            )
            load_s = time.perf_counter() - t0
            weights = dev.allocated_gib() - before
            if "unet" not in params:
                params.update(
                    unet=_params(model.pipeline.unet),
                    vae=_params(model.pipeline.vae),
                    text_encoder=_params(model.pipeline.text_encoder),
                )
            results[variant] = _image_entry(model, dev, s, variant, load_s, weights)
            if dtype == "float16" and s.channels_last:
                variant = "fp16 + channels_last"
                pipe = model.pipeline
                pipe.unet.to(memory_format=torch.channels_last)
                pipe.vae.to(memory_format=torch.channels_last)
                results[variant] = _image_entry(model, dev, s, variant, load_s, weights)
                if compile_mode:
                    variant = f"fp16 + channels_last + torch.compile ({compile_mode})"
                    pipe.unet = torch.compile(pipe.unet, mode=compile_mode)
                    # The first call compiles: timed on its own, then the usual measurement.
                    first = dev.timed(_generate(model, s, steps=1, seed=0))
                    results[variant] = _image_entry(
                        model, dev, s, variant, load_s, weights, first_s=first
                    )
        except Exception as exc:  # noqa: BLE001 - one variant failing must not lose the rest
            _variant_error(results, variant, exc)
        finally:
            model = None  # released before the next variant's model is built
            if compile_mode:
                torch._dynamo.reset()
            dev.release()
    return results


# --- CLIP -----------------------------------------------------------------------------------


def _embed_all(model: ClipModel, chunks: list[list[bytes]]) -> Callable[[], object]:
    """One `embed_images` call per chunk."""
    return lambda: [model.embed_images(x) for x in chunks]


def _clip(path: Path, dev: Device, s: Settings, params: dict[str, int]) -> dict[str, Any]:
    from deployments.clip_model import ClipModel
    from deployments.configs import ClipEmbedderConfig

    size = _clip_image_size(path)
    largest = max(s.clip_batches)

    def measure(dtype: TorchDType, variant: str) -> dict[str, Any]:
        model, entry = dev.load(
            lambda: ClipModel(
                ClipEmbedderConfig(
                    model=f"local-dir:{path}",
                    device=dev.config_name,
                    dtype=dtype,
                    warm_up=False,
                    torch_threads=dev.torch_threads,
                )
            )
        )
        if "clip" not in params:
            params.update(clip=_params(model.model), clip_visual=_params(model.model.visual))
        dev.reset_peak()
        entry["wrapper_warm_up_s"] = dev.timed(model.warm_up)
        model.embed_images(random_images(largest, seed=99, size=size))  # untimed
        rates: dict[str, list[float]] = {str(b): [] for b in s.clip_batches}
        for r in range(s.clip_rounds):
            images = random_images(largest, seed=100 + r, size=size)
            for batch in s.clip_batches:
                chunks = [images[i : i + batch] for i in range(0, largest, batch)]
                seconds = dev.timed(_embed_all(model, chunks))
                rates[str(batch)].append(largest / seconds)
        entry["images_per_s_rounds"] = rates
        entry["images_per_s"] = {k: median(v) for k, v in rates.items()}
        entry["peak_gib"] = dev.peak_gib()
        print(f"    {variant}: images/s {fmt_dict(entry['images_per_s'], 1)}", flush=True)
        return entry

    return _each_variant(dev, s.dtypes, "clip", measure)


# --- voice ----------------------------------------------------------------------------------


def _voice(
    paths: dict[str, Path],
    asr: Path,
    dev: Device,
    s: Settings,
    params: dict[str, int],
    f5_config: str,
) -> dict[str, Any]:
    import soundfile as sf

    from deployments.configs import VoiceClonerConfig
    from deployments.voice_model import VoiceModel

    ref, ref_sr = sf.read(io.BytesIO(reference_wav(REF_SECONDS)), dtype="float32")

    def measure(dtype: TorchDType, variant: str) -> dict[str, Any]:
        model, entry = dev.load(
            lambda: VoiceModel(
                VoiceClonerConfig(
                    model_config_name=f5_config,
                    checkpoint=str(paths["f5tts"] / "model.safetensors"),
                    vocab=str(paths["f5tts"] / "vocab.txt"),
                    vocoder=str(paths["vocos"]),
                    asr_model=str(asr),
                    device=dev.config_name,
                    dtype=dtype,
                    warm_up=False,
                    torch_threads=dev.torch_threads,
                )
            )
        )
        if "f5tts_dit" not in params:
            params.update(f5tts_dit=_params(model.model.transformer), vocos=_params(model.vocoder))
        dev.reset_peak()
        entry["wrapper_warm_up_s"] = dev.timed(model.warm_up)
        runs: dict[str, list[dict[str, float]]] = {}
        for nfe in s.voice_nfe:
            runs[str(nfe)] = []
            for i in range(s.voice_repeats):
                t0 = time.perf_counter()
                speech = model.synthesize(
                    ref, ref_sr, REF_TEXT, s.voice_text, nfe_steps=nfe, seed=i
                )
                seconds = time.perf_counter() - t0
                runs[str(nfe)].append(
                    {
                        "seconds": seconds,
                        "audio_s": speech.duration_s,
                        "rtf": seconds / speech.duration_s,
                        "chunks": speech.chunks,
                    }
                )
        entry["runs"] = runs
        entry["rtf"] = {k: median(r["rtf"] for r in v) for k, v in runs.items()}
        entry["seconds"] = {k: median(r["seconds"] for r in v) for k, v in runs.items()}
        entry["audio_s"] = {k: median(r["audio_s"] for r in v) for k, v in runs.items()}
        if len(s.voice_nfe) > 1:
            lo, hi = min(s.voice_nfe), max(s.voice_nfe)
            entry["per_nfe_step_s"] = (entry["seconds"][str(hi)] - entry["seconds"][str(lo)]) / (
                hi - lo
            )
        entry["peak_gib"] = dev.peak_gib()
        print(f"    {variant}: RTF {fmt_dict(entry['rtf'], 3)}", flush=True)
        return entry

    return _each_variant(dev, s.dtypes, "voice", measure)

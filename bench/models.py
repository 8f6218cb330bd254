"""Benchmark 6, real-sized models with random weights: the served model paths at production
size, for the GPU table.

The three model directories are written by the tiny-model builders of `serve_app.tiny` at
real sizes, with random weights (stored in fp16 to halve disk and load time; every loader
casts them to the configured dtype), so no hub is needed:

- image: Stable Diffusion 2.1's architecture, as sd-turbo has it (UNet 866M parameters, the
  SD VAE, OpenCLIP ViT-H's text tower at the 23 layers SD 2.x uses), the tiny tokenizer and
  the tiny pipeline's DDIM scheduler (trailing spacing, as sd-turbo starts from t=999);
- CLIP: open_clip's "ViT-B-32" config, in the local-directory format;
- voice: f5-tts's packaged F5TTS_v1_Base config and vocabulary, a Vocos vocoder the size of
  charactr/vocos-mel-24khz, and the tiny Whisper (not timed: a transcript is always given).

Each is loaded through the production wrapper (`DiffusionImageModel`, `ClipModel`,
`VoiceModel` with their configs), and the timed calls are the ones the deployments make:
`generate` (512x512, guidance 0 as sd-turbo uses), `embed_images` (224x224 JPEGs, one at a
time and 32 at once) and `synthesize` (a 3 s reference; real-time factor = synthesis seconds
over output audio seconds). The UNet forward alone is timed on the loaded pipeline's UNet.

Variants, each against the fp32 baseline of the same run: on CUDA, fp16 and bf16 through the
configs' dtype; for the image model also `channels_last` on the UNet and VAE, and with
`--compile` `torch.compile` of the UNet, both applied here to the loaded pipeline's modules
(production code unchanged). On the CPU only fp32 runs, with fewer repeats, fewer F5-TTS
steps and a shorter text (stated in the section). Random weights make the images and audio
noise: only times, memory and parameter counts mean anything.
"""

from __future__ import annotations

import gc
import io
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from bench.common import Context, Section, fmt, md_table, median, random_images, reference_wav
from serve_app.tiny.diffusion import PipelineSizes

# --- the real sizes ---------------------------------------------------------------------------

# stabilityai/sd-turbo = Stable Diffusion 2.1: its UNet, VAE and text-encoder configs.
SD_TURBO = PipelineSizes(
    unet={
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 1024,
        "attention_head_dim": (5, 10, 20, 20),
        "use_linear_projection": True,
    },
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": 512,
    },
    # OpenCLIP ViT-H/14's text tower, 23 of its 24 layers (SD 2.x uses the penultimate
    # layer), with the real 49408-token embedding; the tiny tokenizer uses its first ids.
    text_encoder={
        "vocab_size": 49408,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 1024,
    },
)
CLIP_ARCH = "ViT-B-32"
F5_CONFIG = "F5TTS_v1_Base"
# charactr/vocos-mel-24khz: backbone width 512, 1536 inner, 8 ConvNeXt layers; ISTFT head.
VOCOS_SIZE = {"dim": 512, "intermediate_dim": 1536, "num_layers": 8}
WEIGHTS_DTYPE = "float16"

PROMPT = "a photo of a red cat on the blue tiny dog"
REF_SECONDS = 3.0
REF_TEXT = "Some call me nature, others call me mother nature."
# ~10 s of speech at the reference's speaking rate (f5-tts sizes the output from it).
LONG_TEXT = (
    "The quick brown fox jumps over the lazy dog, while a gentle breeze carries the scent of "
    "fresh bread from the bakery down the narrow street to the old harbour."
)
SHORT_TEXT = "A short sentence for a timing run."  # ~2.5 s


def clip_model_cfg() -> dict[str, Any]:
    """open_clip's own ViT-B-32 model config."""
    import open_clip

    cfg = open_clip.get_model_config(CLIP_ARCH)
    if cfg is None:
        raise RuntimeError(f"open_clip has no {CLIP_ARCH} config")
    return cfg


def clip_preprocess_cfg(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The tiny CLIP's preprocessing (OpenAI mean/std, bicubic) at the model's image size."""
    from serve_app.tiny.clip import PREPROCESS_CFG

    return {**PREPROCESS_CFG, "size": model_cfg["vision_cfg"]["image_size"]}


def f5_arch() -> dict[str, Any]:
    """`model.arch` of f5-tts's packaged F5TTS_v1_Base config."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(str(files("f5_tts") / "configs" / f"{F5_CONFIG}.yaml"))
    return dict(OmegaConf.to_container(cfg.model.arch, resolve=True))


def f5_tokens() -> list[str]:
    """The vocabulary f5-tts ships (and loads by default), read as its tokenizer reads it."""
    path = files("f5_tts").joinpath("infer/examples/vocab.txt")
    with open(str(path), encoding="utf-8") as f:
        return [line[:-1] for line in f]


def build_real_models(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write the real-sized random-weight models under `root` (idempotent); return their
    paths. Several minutes on a small CPU, mostly the UNet's random initialisation."""
    from serve_app.tiny.clip import build_tiny_clip
    from serve_app.tiny.diffusion import build_tiny_diffusion_pipeline
    from serve_app.tiny.voice import build_tiny_f5tts, build_tiny_vocos, vocos_config

    paths = {}
    steps: list[tuple[str, Callable[[], Path]]] = [
        ("diffusion", lambda: build_tiny_diffusion_pipeline(
            root / "sd-turbo-random", seed, sizes=SD_TURBO, dtype=WEIGHTS_DTYPE)),
        ("clip", lambda: build_tiny_clip(
            root / "vit-b-32-random", seed, model_cfg=clip_model_cfg(),
            preprocess_cfg=clip_preprocess_cfg(clip_model_cfg()), dtype=WEIGHTS_DTYPE)),
        ("f5tts", lambda: build_tiny_f5tts(
            root / "f5tts-v1-base-random", seed, arch=f5_arch(), tokens=f5_tokens(),
            name=f"{F5_CONFIG}_random", dtype=WEIGHTS_DTYPE)),
        ("vocos", lambda: build_tiny_vocos(
            root / "vocos-mel-24khz-random", seed, config=vocos_config(**VOCOS_SIZE))),
    ]
    for name, build in steps:
        t0 = time.perf_counter()
        paths[name] = build()
        print(f"  {name}: {paths[name]} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return paths


# --- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """How much of each measurement a run does (CUDA / CPU, full / quick)."""

    image_size: int
    image_steps: tuple[int, ...]
    image_repeats: int
    unet_repeats: int
    full_size_warm_up: bool  # an untimed 512x512 run after the wrapper's own warm-up
    clip_rounds: int
    clip_batches: tuple[int, ...]
    voice_nfe: tuple[int, ...]
    voice_repeats: int
    voice_text: str
    dtypes: tuple[str, ...]
    channels_last: bool
    note: str = ""


def settings_for(cuda: bool, quick: bool) -> Settings:
    if cuda:
        return Settings(
            image_size=512, image_steps=(1, 4), image_repeats=3 if quick else 5,
            unet_repeats=5 if quick else 20, full_size_warm_up=True,
            clip_rounds=3 if quick else 5, clip_batches=(1, 32),
            voice_nfe=(32, 16), voice_repeats=2 if quick else 3, voice_text=LONG_TEXT,
            dtypes=("float32", "float16", "bfloat16"), channels_last=True,
        )
    note = ("On the CPU: fp32 only (fp16/bf16, `channels_last` and `torch.compile` need CUDA: "
            "`python -m bench --only models --device cuda [--compile]`) and the wrapper's own "
            f"small warm-up only; torch on all {os.cpu_count()} cores")
    if quick:
        return Settings(
            image_size=512, image_steps=(1,), image_repeats=1, unet_repeats=1,
            full_size_warm_up=False, clip_rounds=2, clip_batches=(1, 32),
            voice_nfe=(4, 2), voice_repeats=1, voice_text=SHORT_TEXT,
            dtypes=("float32",), channels_last=False,
            note=note + "; quick: 1 image step, one run of each, F5-TTS at NFE 4 and 2 with a "
                        "short text (about 2 s of audio).",
        )
    return Settings(
        image_size=512, image_steps=(1, 4), image_repeats=2, unet_repeats=2,
        full_size_warm_up=False, clip_rounds=3, clip_batches=(1, 32),
        voice_nfe=(16, 8), voice_repeats=1, voice_text=LONG_TEXT,
        dtypes=("float32",), channels_last=False,
        note=note + "; F5-TTS at NFE 16 and 8, not 32 (minutes per sentence here), one run "
                    "each.",
    )


# --- measuring ------------------------------------------------------------------------------

SHORT_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


class Device:
    """The torch device under test, its synchronisation and its memory counters."""

    def __init__(self, name: str) -> None:
        import torch

        self.torch = torch
        self.name = name
        self.cuda = name.startswith("cuda")
        if self.cuda and not torch.cuda.is_available():
            raise RuntimeError(f"--device {name}: CUDA is not available here")
        self.description = (torch.cuda.get_device_name(torch.device(name))
                            if self.cuda else "CPU")
        # Set on every model: torch's thread count is process-wide, and the benchmarks run
        # before this one leave it at 1 (their tiny models run on one thread).
        self.torch_threads = os.cpu_count() or 1

    def load(self, factory: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
        """Build a model once the previous one is released: the model, its load seconds and
        the device memory its weights took."""
        self.release()
        before = self.allocated_gib()
        started = time.perf_counter()
        model = factory()
        return model, {"load_s": time.perf_counter() - started,
                       "weights_gib": self.allocated_gib() - before}

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.name)

    def allocated_gib(self) -> float:
        return self.torch.cuda.memory_allocated(self.name) / 2**30 if self.cuda else float("nan")

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.name)

    def peak_gib(self) -> float:
        if not self.cuda:
            return float("nan")
        return self.torch.cuda.max_memory_allocated(self.name) / 2**30

    def release(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def timed(self, call: Callable[[], Any]) -> float:
        """Seconds of one `call()`, the device synchronised before and after."""
        self.sync()
        t0 = time.perf_counter()
        call()
        self.sync()
        return time.perf_counter() - t0


@contextmanager
def _quiet() -> Iterator[None]:
    """Random weights give NaN images; their uint8 cast warns. Timing is unaffected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _params(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _variant_error(results: dict[str, Any], variant: str, exc: BaseException) -> None:
    results[variant] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    print(f"  {variant} failed: {results[variant]['error']}", flush=True)


def _each_variant(dev: Device, dtypes: tuple[str, ...], what: str,
                  measure: Callable[[str, str], dict[str, Any]]) -> dict[str, Any]:
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


def _image(path: Path, dev: Device, s: Settings, compile_mode: str | None,
           params: dict[str, int]) -> dict[str, Any]:
    import torch

    from deployments.configs import ImageGeneratorConfig
    from deployments.diffusion_model import DiffusionImageModel
    from core.types import ImageParams

    results: dict[str, Any] = {}

    def measure(model: DiffusionImageModel, variant: str, load_s: float, weights_gib: float,
                first_s: float | None = None) -> None:
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
                entry["first_full_size_s"] = dev.timed(lambda: model.generate(PROMPT, ImageParams(
                    width=s.image_size, height=s.image_size, steps=1, guidance_scale=0.0,
                    seed=0)))
            if first_s is not None:
                entry["compile_first_call_s"] = first_s
            generate: dict[str, list[float]] = {}
            for steps in s.image_steps:
                params_ = ImageParams(width=s.image_size, height=s.image_size, steps=steps,
                                      guidance_scale=0.0, seed=1)
                generate[str(steps)] = [dev.timed(lambda p=params_: model.generate(PROMPT, p))
                                        for _ in range(s.image_repeats)]
        entry["generate_s"] = generate
        entry["generate_p50_ms"] = {k: median(v) * 1000 for k, v in generate.items()}
        if len(s.image_steps) > 1:
            lo, hi = min(s.image_steps), max(s.image_steps)
            entry["per_step_ms"] = ((entry["generate_p50_ms"][str(hi)]
                                     - entry["generate_p50_ms"][str(lo)]) / (hi - lo))
        # The UNet alone: one denoising forward at the 512x512 latent size, batch 1 (no CFG),
        # with inputs of the shapes and dtypes the pipeline gives it.
        unet = pipe.unet
        dtype = pipe.unet.dtype
        side = s.image_size // pipe.vae_scale_factor
        generator = torch.Generator(device="cpu").manual_seed(2)
        latents = torch.randn((1, 4, side, side), generator=generator).to(dev.name, dtype)
        text = torch.randn((1, 77, unet.config.cross_attention_dim), generator=generator
                           ).to(dev.name, dtype)
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
        results[variant] = entry
        print(f"    {variant}: generate p50 ms {fmt_dict(entry['generate_p50_ms'])}, "
              f"UNet {entry['unet_p50_ms']:.0f} ms", flush=True)

    for dtype in s.dtypes:
        variant = SHORT_DTYPE[dtype]
        model = None
        try:
            dev.release()
            before = dev.allocated_gib()
            t0 = time.perf_counter()
            model = DiffusionImageModel(ImageGeneratorConfig(
                model=str(path), device=dev.name, dtype=dtype, warm_up=False,
                torch_threads=dev.torch_threads))
            load_s = time.perf_counter() - t0
            weights = dev.allocated_gib() - before
            if "unet" not in params:
                params.update(unet=_params(model.pipeline.unet), vae=_params(model.pipeline.vae),
                              text_encoder=_params(model.pipeline.text_encoder))
            measure(model, variant, load_s, weights)
            if dtype == "float16" and s.channels_last:
                variant = "fp16 + channels_last"
                pipe = model.pipeline
                pipe.unet.to(memory_format=torch.channels_last)
                pipe.vae.to(memory_format=torch.channels_last)
                measure(model, variant, load_s, weights)
                if compile_mode:
                    variant = f"fp16 + channels_last + torch.compile ({compile_mode})"
                    pipe.unet = torch.compile(pipe.unet, mode=compile_mode)
                    # The first call compiles: timed on its own, then the usual measurement.
                    first = dev.timed(lambda: model.generate(PROMPT, ImageParams(
                        width=s.image_size, height=s.image_size, steps=1, guidance_scale=0.0,
                        seed=0)))
                    measure(model, variant, load_s, weights, first_s=first)
        except Exception as exc:  # noqa: BLE001 - one variant failing must not lose the rest
            _variant_error(results, variant, exc)
        finally:
            model = None
            if compile_mode:
                torch._dynamo.reset()
            dev.release()
    return results


def fmt_dict(values: dict[str, float], digits: int = 0) -> str:
    return ", ".join(f"{k}: {fmt(v, digits)}" for k, v in values.items())


def _clip(path: Path, dev: Device, s: Settings, params: dict[str, int]) -> dict[str, Any]:
    from deployments.clip_model import ClipModel
    from deployments.configs import ClipEmbedderConfig

    size = _clip_image_size(path)
    largest = max(s.clip_batches)

    def measure(dtype: str, variant: str) -> dict[str, Any]:
        model, entry = dev.load(lambda d=dtype: ClipModel(ClipEmbedderConfig(
            model=f"local-dir:{path}", device=dev.name, dtype=d, warm_up=False,
            torch_threads=dev.torch_threads)))
        if "clip" not in params:
            params.update(clip=_params(model.model), clip_visual=_params(model.model.visual))
        dev.reset_peak()
        entry["wrapper_warm_up_s"] = dev.timed(model.warm_up)
        model.embed_images(random_images(largest, seed=99, size=size))  # untimed
        rates: dict[str, list[float]] = {str(b): [] for b in s.clip_batches}
        for r in range(s.clip_rounds):
            images = random_images(largest, seed=100 + r, size=size)
            for batch in s.clip_batches:
                chunks = [images[i:i + batch] for i in range(0, largest, batch)]
                seconds = dev.timed(lambda c=chunks: [model.embed_images(x) for x in c])
                rates[str(batch)].append(largest / seconds)
        entry["images_per_s_rounds"] = rates
        entry["images_per_s"] = {k: median(v) for k, v in rates.items()}
        entry["peak_gib"] = dev.peak_gib()
        print(f"    {variant}: images/s {fmt_dict(entry['images_per_s'], 1)}", flush=True)
        return entry

    return _each_variant(dev, s.dtypes, "clip", measure)


def _clip_image_size(path: Path) -> int:
    from serve_app.tiny.clip import CONFIG_FILE

    return int(json.loads((path / CONFIG_FILE).read_text())["preprocess_cfg"]["size"])


def _voice(paths: dict[str, Path], asr: Path, dev: Device, s: Settings,
           params: dict[str, int], f5_config: str) -> dict[str, Any]:
    import soundfile as sf

    from deployments.configs import VoiceClonerConfig
    from deployments.voice_model import VoiceModel

    ref, ref_sr = sf.read(io.BytesIO(reference_wav(REF_SECONDS)), dtype="float32")

    def measure(dtype: str, variant: str) -> dict[str, Any]:
        model, entry = dev.load(lambda d=dtype: VoiceModel(VoiceClonerConfig(
            model_config_name=f5_config,
            checkpoint=str(paths["f5tts"] / "model.safetensors"),
            vocab=str(paths["f5tts"] / "vocab.txt"),
            vocoder=str(paths["vocos"]),
            asr_model=str(asr),
            device=dev.name, dtype=d, warm_up=False, torch_threads=dev.torch_threads,
        )))
        if "f5tts_dit" not in params:
            params.update(f5tts_dit=_params(model.model.transformer),
                          vocos=_params(model.vocoder))
        dev.reset_peak()
        entry["wrapper_warm_up_s"] = dev.timed(model.warm_up)
        runs: dict[str, list[dict[str, float]]] = {}
        for nfe in s.voice_nfe:
            runs[str(nfe)] = []
            for i in range(s.voice_repeats):
                t0 = time.perf_counter()
                speech = model.synthesize(ref, ref_sr, REF_TEXT, s.voice_text,
                                          nfe_steps=nfe, seed=i)
                seconds = time.perf_counter() - t0
                runs[str(nfe)].append({"seconds": seconds, "audio_s": speech.duration_s,
                                       "rtf": seconds / speech.duration_s,
                                       "chunks": speech.chunks})
        entry["runs"] = runs
        entry["rtf"] = {k: median(r["rtf"] for r in v) for k, v in runs.items()}
        entry["seconds"] = {k: median(r["seconds"] for r in v) for k, v in runs.items()}
        entry["audio_s"] = {k: median(r["audio_s"] for r in v) for k, v in runs.items()}
        if len(s.voice_nfe) > 1:
            lo, hi = min(s.voice_nfe), max(s.voice_nfe)
            entry["per_nfe_step_s"] = ((entry["seconds"][str(hi)] - entry["seconds"][str(lo)])
                                       / (hi - lo))
        entry["peak_gib"] = dev.peak_gib()
        print(f"    {variant}: RTF {fmt_dict(entry['rtf'], 3)}", flush=True)
        return entry

    return _each_variant(dev, s.dtypes, "voice", measure)


def run(ctx: Context, device: str, compile_mode: str | None = None,
        models_dir: Path | None = None) -> Section:
    started = time.perf_counter()
    dev = Device(device)
    s = settings_for(dev.cuda, ctx.quick)
    if compile_mode and not dev.cuda:
        print("  --compile needs CUDA: ignored on the CPU", flush=True)
        compile_mode = None
    root = models_dir or ctx.subdir("real-models")
    print(f"  building the real-sized models into {root} ...", flush=True)
    t0 = time.perf_counter()
    paths = build_real_models(root)
    build_s = time.perf_counter() - t0
    figures = measure(paths, ctx.models / "whisper", dev, s, compile_mode)
    figures["build_s"] = build_s
    return _report(figures, s, time.perf_counter() - started)


def measure(paths: dict[str, Path], asr: Path, dev: Device, s: Settings,
            compile_mode: str | None = None, f5_config: str = F5_CONFIG) -> dict[str, Any]:
    """Every measurement of the section on the models at `paths` (diffusion, clip, f5tts,
    vocos: as `build_real_models` returns), `asr` the Whisper directory."""
    params: dict[str, int] = {}
    figures: dict[str, Any] = {
        "device": dev.name, "device_name": dev.description, "settings": asdict(s),
        "compile_mode": compile_mode,
        "disk_gib": {name: _disk_gib(path) for name, path in paths.items()},
        "clip_image_size": _clip_image_size(paths["clip"]),
        "params": params,
    }
    figures["image"] = _image(paths["diffusion"], dev, s, compile_mode, params)
    figures["clip"] = _clip(paths["clip"], dev, s, params)
    figures["voice"] = _voice(paths, asr, dev, s, params, f5_config)
    return figures


def _disk_gib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**30


# --- report ---------------------------------------------------------------------------------


def _ratio(base: float | None, value: float | None) -> str:
    if not base or not value or base != base or value != value:
        return "—"
    return f"{base / value:.2f}x"


def _gib(value: float | None) -> str:
    return "—" if value is None or value != value else f"{value:.2f}"


def _millions(n: int | None) -> str:
    return f"{n / 1e6:,.1f}M" if n else "—"


def _report(figures: dict[str, Any], s: Settings, seconds: float) -> Section:
    p = figures["params"]
    disk = figures["disk_gib"]
    params_table = md_table(["model", "architecture", "parameters", "on disk, GiB"], [
        ["image: UNet", "SD 2.1 / sd-turbo UNet2DConditionModel", _millions(p.get("unet")),
         _gib(disk.get("diffusion"))],
        ["image: VAE", "SD AutoencoderKL (128-256-512-512)", _millions(p.get("vae")), "(above)"],
        ["image: text encoder", "CLIPTextModel, OpenCLIP ViT-H text, 23 layers",
         _millions(p.get("text_encoder")), "(above)"],
        ["CLIP", f"open_clip {CLIP_ARCH} (image tower {_millions(p.get('clip_visual'))})",
         _millions(p.get("clip")), _gib(disk.get("clip"))],
        ["voice: F5-TTS DiT", f"{F5_CONFIG} (packaged vocabulary)", _millions(p.get("f5tts_dit")),
         _gib(disk.get("f5tts"))],
        ["voice: Vocos", "vocos-mel-24khz size (512, 1536, 8 layers)", _millions(p.get("vocos")),
         _gib(disk.get("vocos"))],
    ])
    cuda = figures["device"].startswith("cuda")
    peak_header = ["peak GPU GiB (weights)"] if cuda else []

    def peak(entry: dict[str, Any]) -> list[str]:
        return ([f"{_gib(entry.get('peak_gib'))} ({_gib(entry.get('weights_gib'))})"]
                if cuda else [])

    image = figures["image"]
    base = image.get("fp32", {})
    steps = [str(x) for x in s.image_steps]
    image_rows = []
    for variant, e in image.items():
        if "error" in e:
            image_rows.append([variant, f"failed: {e['error']}"] + [""] * (len(steps) + 2)
                              + [""] * len(peak_header))
            continue
        gen = e["generate_p50_ms"]
        image_rows.append(
            [variant]
            + [f"{fmt(gen[k], 0)} ({_ratio(base.get('generate_p50_ms', {}).get(k), gen[k])})"
               for k in steps]
            + [fmt(e.get("per_step_ms", float("nan")), 0),
               f"{fmt(e['unet_p50_ms'], 0)} ({_ratio(base.get('unet_p50_ms'), e['unet_p50_ms'])})",
               fmt(e.get("one_step_minus_unet_ms", float("nan")), 0)]
            + peak(e)
        )
    image_table = md_table(
        ["variant"] + [f"generate {k} step{'s' if k != '1' else ''}, p50 ms (speed-up)"
                       for k in steps]
        + ["per extra step, ms", "UNet forward, p50 ms (speed-up)",
           "1 step − UNet forward (text encoder, VAE decode, image), ms"] + peak_header,
        image_rows)

    clip = figures["clip"]
    cbase = clip.get("fp32", {}).get("images_per_s", {})
    batches = [str(b) for b in s.clip_batches]
    clip_rows = []
    for variant, e in clip.items():
        if "error" in e:
            clip_rows.append([variant, f"failed: {e['error']}"] + [""] * (len(batches) - 1)
                             + [""] * len(peak_header))
            continue
        rate = e["images_per_s"]
        clip_rows.append([variant] + [f"{fmt(rate[b], 1)} ({_ratio(rate[b], cbase.get(b))})"
                                      for b in batches] + peak(e))
    clip_table = md_table(
        ["variant"] + [f"batch {b}, images/s (speed-up)" for b in batches] + peak_header,
        clip_rows)

    voice = figures["voice"]
    vbase = voice.get("fp32", {}).get("rtf", {})
    voice_rows = []
    for variant, e in voice.items():
        if "error" in e:
            voice_rows.append([variant, "", f"failed: {e['error']}", "", ""]
                              + [""] * len(peak_header))
            continue
        for nfe in (str(n) for n in s.voice_nfe):
            voice_rows.append([variant, nfe, fmt(e["audio_s"][nfe], 1),
                               fmt(e["seconds"][nfe], 2),
                               f"{fmt(e['rtf'][nfe], 3)} ({_ratio(vbase.get(nfe), e['rtf'][nfe])})"]
                              + peak(e))
    voice_table = md_table(["variant", "NFE steps", "audio s", "synthesis s, p50",
                            "real-time factor (speed-up)"] + peak_header, voice_rows)
    per_nfe = "; ".join(f"{v} {fmt(e['per_nfe_step_s'], 3)} s" for v, e in voice.items()
                        if "per_nfe_step_s" in e)

    compiled = figures.get("compile_mode")
    markdown = "\n\n".join(filter(None, [
        f"Device: **{figures['device_name']}** (`{figures['device']}`). Random weights at "
        "production size, built here (no hub) and loaded through the production wrappers; "
        "the images and audio are noise, the times are real. Weights are stored in fp16 "
        "(Vocos in fp32) and cast to each variant's dtype when loaded. "
        f"Models built in {figures.get('build_s', float('nan')):.0f} s. Speed-ups are against "
        "fp32 in this run.",
        s.note,
        params_table,
        f"**Image** ({s.image_size}x{s.image_size}, guidance 0, `DiffusionImageModel.generate` "
        f"end to end: text encoder, UNet steps, VAE decode, uint8 image; p50 of "
        f"{s.image_repeats} run(s) each after warm-up). The UNet forward is one denoising "
        f"call at that size, batch 1, p50 of {s.unet_repeats}."
        + ("" if compiled or not cuda else " `torch.compile` not run (`--compile` adds it)."),
        image_table,
        f"**CLIP** (`ClipModel.embed_images`, {max(s.clip_batches)} new "
        f"{figures['clip_image_size']}x{figures['clip_image_size']} JPEGs per round, decoded and "
        f"preprocessed as the server does, one call per batch; median of {s.clip_rounds} "
        "round(s)).",
        clip_table,
        f"**Voice** (`VoiceModel.synthesize`, a {REF_SECONDS:g} s reference with its "
        f"transcript, text of {len(s.voice_text)} characters; real-time factor = synthesis "
        f"seconds / output audio seconds, below 1 is faster than real time; "
        f"{s.voice_repeats} run(s) per setting after warm-up).",
        voice_table,
        f"Seconds per extra NFE step (difference of the two settings): {per_nfe}."
        if per_nfe else "",
    ]))
    return Section("6. Real-sized models (random weights)", markdown, figures, seconds)

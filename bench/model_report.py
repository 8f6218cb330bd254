"""Benchmark 6's section of docs/benchmarks.md: the models' sizes, then per model a table of
its variants, each against fp32 of the same run (speed-up; on CUDA also peak and weights
memory).
"""

from __future__ import annotations

from typing import Any

from bench.context import Section
from bench.model_workload import REF_SECONDS, Settings
from bench.real_models import CLIP_ARCH, F5_CONFIG
from bench.tables import fmt, md_table


def _ratio(base: float | None, value: float | None) -> str:
    if not base or not value or base != base or value != value:
        return "—"
    return f"{base / value:.2f}x"


def _gib(value: float | None) -> str:
    return "—" if value is None or value != value else f"{value:.2f}"


def _millions(n: int | None) -> str:
    return f"{n / 1e6:,.1f}M" if n else "—"


def report(figures: dict[str, Any], s: Settings, seconds: float) -> Section:
    """Benchmark 6's section from the figures of `bench.model_measure.measure`."""
    p = figures["params"]
    disk = figures["disk_gib"]
    params_table = md_table(
        ["model", "architecture", "parameters", "on disk, GiB"],
        [
            [
                "image: UNet",
                "SD 2.1 / sd-turbo UNet2DConditionModel",
                _millions(p.get("unet")),
                _gib(disk.get("diffusion")),
            ],
            [
                "image: VAE",
                "SD AutoencoderKL (128-256-512-512)",
                _millions(p.get("vae")),
                "(above)",
            ],
            [
                "image: text encoder",
                "CLIPTextModel, OpenCLIP ViT-H text, 23 layers",
                _millions(p.get("text_encoder")),
                "(above)",
            ],
            [
                "CLIP",
                f"open_clip {CLIP_ARCH} (image tower {_millions(p.get('clip_visual'))})",
                _millions(p.get("clip")),
                _gib(disk.get("clip")),
            ],
            [
                "voice: F5-TTS DiT",
                f"{F5_CONFIG} (packaged vocabulary)",
                _millions(p.get("f5tts_dit")),
                _gib(disk.get("f5tts")),
            ],
            [
                "voice: Vocos",
                "vocos-mel-24khz size (512, 1536, 8 layers)",
                _millions(p.get("vocos")),
                _gib(disk.get("vocos")),
            ],
        ],
    )
    cuda = figures["device"].startswith("cuda")
    peak_header = ["peak GPU GiB (weights)"] if cuda else []

    def peak(entry: dict[str, Any]) -> list[str]:
        return [f"{_gib(entry.get('peak_gib'))} ({_gib(entry.get('weights_gib'))})"] if cuda else []

    image = figures["image"]
    base = image.get("fp32", {})
    steps = [str(x) for x in s.image_steps]
    image_rows = []
    for variant, e in image.items():
        if "error" in e:
            image_rows.append(
                [variant, f"failed: {e['error']}"]
                + [""] * (len(steps) + 2)
                + [""] * len(peak_header)
            )
            continue
        gen = e["generate_p50_ms"]
        image_rows.append(
            [variant]
            + [
                f"{fmt(gen[k], 0)} ({_ratio(base.get('generate_p50_ms', {}).get(k), gen[k])})"
                for k in steps
            ]
            + [
                fmt(e.get("per_step_ms", float("nan")), 0),
                f"{fmt(e['unet_p50_ms'], 0)} ({_ratio(base.get('unet_p50_ms'), e['unet_p50_ms'])})",
                fmt(e.get("one_step_minus_unet_ms", float("nan")), 0),
            ]
            + peak(e)
        )
    image_table = md_table(
        ["variant"]
        + [f"generate {k} step{'s' if k != '1' else ''}, p50 ms (speed-up)" for k in steps]
        + [
            "per extra step, ms",
            "UNet forward, p50 ms (speed-up)",
            "1 step − UNet forward (text encoder, VAE decode, image), ms",
        ]
        + peak_header,
        image_rows,
    )

    clip = figures["clip"]
    cbase = clip.get("fp32", {}).get("images_per_s", {})
    batches = [str(b) for b in s.clip_batches]
    clip_rows = []
    for variant, e in clip.items():
        if "error" in e:
            clip_rows.append(
                [variant, f"failed: {e['error']}"]
                + [""] * (len(batches) - 1)
                + [""] * len(peak_header)
            )
            continue
        rate = e["images_per_s"]
        clip_rows.append(
            [variant]
            + [f"{fmt(rate[b], 1)} ({_ratio(rate[b], cbase.get(b))})" for b in batches]
            + peak(e)
        )
    clip_table = md_table(
        ["variant"] + [f"batch {b}, images/s (speed-up)" for b in batches] + peak_header, clip_rows
    )

    voice = figures["voice"]
    vbase = voice.get("fp32", {}).get("rtf", {})
    voice_rows = []
    for variant, e in voice.items():
        if "error" in e:
            voice_rows.append(
                [variant, "", f"failed: {e['error']}", "", ""] + [""] * len(peak_header)
            )
            continue
        for nfe in (str(n) for n in s.voice_nfe):
            voice_rows.append(
                [
                    variant,
                    nfe,
                    fmt(e["audio_s"][nfe], 1),
                    fmt(e["seconds"][nfe], 2),
                    f"{fmt(e['rtf'][nfe], 3)} ({_ratio(vbase.get(nfe), e['rtf'][nfe])})",
                ]
                + peak(e)
            )
    voice_table = md_table(
        ["variant", "NFE steps", "audio s", "synthesis s, p50", "real-time factor (speed-up)"]
        + peak_header,
        voice_rows,
    )
    per_nfe = "; ".join(
        f"{v} {fmt(e['per_nfe_step_s'], 3)} s" for v, e in voice.items() if "per_nfe_step_s" in e
    )

    compiled = figures.get("compile_mode")
    markdown = "\n\n".join(
        filter(
            None,
            [
                f"Device: **{figures['device_name']}** (`{figures['device']}`). Random weights at "
                "production size, built here (no hub) and loaded through the production wrappers; "
                "the images and audio are noise, the times are real. Weights are stored in fp16 "
                "(Vocos in fp32) and cast to each variant's dtype when loaded. "
                f"Models built in {figures.get('build_s', float('nan')):.0f} s. "
                "Speed-ups are against fp32 in this run.",
                s.note,
                params_table,
                f"**Image** ({s.image_size}x{s.image_size}, guidance 0, "
                "`DiffusionImageModel.generate` "
                f"end to end: text encoder, UNet steps, VAE decode, uint8 image; p50 of "
                f"{s.image_repeats} run(s) each after warm-up). The UNet forward is one denoising "
                f"call at that size, batch 1, p50 of {s.unet_repeats}."
                + (
                    ""
                    if compiled or not cuda
                    else " `torch.compile` not run (`--compile` adds it)."
                ),
                image_table,
                f"**CLIP** (`ClipModel.embed_images`, {max(s.clip_batches)} new "
                f"{figures['clip_image_size']}x{figures['clip_image_size']} JPEGs per round, "
                "decoded and "
                f"preprocessed as the server does, one call per batch; median of {s.clip_rounds} "
                "round(s)).",
                clip_table,
                f"**Voice** (`VoiceModel.synthesize`, a {REF_SECONDS:g} s reference with its "
                f"transcript, text of {len(s.voice_text)} characters; real-time factor = synthesis "
                f"seconds / output audio seconds, below 1 is faster than real time; "
                f"{s.voice_repeats} run(s) per setting after warm-up).",
                voice_table,
                f"Seconds per extra NFE step (difference of the two settings): {per_nfe}."
                if per_nfe
                else "",
            ],
        )
    )
    return Section("6. Real-sized models (random weights)", markdown, figures, seconds)

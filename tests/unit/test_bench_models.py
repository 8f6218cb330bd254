"""Benchmark 6's measuring and reporting code, run on the tiny models (seconds, CPU), so that
it keeps working between the GPU runs it is written for."""

from __future__ import annotations

from pathlib import Path

from bench.context import Section
from bench.model_device import Device
from bench.model_measure import measure
from bench.model_report import report
from bench.model_workload import SHORT_TEXT, Settings
from bench.report import models_summary


def test_measures_and_reports_on_tiny_models(tiny_models_dir: Path) -> None:
    settings = Settings(
        image_size=64,
        image_steps=(1, 2),
        image_repeats=1,
        unet_repeats=1,
        full_size_warm_up=True,
        clip_rounds=1,
        clip_batches=(1, 4),
        voice_nfe=(2, 1),
        voice_repeats=1,
        voice_text=SHORT_TEXT,
        dtypes=("float32",),
        channels_last=False,
        note="tiny models",
    )
    paths = {name: tiny_models_dir / name for name in ("diffusion", "clip", "f5tts", "vocos")}
    figures = measure(
        paths,
        tiny_models_dir / "whisper",
        Device("cpu"),
        settings,
        f5_config=str(tiny_models_dir / "f5tts" / "model.yaml"),
    )

    assert set(figures["params"]) == {
        "unet",
        "vae",
        "text_encoder",
        "clip",
        "clip_visual",
        "f5tts_dit",
        "vocos",
    }
    image = figures["image"]["fp32"]
    assert set(image["generate_p50_ms"]) == {"1", "2"} and image["unet_p50_ms"] > 0
    assert "per_step_ms" in image
    assert set(figures["clip"]["fp32"]["images_per_s"]) == {"1", "4"}
    voice = figures["voice"]["fp32"]
    assert set(voice["rtf"]) == {"2", "1"} and all(v > 0 for v in voice["audio_s"].values())

    section = report(figures, settings, 1.0)
    assert section.title.startswith("6.")
    assert "failed" not in section.markdown
    for text in ("UNet forward", "batch 4, images/s", "real-time factor", "tiny models"):
        assert text in section.markdown
    rows = models_summary({"models": Section(section.title, section.markdown, figures)})
    assert [row[0].split(",")[0] for row in rows] == [
        "sd-turbo-sized 512x512 generation",
        "CLIP ViT-B-32 embedding",
        "F5-TTS v1 base real-time factor (synthesis s / audio s)",
    ]

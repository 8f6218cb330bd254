"""Benchmark 9 (`bench.reembed`) runs end to end on a tiny size with the tiny multilingual
CLIP, so that it keeps working between the runs of `python -m bench`. Nothing is timed."""

from __future__ import annotations

from pathlib import Path

from bench import reembed
from bench.context import Section
from bench.report import render_section


def test_the_reembedding_benchmark_runs_and_renders_its_section(
    tmp_path: Path, tiny_models_dir: Path
) -> None:
    result = reembed.run_all(
        tmp_path, tiny_models_dir / "clip-multilingual", None, n=6, batches=[1, 4], rounds=2
    )
    (model,) = result["models"]
    assert model["n"] == 6 and model["dim"] == 32
    assert list(model["batches"]) == ["1", "4"]
    for figures in model["batches"].values():
        assert figures["pipeline_images_per_s"] > 0 and figures["bare_images_per_s"] > 0
        assert figures["switch_s"] >= 0 and figures["embed_s"] > 0
    assert "same_image_tower_as_default" not in result

    text = render_section(Section("9. Re-embedding", reembed.markdown(result), {}, 1.0))
    assert text.startswith("## 9. Re-embedding\n\n")
    assert "| tiny xlm-roberta-base-ViT-B-32 stand-in (32-d), 6 images | 4 |" in text
    assert "real-sized model" not in text
    assert list(tmp_path.iterdir()) == []  # the catalogs and the store were temporary


def test_a_user_during_re_embedding_is_measured_at_both_batch_sizes(
    tmp_path: Path, tiny_models_dir: Path
) -> None:
    result = reembed.run_all(
        tmp_path,
        tiny_models_dir / "clip-multilingual",
        None,
        n=12,
        batches=[4],
        rounds=1,
        users=("tiny",),
    )
    users = result["models"][0]["users"]
    assert users["idle"]["batch"] > users["busy"]["batch"]
    for kind in ("idle", "busy"):
        assert users[kind]["user_calls"] >= 1 and users[kind]["images_per_s"] > 0
        assert 0 < users[kind]["user_p50_s"] <= users[kind]["user_max_s"]
    text = reembed.markdown(result)
    assert "### A user during re-embedding" in text
    assert "`IMAGE_SEARCH_REEMBED_BUSY_BATCH`=4" in text


def test_the_real_sized_clip_has_the_default_models_image_tower() -> None:
    assert reembed.same_image_tower_as_default()

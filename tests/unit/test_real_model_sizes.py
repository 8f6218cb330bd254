"""The real-sized architectures of benchmark 6 (`bench.real_models`) have the parameter counts
of the production models they stand in for. Built on the meta device: no memory, a few
seconds.

Exact counts seen with the pinned libraries are in the comments; the asserts allow 2%.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.real_models import SD_TURBO, VOCOS_SIZE, clip_model_cfg, f5_arch, f5_tokens


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sd_turbo_sizes() -> None:
    from serve_app.tiny.diffusion import clip_vocab, make_networks

    with torch.device("meta"):
        unet, vae, text_encoder = make_networks(SD_TURBO, clip_vocab())
    assert _params(unet) == pytest.approx(865.9e6, rel=0.02)  # 865,910,724
    assert _params(vae) == pytest.approx(83.65e6, rel=0.02)  # 83,653,863
    # SD 2.x's text encoder: 23 of OpenCLIP ViT-H's 24 text layers, so 340.4M, not the whole
    # tower's 354.0M (24 layers and its 1024x1024 projection).
    assert text_encoder.config.num_hidden_layers == 23
    assert _params(text_encoder) == pytest.approx(340.4e6, rel=0.02)  # 340,387,840


def test_clip_vit_b_32_size() -> None:
    from serve_app.tiny.clip import make_model

    with torch.device("meta"):
        model = make_model(clip_model_cfg())
    assert _params(model) == pytest.approx(151.3e6, rel=0.02)  # 151,277,313


def test_f5tts_v1_base_size() -> None:
    from serve_app.tiny.f5tts import make_f5tts

    tokens = f5_tokens()
    assert len(tokens) == 2545  # f5-tts's packaged vocab.txt
    arch = f5_arch()
    assert (arch["dim"], arch["depth"], arch["heads"], arch["text_dim"]) == (1024, 22, 16, 512)
    with torch.device("meta"):
        model = make_f5tts(arch, tokens)  # CFM around the DiT; all parameters are the DiT's
    assert _params(model) == _params(model.transformer)
    assert _params(model) == pytest.approx(337.1e6, rel=0.02)  # 337,096,804


def test_vocos_size(tmp_path: Path) -> None:
    import yaml
    from vocos import Vocos

    from serve_app.tiny.f5tts import vocos_config

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(vocos_config(**VOCOS_SIZE)), "utf-8")
    assert _params(Vocos.from_hparams(str(path))) == pytest.approx(13.53e6, rel=0.02)  # 13,531,650

"""Defaults are defined once (core.defaults): a config built from default settings is the
config a caller gets by constructing it with no settings at all."""

from __future__ import annotations

from pathlib import Path

from core.storage import StorageConfig
from core.types import ImageParams, VoiceParams
from deployments.configs import (
    ClipEmbedderConfig,
    PromptOptimizerConfig,
    VectorIndexConfig,
    VoiceClonerConfig,
)
from serve_app import deploy_configs
from serve_app.settings import load_settings


def test_model_configs_from_default_settings_equal_their_own_defaults() -> None:
    settings = load_settings(None)
    assert deploy_configs.clip_embedder_config(settings, "cpu", 1) == ClipEmbedderConfig(
        device="cpu", torch_threads=1
    )
    assert deploy_configs.voice_cloner_config(settings, "cpu", 1) == VoiceClonerConfig(
        device="cpu", torch_threads=1
    )
    assert deploy_configs.prompt_optimizer_config(settings) == PromptOptimizerConfig()
    assert deploy_configs.storage_config(settings) == StorageConfig()


def test_index_and_request_defaults_match() -> None:
    settings = load_settings(None, {"CLIP_EMBED_DIM": 512})
    built = deploy_configs.vector_index_config(settings)
    own = VectorIndexConfig(
        db_path=built.db_path, dim=512, max_elements=built.max_elements, storage=built.storage
    )
    assert built == own
    gateway = deploy_configs.gateway_config(settings)
    assert gateway.image_defaults == ImageParams()
    assert (settings.voice_default_nfe_steps, settings.voice_default_cfg_strength) == (
        VoiceParams().nfe_steps,
        VoiceParams().cfg_strength,
    )
    assert isinstance(built.db_path, Path)

"""Settings: seed names and defaults, .env files, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.app import AppArgs
from serve_app.deploy_configs import gateway_config, storage_config
from serve_app.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only what they set, not the developer's shell."""
    import os

    from serve_app.settings import Settings

    for name in list(os.environ):
        if name.lower() in Settings.model_fields:
            monkeypatch.delenv(name)


def test_seed_defaults() -> None:
    settings = load_settings(None)
    assert settings.image_enabled and settings.image_search_enabled and settings.voice_enabled
    assert settings.openai_prompt_model == "gpt-4.1"
    assert settings.image_search_db_path == Path("app/image_search.db")
    assert settings.image_search_db_backup_enabled is True
    assert settings.image_search_db_backup_interval_seconds == 1800
    assert settings.image_remote_prefix == "AI/POSTER/"
    assert settings.image_search_remote_prefix == "AI/SEARCH/"
    assert settings.voice_remote_prefix == "AI/VOICE/"
    assert settings.image_search_max_elements == 50000
    assert settings.image_search_max_bytes == 20971520
    assert settings.r2_enabled is False
    assert storage_config(settings).kind == "local"


def test_environment_wins_over_env_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "base.env"
    base.write_text("IMAGE_MODEL=/models/a\nIMAGE_DEFAULT_STEPS=3\nVOICE_ENABLED=0\n")
    local = tmp_path / "local.env"
    local.write_text("IMAGE_DEFAULT_STEPS=4\n")
    monkeypatch.setenv("IMAGE_MODEL", "/models/from-env")
    settings = load_settings([base, local])
    assert settings.image_model == "/models/from-env"
    assert settings.image_default_steps == 4
    assert settings.voice_enabled is False


def test_overrides_win_and_unknown_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGE_DEFAULT_STEPS", "9")
    assert load_settings(None, {"IMAGE_DEFAULT_STEPS": 2}).image_default_steps == 2
    with pytest.raises(SettingsError, match="IMAGE_DEFAULT_STPES"):
        load_settings(None, {"IMAGE_DEFAULT_STPES": 2})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMAGE_ENABLED", "maybe"),
        ("IMAGE_SEARCH_MAX_BYTES", "-1"),
        ("IMAGE_SEARCH_DB_BACKUP_INTERVAL_SECONDS", "abc"),
        ("IMAGE_DEFAULT_WIDTH", "100"),
        ("OPENAI_TIMEOUT_SECONDS", "0"),
        ("IMAGE_DEVICE", "tpu"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings(None)


def test_r2_needs_credentials_and_never_prints_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R2_ENABLED", "1")
    monkeypatch.setenv("R2_SECRET_ACCESS_KEY", "super-secret-value")
    with pytest.raises(SettingsError) as caught:
        load_settings(None)
    message = str(caught.value)
    assert "R2_ACCESS_KEY_ID" in message and "R2_BUCKET_NAME" in message
    assert "R2_ACCOUNT_ID" in message
    assert "super-secret-value" not in message


def test_r2_endpoint_is_derived_from_account_or_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "R2_ENABLED": "1",
        "R2_ACCOUNT_ID": "acc123",
        "R2_ACCESS_KEY_ID": "id",
        "R2_SECRET_ACCESS_KEY": "s3cr3t-value",
        "R2_BUCKET_NAME": "bucket",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(None)
    assert settings.s3_endpoint_url == "https://acc123.r2.cloudflarestorage.com"
    config = storage_config(settings)
    assert config.kind == "s3" and config.region == "auto" and config.bucket == "bucket"
    assert "s3cr3t-value" not in repr(config)
    monkeypatch.setenv("R2_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert load_settings(None).s3_endpoint_url == "http://127.0.0.1:9000"


def test_gateway_config_carries_defaults_and_switches() -> None:
    settings = load_settings(None, {"VOICE_ENABLED": False, "IMAGE_DEFAULT_STEPS": 3})
    config = gateway_config(settings)
    assert config.enabled == {"image": True, "image_search": True, "voice": False, "jobs": False}
    assert config.image_defaults.steps == 3


def test_app_args_reject_unknown_keys() -> None:
    with pytest.raises(ValueError):
        AppArgs.model_validate({"env_file": ".env"})
    assert AppArgs.model_validate({}).env_files == [".env"]


def test_every_setting_has_a_row_in_the_readmes_configuration_table() -> None:
    """The README's table is the operator's reference: a setting added without a row there
    is a setting nobody can find."""
    import re

    from serve_app.settings import Settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("\n## Configuration") : readme.index("\n## Production profile")]
    named = {
        name
        for line in table.splitlines()
        if line.startswith("| `")
        for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split(" | ")[0])
    }
    assert sorted({field.upper() for field in Settings.model_fields} - named) == []

"""`serve_app.tiny.model_settings` names the files the tiny builders write, as the offline
profile does."""

from __future__ import annotations

from pathlib import Path

from dotenv import dotenv_values

from serve_app.tiny import model_settings

ROOT = Path(__file__).resolve().parents[2]


def test_model_settings_match_the_offline_profile() -> None:
    offline = dotenv_values(ROOT / "configs" / "offline.env")
    settings = model_settings(Path(".models"))
    assert settings == {name: offline[name] for name in settings}


def test_model_settings_point_at_what_the_builders_wrote(tiny_models_dir: Path) -> None:
    for name, value in model_settings(tiny_models_dir).items():
        path = Path(value.removeprefix("local-dir:"))
        assert path.exists(), f"{name}={value} does not exist"

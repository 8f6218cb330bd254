"""Shared pytest configuration: offline hub access, tiers by folder, fixture modules."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.openai_fixtures import *  # noqa: E402,F401,F403
from tests.storage_fixtures import *  # noqa: E402,F401,F403

SLOW_FOLDERS = ("integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start Ray (integration, e2e) are `slow`; `-m "not slow"` skips them."""
    for item in items:
        if any(f"{os.sep}{folder}{os.sep}" in str(item.path) for folder in SLOW_FOLDERS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root holding every registered tiny model, built once per session: `<root>/<name>`."""
    from serve_app.tiny import build_tiny_models

    root = tmp_path_factory.mktemp("tiny_models")
    build_tiny_models(root)
    return root

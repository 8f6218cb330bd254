"""Shared pytest configuration; fixture modules are star-imported here."""

from tests.openai_fixtures import *  # noqa: F401,F403

# --- tiny models (serve_app.tiny) ---------------------------------------------------------
import os  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root holding every registered tiny model, built once per session: `<root>/<name>`."""
    from serve_app.tiny import build_tiny_models

    root = tmp_path_factory.mktemp("tiny_models")
    build_tiny_models(root)
    return root

from tests.storage_fixtures import *  # noqa: F401,F403,E402

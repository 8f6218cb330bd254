"""Shared pytest configuration: offline hub access, tiers by folder, fixture modules, and what
may skip (tests/support/suite_policy.py: only `gpu` tests without CUDA, and nothing else when
CI=true)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

from pathlib import Path

import pytest

from tests.openai_fixtures import *  # noqa: F403
from tests.storage_fixtures import *  # noqa: F403
from tests.support.suite_policy import (  # noqa: F401 - hooks
    pytest_make_collect_report,
    pytest_runtest_makereport,
    skip_gpu_tests_without_cuda,
)

SLOW_FOLDERS = ("integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start Ray (integration, e2e) are `slow`; `-m "not slow"` deselects them.
    Tests marked `gpu` are skipped where no CUDA device exists."""
    for item in items:
        if any(f"{os.sep}{folder}{os.sep}" in str(item.path) for folder in SLOW_FOLDERS):
            item.add_marker(pytest.mark.slow)
    skip_gpu_tests_without_cuda(items)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root holding every registered tiny model, built once per session: `<root>/<name>`."""
    from serve_app.tiny import build_tiny_models

    root = tmp_path_factory.mktemp("tiny_models")
    build_tiny_models(root)
    return root

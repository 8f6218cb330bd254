"""Pytest fixtures for the fake OpenAI-compatible server (imported by tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fake_openai import FakeOpenAIServer

__all__ = ["fake_openai", "openai_server"]


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """One fake OpenAI server for the whole session; prefer `openai_server`, which resets it."""
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def openai_server(fake_openai: FakeOpenAIServer) -> Iterator[FakeOpenAIServer]:
    """The session's fake OpenAI server, reset to mode "ok" with no recorded requests."""
    fake_openai.reset()
    yield fake_openai
    fake_openai.reset()

"""Shared fixtures: the fake OpenAI upstream."""

from __future__ import annotations

import pytest

from tests.fakes.openai_upstream import FakeOpenAI, start_fake_openai


@pytest.fixture
def fake_openai() -> FakeOpenAI:
    """A fake OpenAI server on 127.0.0.1 (echoes the last user message)."""
    fake = start_fake_openai()
    yield fake
    fake.stop()

"""Pytest plugin providing running fake Slack, Anthropic and OpenAI servers as fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from .anthropic import FakeAnthropic
from .openai import FakeOpenAI
from .slack import FakeSlack


@pytest_asyncio.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    """A running `FakeSlack` (token "xoxb-test"); base URL is `fake_slack.api_url`."""
    async with FakeSlack() as fake:
        yield fake


@pytest_asyncio.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    """A running `FakeAnthropic` (api key "sk-ant-test"); base URL is `.base_url`."""
    async with FakeAnthropic() as fake:
        yield fake


@pytest_asyncio.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A running `FakeOpenAI` (api key "sk-test"); base URL is `.base_url` (ends in /v1)."""
    async with FakeOpenAI() as fake:
        yield fake

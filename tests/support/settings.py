"""Settings for tests: built from explicit values and pointed at the fake servers.

`settings_factory` builds the bot's settings; `engine_settings` the engine's, with fast engine
timings, two authority policies and one model route for every role.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.support.databases import Database
from workers.config import Settings, load_settings

FAST_ENGINE: dict[str, Any] = {
    "lease_ttl_s": 5,  # a busy test process may stall its heartbeats for seconds
    "heartbeat_s": 1,
    "max_attempts": 3,
    "status_update_interval_s": 0,
    "poll_interval_s": 0.5,
    "cancel_poll_s": 0.1,
    "shutdown_grace_s": 2,
    "max_output_tokens": 1024,
    "min_output_tokens": 16,
}

POLICIES: dict[str, Any] = {
    "default": {
        "description": "Work from the thread only: no web access.",
        "tools": ["read_thread", "ask_requester", "submit_deliverable"],
        "domains": [],
    },
    "research": {
        "description": "Read the public web.",
        "tools": ["read_thread", "ask_requester", "submit_deliverable", "web_fetch"],
        "domains": ["*"],
    },
}

_ROUTE = {"primary": "anthropic:claude-sonnet-4-6", "fallback": "openai:gpt-5-mini"}
# One route for every role and class (sources are deep-merged, so every key the shipped
# defaults have is overridden): Anthropic first, OpenAI as the fallback.
ROUTING: dict[str, Any] = {
    role: {key: _ROUTE for key in ("default", "quick", "standard", "deep")}
    for role in ("intake", "execute", "verify")
}


def single_route(model: str) -> dict[str, Any]:
    """Routing that sends every call to `model` ("provider:model"), without a fallback."""
    route = {"primary": model, "fallback": None}
    return {
        role: {key: route for key in ("default", "quick", "standard", "deep")}
        for role in ("intake", "execute", "verify")
    }


def engine_settings(
    database: Database,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    *,
    engine: dict[str, Any] | None = None,
    **overrides: Any,
) -> Settings:
    values: dict[str, Any] = {
        "database_url": database.url,
        "anthropic_api_key": fake_anthropic.api_key,
        "anthropic_base_url": fake_anthropic.base_url,
        "openai_api_key": fake_openai.api_key,
        "openai_base_url": fake_openai.base_url,
        "routing": ROUTING,
        "policies": POLICIES,
        "engine": {**FAST_ENGINE, **(engine or {})},
    }
    values.update(overrides)
    return load_settings(**values)


SIGNING_SECRET = "test-signing-secret-0123456789abcdef"


@pytest.fixture
def settings_factory(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
) -> Callable[..., Settings]:
    """Settings built from explicit values (which win over the developer's environment), with
    both model providers pointed at their fakes and the database the test uses: the `database`
    fixture's when the test takes it (directly or through `store`), else a SQLite file in
    `tmp_path`."""
    if "database" in request.fixturenames:
        database_url = request.getfixturevalue("database").url
    else:
        database_url = f"sqlite+aiosqlite:///{tmp_path / 'delegate.db'}"

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "slack_bot_token": "xoxb-test",
            "slack_signing_secret": SIGNING_SECRET,
            "slack_app_token": None,
            "database_url": database_url,
            "anthropic_api_key": fake_anthropic.api_key,
            "anthropic_base_url": fake_anthropic.base_url,
            "openai_api_key": fake_openai.api_key,
            "openai_base_url": fake_openai.base_url,
            # The fake Slack has no budgets: tests are not spaced to Slack's (test_rate_gate is).
            "slack": {"rate_budget_scale": 1000},
        }
        slack = {**values["slack"], **overrides.pop("slack", {})}  # type: ignore[dict-item]
        values.update(overrides, slack=slack)
        return load_settings(**values)

    return make

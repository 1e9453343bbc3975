"""manifest.yml is a valid Slack manifest and matches what the code listens for."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bot.app import COMMAND, SHORTCUT_DELEGATE_THIS
from bot.scopes import AGENT_SCOPES, BOT_EVENTS, BOT_SCOPES
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.slack import FakeSlack
from tests.support.bot import RunningBot, running_bot
from tests.support.intake import chat
from tests.support.waiting import bot_idle
from workers.store import Store

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py

ROOT = Path(__file__).resolve().parents[1]
# A copy of Slack's published schema, kept with the tests (see tests/data/slack/README.md).
SCHEMA = ROOT / "tests" / "data" / "slack" / "manifest.schema.1.0.0.json"
MANIFEST: dict[str, Any] = yaml.safe_load((ROOT / "manifest.yml").read_text())


def test_manifest_validates_against_slacks_schema() -> None:
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(MANIFEST)


def test_manifest_has_the_required_features() -> None:
    settings = MANIFEST["settings"]
    assert settings["socket_mode_enabled"] is True
    assert settings["interactivity"]["is_enabled"] is True
    assert {"app_mention", "message.im", "app_home_opened"} <= set(
        settings["event_subscriptions"]["bot_events"]
    )
    assert MANIFEST["features"]["app_home"]["home_tab_enabled"] is True
    assert MANIFEST["features"]["app_home"]["messages_tab_enabled"] is True
    # Declared an agent the way Slack's docs say today (agent_view; assistant_view is on its way
    # out), with the native stop button's event subscribed.
    assert MANIFEST["features"]["agent_view"]["agent_description"]
    assert "assistant_view" not in MANIFEST["features"]
    assert "agent_session_stopped" in settings["event_subscriptions"]["bot_events"]
    [shortcut] = MANIFEST["features"]["shortcuts"]
    assert (shortcut["name"], shortcut["type"]) == ("Delegate this", "message")


def test_manifest_scopes_and_events_match_the_code() -> None:
    assert set(MANIFEST["oauth_config"]["scopes"]["bot"]) == BOT_SCOPES | AGENT_SCOPES
    assert set(MANIFEST["settings"]["event_subscriptions"]["bot_events"]) == BOT_EVENTS
    assert [c["command"] for c in MANIFEST["features"]["slash_commands"]] == [COMMAND]
    assert [s["callback_id"] for s in MANIFEST["features"]["shortcuts"]] == [SHORTCUT_DELEGATE_THIS]


@pytest.fixture
async def bot(
    store: Store, fake_slack: FakeSlack, settings_factory: Callable[..., Any]
) -> AsyncIterator[RunningBot]:
    async with running_bot(settings_factory(), store=store, fake_slack=fake_slack) as running:
        yield running


def _event_for(bot: RunningBot, name: str) -> dict[str, Any]:
    sender = bot.sender
    if name == "app_mention":
        return sender.app_mention("<@UBOT> hi")
    if name == "agent_session_stopped":
        return {
            "type": "agent_session_stopped",
            "user": "U1",
            "channel": "C1",
            "thread_ts": "1.1",
            "streaming_message_ts": [],
            "event_ts": "2.2",
        }
    if name == "app_home_opened":
        return {
            "type": "app_home_opened",
            "user": "U1",
            "channel": "D1",
            "tab": "home",
            "event_ts": "1.1",
        }
    if name == "link_shared":
        return sender.link_shared("https://delegate.example.com/orders/WO-1")
    message = sender.direct_message("hi")
    message["channel_type"] = {
        "message.im": "im",
        "message.channels": "channel",
        "message.groups": "group",
    }[name]
    return message


async def test_every_manifest_event_has_a_listener(
    bot: RunningBot, fake_anthropic: FakeAnthropic
) -> None:
    """Bolt answers 404 for a request no listener handles; every subscribed event must get 200."""
    events = MANIFEST["settings"]["event_subscriptions"]["bot_events"]
    fake_anthropic.script(*[chat("Hello! What should I do?") for _ in events])
    for name in events:
        status, body = await bot.sender.event(_event_for(bot, name))
        assert status == 200, f"{name}: {status} {body}"
    await bot_idle()


async def test_every_manifest_command_and_shortcut_has_a_listener(bot: RunningBot) -> None:
    for command in MANIFEST["features"]["slash_commands"]:
        status, _ = await bot.sender.command(command["command"], "help")
        assert status == 200, command["command"]
    for shortcut in MANIFEST["features"]["shortcuts"]:
        payload = bot.sender.message_shortcut(shortcut["callback_id"], "some text")
        status, _ = await bot.sender.action(payload)
        assert status == 200, shortcut["callback_id"]


async def test_an_unregistered_shortcut_is_not_handled(bot: RunningBot) -> None:
    """The check above can fail: a callback id the code does not know gets Bolt's 404."""
    status, _ = await bot.sender.action(bot.sender.message_shortcut("not_in_manifest", "x"))
    assert status == 404

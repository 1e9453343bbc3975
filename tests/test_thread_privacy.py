"""What Delegate keeps of Slack threads (security issue, item 7), end to end through signed
events: only the threads it takes part in, a message deleted in Slack is deleted here too, and
stored thread text is pruned after `slack.thread_retention_days` by the periodic sweep."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.cards import START_ACTION
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.slack import FakeSlack
from tests.support.bot import RunningBot, running_bot
from tests.support.intake import draft
from tests.support.waiting import bot_idle, eventually
from workers.followup import FollowUps
from workers.store import Store


@pytest.fixture
async def bot(
    store: Store, fake_slack: FakeSlack, settings_factory: Callable[..., Any]
) -> AsyncIterator[RunningBot]:
    settings = settings_factory(slack={"thread_retention_days": 7})
    async with running_bot(settings, store=store, fake_slack=fake_slack) as running:
        yield running


def channel_message(bot: RunningBot, text: str, *, user: str, thread_ts: str) -> dict[str, Any]:
    event = bot.sender.direct_message(text, user=user, channel="C1", thread_ts=thread_ts)
    event["channel_type"] = "channel"
    return event


async def test_deleted_messages_and_old_thread_text_are_not_kept(
    bot: RunningBot, fake_slack: FakeSlack, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(draft())
    mention = bot.sender.app_mention("<@UBOT> competitor pricing table", channel="C1")
    await bot.sender.event(mention)
    await fake_slack.wait_until(
        lambda: any(
            START_ACTION in str(c.args.get("blocks"))
            for c in fake_slack.calls_to("chat.postMessage")
        )
    )
    root = mention["ts"]
    reply = channel_message(bot, "Globex changed its prices last week", user="U3", thread_ts=root)
    await bot.sender.event(reply)

    async def stored() -> list[str]:
        return [m.ts for m in await bot.store.slack.thread_messages("C1", root)]

    async def reply_stored() -> bool:
        return reply["ts"] in await stored()

    await eventually(reply_stored)

    # A thread Delegate is not in: nothing is kept.
    elsewhere = bot.sender.direct_message("lunch?", user="U3", channel="C1")
    elsewhere["channel_type"] = "channel"
    await bot.sender.event(elsewhere)
    await bot_idle()
    assert await bot.store.slack.thread_messages("C1", elsewhere["ts"]) == []

    # Deleted in Slack: deleted here.
    deleted = {
        "type": "message",
        "subtype": "message_deleted",
        "hidden": True,
        "channel": "C1",
        "channel_type": "channel",
        "ts": bot.sender._ids.ts(),
        "deleted_ts": reply["ts"],
        "event_ts": reply["ts"],
        "previous_message": {"type": "message", "user": "U3", "ts": reply["ts"], "thread_ts": root},
    }
    status, _ = await bot.sender.event(deleted)
    assert status == 200

    async def reply_gone() -> bool:
        return reply["ts"] not in await stored()

    await eventually(reply_gone)
    assert root in await stored(), "only the deleted message goes"

    # Retention: the sweep deletes stored thread text older than slack.thread_retention_days.
    soon = datetime.now(UTC) + timedelta(days=6)
    await FollowUps(bot.settings, bot.store, clock=lambda: soon).sweep()
    assert root in await stored()
    later = datetime.now(UTC) + timedelta(days=7, minutes=1)
    await FollowUps(bot.settings, bot.store, clock=lambda: later).sweep()
    assert await stored() == []


async def test_an_edited_message_is_stored_as_edited(
    bot: RunningBot, fake_slack: FakeSlack, fake_anthropic: FakeAnthropic
) -> None:
    """Issue 19, item 13: a run reading its thread sees what the message says now."""
    fake_anthropic.script(draft())
    mention = bot.sender.app_mention("<@UBOT> competitor pricing table", channel="C1")
    await bot.sender.event(mention)
    await fake_slack.wait_for("chat.postMessage")
    root = mention["ts"]
    reply = channel_message(bot, "Send the table to ceo@example.com", user="U3", thread_ts=root)
    await bot.sender.event(reply)

    async def texts() -> dict[str, str]:
        return {m.ts: m.text for m in await bot.store.slack.thread_messages("C1", root)}

    async def reply_stored() -> bool:
        return reply["ts"] in await texts()

    await eventually(reply_stored)
    # The shape bolt-python receives when a person edits a message in a thread.
    edited = {
        "type": "message",
        "subtype": "message_changed",
        "hidden": True,
        "channel": "C1",
        "channel_type": "channel",
        "ts": bot.sender._ids.ts(),
        "event_ts": bot.sender._ids.ts(),
        "message": {
            "type": "message",
            "user": "U3",
            "text": "Keep the table in this thread, please",
            "ts": reply["ts"],
            "thread_ts": root,
            "edited": {"user": "U3", "ts": bot.sender._ids.ts()},
        },
        "previous_message": {
            "type": "message",
            "user": "U3",
            "text": reply["text"],
            "ts": reply["ts"],
            "thread_ts": root,
        },
    }
    status, _ = await bot.sender.event(edited)
    assert status == 200

    async def edit_stored() -> bool:
        return (await texts()).get(reply["ts"]) == "Keep the table in this thread, please"

    await eventually(edit_stored)
    assert "ceo@example.com" not in str(await texts())

    # An edit in a thread Delegate is not in stores nothing.
    elsewhere = {**edited, "message": {**edited["message"], "ts": "1.000001", "thread_ts": "1.0"}}
    await bot.sender.event({**elsewhere, "ts": bot.sender._ids.ts()})
    await bot_idle()
    assert await bot.store.slack.thread_messages("C1", "1.0") == []

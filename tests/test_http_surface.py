"""The bot's HTTP surface: signed requests only, a health check, and one reply per event."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from bot.server import build_web_app, start_site
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.slack import FakeSlack
from tests.support.bot import RunningBot, running_bot
from tests.support.intake import chat
from tests.support.waiting import bot_idle
from workers.store import Store

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py


@pytest.fixture
async def bot(
    store: Store, fake_slack: FakeSlack, settings_factory: Callable[..., Any]
) -> AsyncIterator[RunningBot]:
    async with running_bot(settings_factory(), store=store, fake_slack=fake_slack) as running:
        yield running


async def test_health_endpoint_reports_database(bot: RunningBot) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{bot.url}/healthz") as resp:
        assert resp.status == 200
        health = await resp.json()
    assert (health["status"], health["database"], health["slack"]) == ("ok", "ok", "ok")
    assert health["outbox"] == {"undelivered": 0, "oldest_undelivered_s": 0, "failed": []}


async def test_health_endpoint_fails_when_database_is_unreachable() -> None:
    broken = Store.from_url("sqlite+aiosqlite:////nonexistent-dir/delegate.db")
    runner = await start_site(build_web_app(store=broken, bolt=None), host="127.0.0.1", port=0)
    host, port = runner.addresses[0][:2]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{host}:{port}/healthz") as resp,
        ):
            assert resp.status == 503
            assert await resp.json() == {"status": "unhealthy", "database": "unreachable"}
    finally:
        await runner.cleanup()
        await broken.close()


async def test_mention_gets_one_reply_in_its_thread(
    bot: RunningBot, fake_slack: FakeSlack, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(chat("Hello! What should I do?"))
    event = bot.sender.app_mention("<@UBOT> hello", channel="C1")
    status, _ = await bot.sender.event(event, event_id="EvONE")
    assert status == 200
    [post] = await fake_slack.wait_for("chat.postMessage")
    assert post.args["channel"] == "C1" and post.args["thread_ts"] == event["ts"]
    await bot_idle()


async def test_retried_and_repeated_deliveries_produce_one_reply(
    bot: RunningBot, fake_slack: FakeSlack, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(chat("Hello! What should I do?"))
    event = bot.sender.app_mention("<@UBOT> hello", channel="C1")
    for retry in (None, 1, 2):
        status, _ = await bot.sender.event(event, event_id="EvSAME", retry_num=retry)
        assert status == 200
    await fake_slack.wait_for("chat.postMessage")
    await bot_idle()
    assert len(fake_slack.calls_to("chat.postMessage")) == 1


async def test_bad_signature_is_refused(bot: RunningBot, fake_slack: FakeSlack) -> None:
    status, _ = await bot.sender.event(bot.sender.app_mention("<@UBOT> hi"), bad_signature=True)
    assert status == 401
    status, _ = await bot.sender.command(text="help", bad_signature=True)
    assert status == 401
    await bot_idle()
    assert fake_slack.calls_to("chat.postMessage") == []


async def test_stale_timestamp_is_refused(bot: RunningBot, fake_slack: FakeSlack) -> None:
    stale = int(time.time()) - 10 * 60
    status, _ = await bot.sender.event(bot.sender.app_mention("<@UBOT> hi"), timestamp=stale)
    assert status == 401


async def test_own_and_other_bots_messages_are_ignored(
    bot: RunningBot, fake_slack: FakeSlack, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(chat("Hello! What should I do?"))
    own = bot.sender.direct_message("hi from me")
    own.update(user="UBOT", bot_id="BBOT")
    other = bot.sender.direct_message("hi from another bot")
    other.update(bot_id="BOTHER", subtype="bot_message")
    human = bot.sender.direct_message("hi from a person")
    for event in (own, other, human):
        assert (await bot.sender.event(event))[0] == 200
    [reply] = await fake_slack.wait_for("chat.postMessage")
    assert reply.args["thread_ts"] == human["ts"]
    await bot_idle()
    assert len(fake_slack.calls_to("chat.postMessage")) == 1


async def test_url_verification_handshake(bot: RunningBot) -> None:
    status, body = await bot.sender.url_verification("xyz")
    assert status == 200 and "xyz" in body

"""Intake spends the team's money too (security issue, item 4): its model calls are charged to
the requester's team quota, one person's requests are rate-limited, and both limits are told in
plain words instead of calling the model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.slack import FakeSlack
from tests.support.bot import RunningBot, running_bot
from tests.support.intake import chat
from tests.support.waiting import bot_idle, eventually
from workers.budget import quota_week
from workers.models import utcnow
from workers.store import Store


@pytest.fixture
async def bot(
    store: Store, fake_slack: FakeSlack, settings_factory: Callable[..., Any]
) -> AsyncIterator[RunningBot]:
    settings = settings_factory(
        intake={"max_requests_per_user_per_hour": 2},
        teams={
            "default": {"weekly_usd": 100.0},
            "tiny": {"weekly_usd": 0.0001, "members": ["UPOOR"]},
        },
    )
    async with running_bot(settings, store=store, fake_slack=fake_slack) as running:
        yield running


def _replies_to(fake_slack: FakeSlack, thread_ts: str) -> list[str]:
    return [
        c.args.get("text", "")
        for c in fake_slack.calls_to("chat.postMessage")
        if c.args.get("thread_ts") == thread_ts
    ]


async def _ask(bot: RunningBot, user: str, text: str, fake_slack: FakeSlack) -> str:
    """Mention the bot and wait for its reply in the thread (an answer or a refusal)."""
    event = bot.sender.app_mention(f"<@UBOT> {text}", channel="C1", user=user)
    await bot.sender.event(event)
    ts = str(event["ts"])
    await fake_slack.wait_until(lambda: bool(_replies_to(fake_slack, ts)))
    return ts


async def test_one_person_is_rate_limited_and_told_so(
    bot: RunningBot, fake_slack: FakeSlack, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(chat("EBITDA is earnings before interest..."), chat("A KPI is..."))
    await _ask(bot, "U1", "what is EBITDA?", fake_slack)
    await _ask(bot, "U1", "what is a KPI?", fake_slack)
    third = await _ask(bot, "U1", "what is ARR?", fake_slack)
    assert len(fake_anthropic.requests) == 2  # the third never reached the model
    [told] = _replies_to(fake_slack, third)
    assert "2 requests in the last hour" in told
    # Someone else is not affected.
    fake_anthropic.script(chat("ARR is annual recurring revenue."))
    await _ask(bot, "U2", "what is ARR?", fake_slack)
    assert len(fake_anthropic.requests) == 3


async def test_intake_is_charged_to_the_team_and_stops_at_its_quota(
    bot: RunningBot, fake_slack: FakeSlack, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(chat("EBITDA is earnings before interest..."))
    await _ask(bot, "UPOOR", "what is EBITDA?", fake_slack)
    week = quota_week(utcnow())
    spent = await bot.store.ledger.team_week_used("tiny", week)
    assert spent > 0  # the intake call was charged to the requester's team
    ts = await _ask(bot, "UPOOR", "and what is a KPI?", fake_slack)
    assert len(fake_anthropic.requests) == 1
    [told] = _replies_to(fake_slack, ts)
    assert "Team tiny has used its" in told and "Monday" in told
    assert await bot.store.ledger.team_week_used("default", week) == 0


async def test_concurrent_requests_cannot_overrun_the_hourly_limit(
    bot: RunningBot, fake_slack: FakeSlack, fake_anthropic: FakeAnthropic
) -> None:
    """Issue 19, item 6: a slot is taken atomically before the model is called, so ten mentions
    at once with a limit of 2 make 2 model calls, on SQLite and on PostgreSQL alike."""
    # Slow answers: every mention is admitted or refused while the first calls are in flight.
    fake_anthropic.script(*[replace(chat(f"Answer {i}."), delay=0.5) for i in range(10)])
    events = [
        bot.sender.app_mention(f"<@UBOT> question {i}?", channel="C1", user="U3") for i in range(10)
    ]
    await asyncio.gather(*(bot.sender.event(e) for e in events))
    await bot_idle()
    await eventually(
        lambda: all(_replies_to(fake_slack, str(e["ts"])) for e in events), timeout_s=30
    )
    assert len(fake_anthropic.requests) == 2
    told = [t for e in events for t in _replies_to(fake_slack, str(e["ts"]))]
    assert sum("2 requests in the last hour" in t for t in told) == 8

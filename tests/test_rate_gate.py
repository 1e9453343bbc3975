"""Slack's rate limits, shared (issue 18, failure 6): after a 429 no call of that method leaves
any process before Retry-After, and calls are spaced to Slack's budgets before any 429.

Timing facts are asserted one way only: a call arrived at the fake Slack no earlier than the
gate allowed (a slow machine only makes calls later)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bot.slack_client import InstrumentedWebClient, make_slack_client
from tests.fakes.slack import Call, FakeSlack
from tests.support.databases import Database
from tests.support.waiting import eventually
from workers.config import Settings
from workers.store import Store

RETRY_AFTER_S = 2


def _client(
    settings_factory: Callable[..., Settings],
    fake_slack: FakeSlack,
    store: Store | None,
    **slack: float,
) -> InstrumentedWebClient:
    settings = settings_factory(
        slack_api_url=fake_slack.api_url, slack={"rate_budget_scale": 1000, **slack}
    )
    return make_slack_client(settings, backoff_factor_s=0.01, shared_holds=store.rate_limits if store else None)


def _refused(fake_slack: FakeSlack, method: str) -> Call:
    [refused] = [c for c in fake_slack.calls_to(method) if c.status == 429]
    assert refused.answered_at is not None
    return refused


async def test_after_a_429_no_caller_in_the_process_calls_that_method_before_retry_after(
    store: Store, settings_factory: Callable[..., Settings], fake_slack: FakeSlack
) -> None:
    client = _client(settings_factory, fake_slack, store)
    posted = await client.chat_postMessage(channel="C1", text="status")
    fake_slack.fail_next("chat.update", 429, retry_after=RETRY_AFTER_S)

    first = asyncio.create_task(client.chat_update(channel="C1", ts=posted["ts"], text="1"))
    assert client.gate is not None
    await eventually(lambda: client.gate is not None and client.gate.held_for("chat.update") > 0)
    refused = _refused(fake_slack, "chat.update")
    # Other tasks of the process update messages meanwhile, and one posts (another method).
    others = [
        asyncio.create_task(client.chat_update(channel="C1", ts=posted["ts"], text=f"{n}"))
        for n in range(2, 7)
    ]
    other_method = await client.chat_postMessage(channel="C1", text="a reply")
    await asyncio.gather(first, *others)

    held_until = refused.answered_at + RETRY_AFTER_S
    updates = [c for c in fake_slack.calls_to("chat.update") if c is not refused]
    assert len(updates) == 6 and all(c.status == 200 for c in updates)
    early = [round(held_until - c.at, 3) for c in updates if c.at < held_until]
    assert early == [], f"chat.update called again this many seconds before Retry-After: {early}"
    # chat.postMessage was not held: it went while chat.update still was.
    [reply] = [
        c for c in fake_slack.calls_to("chat.postMessage") if c.args.get("text") == "a reply"
    ]
    assert other_method["ok"] and reply.at < min(c.at for c in updates)


async def test_a_429_seen_by_one_process_holds_the_method_for_the_others(
    database: Database, settings_factory: Callable[..., Settings], fake_slack: FakeSlack
) -> None:
    """Two processes (each its own client, gate and store) on one database."""
    one, other = Store(database.engine()), Store(database.engine())
    try:
        first = _client(settings_factory, fake_slack, one)
        second = _client(settings_factory, fake_slack, other)
        posted = await first.chat_postMessage(channel="C1", text="status")
        fake_slack.fail_next("chat.update", 429, retry_after=RETRY_AFTER_S)
        refusing = asyncio.create_task(first.chat_update(channel="C1", ts=posted["ts"], text="1"))
        await eventually(lambda: _has_hold(other, "chat.update"))
        refused = _refused(fake_slack, "chat.update")

        await second.chat_update(channel="C1", ts=posted["ts"], text="2")
        await refusing

        [from_second] = [c for c in fake_slack.calls_to("chat.update") if c.args["text"] == "2"]
        held_until = refused.answered_at + RETRY_AFTER_S
        assert from_second.at >= held_until, held_until - from_second.at
        # The other process still calls other methods freely.
        await second.chat_postMessage(channel="C1", text="free")
    finally:
        await one.close()
        await other.close()


async def _has_hold(store: Store, method: str) -> bool:
    return method in await store.rate_limits.slack_method_holds()


async def test_a_hold_is_kept_by_the_database_clock_and_never_shortened(store: Store) -> None:
    await store.rate_limits.hold_slack_method("chat.update", 30)
    await store.rate_limits.hold_slack_method("chat.update", 1)  # a shorter Retry-After seen later
    holds = await store.rate_limits.slack_method_holds()
    assert set(holds) == {"chat.update"} and 25 < holds["chat.update"] <= 30
    await store.rate_limits.hold_slack_method("chat.delete", 0)
    assert "chat.delete" not in await store.rate_limits.slack_method_holds()


async def test_posts_to_one_channel_are_spaced_to_about_one_a_second(
    settings_factory: Callable[..., Settings], fake_slack: FakeSlack
) -> None:
    """Slack's budget for chat.postMessage is about one a second per channel (bursts pass):
    a burst of six to one channel has its sixth wait, while another channel's go at once."""
    started = time.monotonic()
    client = _client(settings_factory, fake_slack, None, rate_budget_scale=1)
    busy = [client.chat_postMessage(channel="C1", text=f"busy {n}") for n in range(6)]
    quiet = [client.chat_postMessage(channel="C2", text=f"quiet {n}") for n in range(5)]
    await asyncio.gather(*busy, *quiet)

    to_busy = sorted(
        c.at for c in fake_slack.calls_to("chat.postMessage") if c.args["channel"] == "C1"
    )
    to_quiet = [c.at for c in fake_slack.calls_to("chat.postMessage") if c.args["channel"] == "C2"]
    assert len(to_busy) == 6 and len(to_quiet) == 5
    assert to_busy[5] >= started + 1.0  # five at once, the sixth a second after the first
    assert max(to_quiet) < to_busy[5]  # the other channel's budget is its own

"""Issue 18, failure 5: "one prompt to an archived channel froze every status message of 5
other orders for about 130 s, was tried 8 times, then dropped without a trace in doctor".

End to end (the bot, a worker pool and the deliverer on one database, the fake Slack and model):
a run asks in its thread to read a page, but the thread's channel has been archived. Slack
answers the prompt `is_archived`: it is tried once, kept as failed for good and audited, while
five other orders' status messages go out as if nothing happened; `delegate doctor`,
/healthz and /metrics show what could not be delivered and what to do about it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.delivery import fix_for
from bot.ids import DOMAIN_ONCE_ACTION
from tests.fakes.anthropic import Reply
from tests.support.cli import cli_env, delegate
from tests.support.databases import Database
from tests.support.factories import make_order
from tests.support.pipeline import Pipeline, PipelineFactory
from tests.support.settings import SIGNING_SECRET
from tests.support.waiting import eventually
from tests.test_domain_approval import fetch, loopback_tools, submit
from tests.test_metrics_endpoint import scrape, value
from workers import queue
from workers.keys import status_key
from workers.workorder import Status

ARCHIVED = "C0ARCHIVED"
ASKS = "Prices from a page the order may not read yet"  # the goal of the order that asks
OTHERS = 5


@pytest.fixture
async def pipe(pipeline: PipelineFactory) -> AsyncIterator[Pipeline]:
    async with pipeline(tools=loopback_tools) as p:
        yield p


def _route(body: dict[str, Any]) -> Reply:
    """The model's one call of each run: the order that asks fetches a page outside its
    domains (the run asks in the thread and parks); every other order hands in at once."""
    if ASKS in json.dumps(body):
        return fetch("http://pricing.example/list")
    return submit()


async def _queued(pipe: Pipeline, channel: str, thread_ts: str, **fields: Any) -> str:
    pipe.slack.add_message(channel, "<@UBOT> competitor prices", ts=thread_ts)
    order = await pipe.bot.store.orders.create_order(
        make_order(
            status=Status.AWAITING_CONFIRMATION, channel=channel, thread_ts=thread_ts, **fields
        ),
        actor="U1",
    )
    assert order.id is not None
    await queue.enqueue(pipe.bot.store, pipe.bot.settings, order.id, actor="U1")
    return order.id


def _prompts_tried(pipe: Pipeline) -> list[dict[str, Any]]:
    return [
        c.args
        for c in pipe.slack.calls_to("chat.postMessage")
        if c.args.get("channel") == ARCHIVED
        and DOMAIN_ONCE_ACTION in json.dumps(c.args.get("blocks") or [])
    ]


async def test_a_prompt_to_an_archived_channel_fails_once_and_holds_up_no_other_order(
    pipe: Pipeline, database: Database, tmp_path: Path
) -> None:
    store = pipe.bot.store
    pipe.anthropic.script(*[_route] * (OTHERS + 1))
    pipe.slack.add_message(ARCHIVED, "<@UBOT> competitor prices", ts="1700000000.000900")
    pipe.slack.archived.add(ARCHIVED)  # archived after the order was asked for
    stuck = await _queued(
        pipe, ARCHIVED, "1700000000.000900", goal=ASKS, authority_policy="research"
    )
    others = [
        await _queued(pipe, "C1", f"1700000001.00{i}100", title=f"Order {i}")
        for i in range(OTHERS)
    ]

    # The run asks and parks; Slack refuses its prompt for good: kept, flagged, not retried.
    async def prompt_failed() -> bool:
        rows = [m for m in await store.outbox.outbox(stuck) if m.kind == "domain"]
        return bool(rows) and rows[0].permanent

    await eventually(prompt_failed)
    await pipe.status_of(stuck, Status.WAITING_FOR_REQUESTER)
    [prompt] = [m for m in await store.outbox.outbox(stuck) if m.kind == "domain"]
    assert (prompt.error, prompt.attempts, prompt.sent_at) == ("is_archived", 1, None)
    failures = [e for e in await store.audit.audit_trail(stuck) if e.kind == "delivery_failed"]
    assert {"key": prompt.key, "kind": "domain", "error": "is_archived"} in [
        e.data for e in failures
    ]

    # Meanwhile every other order ran, and its thread's status message says where it is now.
    async def others_shown() -> bool:
        for order_id in others:
            if (await store.orders.get_order(order_id)).status is not Status.AWAITING_REVIEW:
                return False
            if any(not m.sent_at for m in await store.outbox.outbox(order_id)):
                return False
        return True

    await eventually(others_shown)
    for order_id in others:
        shown = await store.slack.slack_message(status_key(order_id))
        assert shown is not None and shown.channel == "C1" and shown.ts
        [status] = [m for m in await store.outbox.outbox(order_id) if m.kind == "status"]
        assert status.attempts == 1 and status.error is None  # never held back, never retried
    assert len(_prompts_tried(pipe)) == 1, "an archived channel is not asked again"

    # The operator is told what was not delivered and how to fix it.
    code, out, err = await delegate(
        "doctor",
        "--format",
        "json",
        env=cli_env(
            DATABASE_URL=database.url,
            SLACK_BOT_TOKEN=pipe.slack.token,
            SLACK_SIGNING_SECRET=SIGNING_SECRET,
            SLACK_API_URL=pipe.slack.api_url,
            ANTHROPIC_API_KEY=pipe.anthropic.api_key,
            ANTHROPIC_BASE_URL=pipe.anthropic.base_url,
            OPENAI_API_KEY=pipe.openai.api_key,
            OPENAI_BASE_URL=pipe.openai.base_url,
        ),
        cwd=tmp_path,
    )
    assert "Traceback" not in out + err
    report = json.loads(out)
    [failed] = [
        c for c in report["checks"] if c["name"] == "thread messages" and c["status"] == "fail"
    ]
    assert f"{stuck} (is_archived)" in failed["detail"]
    assert fix_for("is_archived") in failed["fix"]
    assert "unarchive it" in failed["fix"]
    assert code == 1 and not report["ok"]
    assert not any(o in failed["detail"] for o in others)

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{pipe.bot.url}/healthz") as response,
    ):
        health = await response.json()
    assert {"order": stuck, "key": prompt.key, "error": "is_archived"} in health["outbox"]["failed"]
    assert value(await scrape(pipe), "delegate_outbox_failed") >= 1

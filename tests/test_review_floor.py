"""Who completes a review (security round 2, item 5), end to end: signed Slack clicks in, Web
API calls out, a real worker pool in between. When the order's channel configures reviewers,
one of them (or an admin) must approve: someone the requester named at intake adds a review,
they do not replace the channel's reviewer. When the channel configures none, the requester
decides, and the outcome says *self-approved* in the thread, on the card, in App Home, in
`delegate show` and in the digest's counts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.cards import START_ACTION
from bot.digest_blocks import digest_blocks
from bot.home import HomePublisher
from bot.ids import APPROVE_ACTION, REJECT_ACTION
from bot.show import render_order
from bot.slack_client import make_slack_client
from tests.fakes.anthropic import Reply
from tests.fakes.openai import Reply as OpenAIReply
from tests.support.intake import draft
from tests.support.pipeline import Pipeline, PipelineFactory
from workers.digest import build_digest, digest_json
from workers.store.reporting.metrics import ALL, Period
from workers.workorder import Status

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py

CHANNEL = {
    "reviewers": ["U7"],
    "escalation_contact": "U9",
    "policy": "default",
    "allowed_policies": ["research"],
    "team": "default",
}


def all_met() -> OpenAIReply:
    return OpenAIReply.tool(
        "record_verdicts",
        {"verdicts": [{"index": i, "passed": True, "reason": "ok"} for i in (1, 2, 3)]},
    )


@pytest.fixture
async def pipe(pipeline: PipelineFactory) -> AsyncIterator[Pipeline]:
    """C1 configures U7 as its reviewer; C2 configures none (the default channel's)."""
    async with pipeline(
        admins=["UADMIN"],
        channels={"C1": CHANNEL},
    ) as p:
        yield p


async def at_review(pipe: Pipeline, text: str, *, channel: str = "C1", **fields: Any) -> str:
    """A mention up to the card, Start, and the run to its review prompt; the order's id."""
    pipe.anthropic.script(draft(**fields))
    await pipe.bot.sender.event(pipe.bot.sender.app_mention(f"<@UBOT> {text}", channel=channel))
    await pipe.post(START_ACTION)
    [order] = await pipe.bot.store.orders.list_orders()
    assert order.id
    pipe.anthropic.script(Reply.tool("submit_deliverable", {"content": "v1", "summary": "Done."}))
    pipe.openai.script(all_met())
    await pipe.click(START_ACTION, order.id, "U1")
    await pipe.status_of(order.id, Status.AWAITING_REVIEW, within=20)
    await pipe.post(APPROVE_ACTION)
    return order.id


async def this_week(pipe: Pipeline) -> dict[str, Any]:
    week = Period.week_of(datetime.now(UTC))
    digest = await build_digest(pipe.bot.store.reporting, pipe.bot.settings, ALL, week)
    return {"json": digest_json(digest), "blocks": json.dumps(digest_blocks(digest))}


async def test_a_reviewer_named_at_intake_cannot_replace_the_channels(pipe: Pipeline) -> None:
    order_id = await at_review(
        pipe, "competitor pricing table, <@UFRIEND> will review", reviewers=["UFRIEND"]
    )
    order = await pipe.bot.store.orders.get_order(order_id)
    assert order.verification.reviewers == ["U7", "UFRIEND"]

    await pipe.click(APPROVE_ACTION, order_id, "UFRIEND")
    note = await pipe.post("UFRIEND> approved; waiting")
    assert note["text"] == (
        "<@UFRIEND> approved; waiting for one of the channel's reviewers: <@U7>"
    )
    assert note["thread_ts"] == order.thread_ts
    order = await pipe.bot.store.orders.get_order(order_id)
    assert order.status is Status.AWAITING_REVIEW, "the friend's approval does not approve"
    trail = await pipe.bot.store.audit.audit_trail(order_id)
    assert (trail[-1].kind, trail[-1].actor, trail[-1].data["decision"]) == (
        "review",
        "UFRIEND",
        "approve",
    )
    assert not pipe.updates_with("*Approved*"), "the prompt keeps its buttons"

    await pipe.click(APPROVE_ACTION, order_id, "U7")
    await pipe.status_of(order_id, Status.APPROVED)
    line = await pipe.update("*Approved* by <@U7>")
    assert "Self-approved" not in json.dumps(line)
    order = await pipe.bot.store.orders.get_order(order_id)
    assert not order.self_approved
    figures = (await this_week(pipe))["json"]
    assert (figures["finished_outcomes"], figures["self_approved"]) == (1, 0)


async def test_a_reviewer_named_at_intake_may_send_work_back(pipe: Pipeline) -> None:
    order_id = await at_review(
        pipe, "competitor pricing table, <@UFRIEND> will review", reviewers=["UFRIEND"]
    )
    await pipe.click(REJECT_ACTION, order_id, "UFRIEND")
    await pipe.status_of(order_id, Status.REJECTED)


async def test_an_admin_named_at_intake_completes_the_review(pipe: Pipeline) -> None:
    order_id = await at_review(
        pipe, "competitor pricing table, <@UADMIN> will review", reviewers=["UADMIN"]
    )
    await pipe.click(APPROVE_ACTION, order_id, "UADMIN")
    await pipe.status_of(order_id, Status.APPROVED)


async def test_the_requester_deciding_alone_is_self_approved_everywhere(pipe: Pipeline) -> None:
    order_id = await at_review(pipe, "competitor pricing table", channel="C2", reviewers=[])
    assert (await pipe.bot.store.orders.get_order(order_id)).verification.reviewers == []

    await pipe.click(APPROVE_ACTION, order_id, "U1")
    await pipe.status_of(order_id, Status.APPROVED)
    # The thread: the decision line on the prompt, and the card's state.
    prompt = await pipe.update("*Self-approved* by <@U1>")
    assert "*Approved*" not in json.dumps(prompt["blocks"])
    card = await pipe.update("Self-approved · requested by <@U1>")
    assert "(Self-approved)" in card["text"]
    trail = await pipe.bot.store.audit.audit_trail(order_id)
    assert (trail[-1].data["to"], trail[-1].data["self_approved"]) == ("approved", True)

    # App Home lists it as self-approved (published as the bot publishes it).
    client = make_slack_client(pipe.bot.settings, backoff_factor_s=0.01)
    await HomePublisher(pipe.bot.settings, store=pipe.bot.store, client=client).publish("U1")
    [home] = [c.args["view"] for c in pipe.slack.calls_to("views.publish")]
    assert "Self-approved ·" in json.dumps(home["blocks"], ensure_ascii=False)

    # `delegate show` says so.
    order = await pipe.bot.store.orders.get_order(order_id)
    shown = render_order(
        order,
        await pipe.bot.store.orders.get_row(order_id),
        await pipe.bot.store.runs.deliverables(order_id),
        tz="UTC",
    )
    assert "State:        approved (self-approved" in shown

    # The digest counts it apart from the finished outcomes it is one of.
    week = await this_week(pipe)
    assert (week["json"]["finished_outcomes"], week["json"]["self_approved"]) == (1, 1)
    assert "1 of them self-approved" in week["blocks"]
    assert "Self-approved (of those finished)" in week["blocks"]


async def test_an_admin_who_replaces_the_channels_reviewer_moves_the_floor(
    pipe: Pipeline,
) -> None:
    """Once an admin has taken U7 off the order, the reviewer they put on decides: nobody waits
    for an approval that no one on the order could give."""
    order_id = await at_review(pipe, "competitor pricing table")
    order = await pipe.bot.store.orders.get_order(order_id)
    await pipe.bot.store.orders.update_order(
        order_id,
        actor="UADMIN",
        expected={Status.AWAITING_REVIEW},
        verification=order.verification.model_copy(update={"reviewers": ["U8"]}),
    )
    await pipe.click(APPROVE_ACTION, order_id, "U8")
    await pipe.status_of(order_id, Status.APPROVED)

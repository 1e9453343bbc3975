"""Calibration from production (issue 22): reviewers' decisions against the verifier's verdicts
on the same deliverable version, and clarification's payoff, in the digest (JSON, headlines,
Block Kit), the lead's App Home and `/metrics`, end to end through signed Slack requests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from bot.cards import START_ACTION
from bot.digest_blocks import digest_blocks
from bot.ids import APPROVE_ACTION, CHANGES_ACTION, CHANGES_CALLBACK, REJECT_ACTION
from tests.fakes.anthropic import Reply
from tests.support.engine import Harness
from tests.support.factories import make_order
from tests.support.intake import draft, questions
from tests.support.pipeline import Pipeline, PipelineFactory, verdicts
from tests.support.records import llm_calls
from tests.test_feedback import digest_json, open_home
from workers.digest import build_digest, render_markdown
from workers.models import utcnow
from workers.review import decide
from workers.store import Store
from workers.store.reporting.metrics import ALL, Period
from workers.workorder import Status

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py


def submit(content: str) -> Reply:
    return Reply.tool("submit_deliverable", {"content": content, "summary": "Table ready."})


@pytest.fixture
async def pipe(pipeline: PipelineFactory) -> AsyncIterator[Pipeline]:
    async with pipeline(teams={"default": {"weekly_usd": 100.0, "leads": ["ULEAD"]}}) as p:
        yield p


async def start_from_card(pipe: Pipeline, order_id: str, *execute: Reply) -> None:
    await pipe.slack.wait_until(lambda: bool(pipe.posts_with(f"{order_id}")))
    await pipe.post(START_ACTION)
    pipe.anthropic.script(*execute)
    await pipe.click(START_ACTION, order_id, "U1")


async def request_changes(pipe: Pipeline, order_id: str, *rework: Reply) -> None:
    await pipe.click(CHANGES_ACTION, order_id, "U7")
    [*_, opened] = await pipe.slack.wait_for("views.open")
    pipe.anthropic.script(*rework)
    submission = pipe.bot.sender.view_submission(
        CHANGES_CALLBACK,
        {"feedback": {"feedback": "Add annual prices."}},
        user_id="U7",
        private_metadata=opened.args["view"]["private_metadata"],
    )
    assert (await pipe.bot.sender.action(submission))[0] == 200


async def scrape(pipe: Pipeline) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{pipe.bot.url}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_verifier_agreement_and_clarification_payoff(pipe: Pipeline) -> None:
    """WO-1's intake asked a question; the verifier passed both its versions, and the reviewer
    sent the first back (a false accept) and approved the second (agreement). WO-2 was drafted
    at once; the verifier passed it and the reviewer rejected it (a false accept)."""
    bot = pipe.bot
    pipe.openai.script(*(verdicts(True, True, True) for _ in range(3)))

    # WO-1: a question first, then the draft.
    pipe.anthropic.script(questions("Which competitors?"), draft(reviewers=["U7"]))
    mention = bot.sender.app_mention("<@UBOT> competitor pricing, <@U7> reviews", channel="C1")
    assert (await bot.sender.event(mention))[0] == 200
    await pipe.post("Which competitors?")
    reply = bot.sender.app_mention("Acme, Globex, Initech.", channel="C1", thread_ts=mention["ts"])
    reply["type"], reply["channel_type"] = "message", "channel"
    assert (await bot.sender.event(reply))[0] == 200
    await start_from_card(pipe, "WO-1", submit("v1"))
    await pipe.status_of("WO-1", Status.AWAITING_REVIEW)
    await request_changes(pipe, "WO-1", submit("v2 with annual prices"))
    await pipe.slack.wait_until(lambda: bool(pipe.posts_with("v2 with annual prices")))
    await pipe.status_of("WO-1", Status.AWAITING_REVIEW)
    await pipe.click(APPROVE_ACTION, "WO-1", "U7")
    await pipe.status_of("WO-1", Status.APPROVED)

    # WO-2: drafted at once, rejected although the verifier passed it.
    pipe.anthropic.script(draft(reviewers=["U7"]))
    other = bot.sender.app_mention("<@UBOT> another pricing table, <@U7> reviews", channel="C1")
    assert (await bot.sender.event(other))[0] == 200
    await pipe.slack.wait_until(lambda: len(pipe.posts_with(START_ACTION)) >= 2)
    await start_from_card(pipe, "WO-2", submit("v1 of the other"))
    await pipe.status_of("WO-2", Status.AWAITING_REVIEW)
    await pipe.click(REJECT_ACTION, "WO-2", "U7")
    await pipe.status_of("WO-2", Status.REJECTED)
    await pipe.drained()

    routes = {f"{c.provider}:{c.model}" for o in ("WO-1", "WO-2") for c in await llm_calls(bot.store, o) if c.role == "verify"}
    [route] = routes
    data = await digest_json(bot.settings.database_url)
    assert data["verifier_decisions"] == 3
    assert (data["verifier_agreement"], data["verifier_false_accepts"]) == (0.3333, 2)
    assert data["verifier_by_route"] == [
        {
            "workload_class": "standard",
            "route": route,
            "decisions": 3,
            "agreed": 1,
            "false_accepts": 2,
            "false_rejects": 0,
            "agreement": 0.3333,
        }
    ]
    assert data["clarification"] == {
        "asked_decisions": 2,
        "asked_rework_rate": 0.5,
        "direct_decisions": 1,
        "direct_rework_rate": 0.0,
    }
    assert (
        "The verifier agreed with reviewers on 33 % of 3 decisions; "
        "it passed 2 deliverables reviewers sent back." in data["headlines"]
    )
    assert (
        "Rework 50 % on orders whose intake asked questions, 0 % on orders drafted at once."
        in data["headlines"]
    )
    assert data["previous"]["verifier_decisions"] == 0

    # The digest as posted in Slack: the figure rows and the per-route line.
    digest = await build_digest(bot.store.reporting, bot.settings, ALL, Period.week_of(utcnow()))
    posted = json.dumps(digest_blocks(digest), ensure_ascii=False)
    assert "Verifier agreed with reviewers*\\n33 % of 3" in posted
    assert "Rework: intake asked / drafted at once*\\n50 % / 0 %" in posted
    assert f"standard x {route} 33 % of 3, 2 passed but sent back" in posted
    markdown = render_markdown(digest)
    assert "## Verifier against reviewers (class x route)" in markdown
    assert f"- standard x {route}: agreed on 33 % of 3 decisions, 2 passed but sent back" in markdown

    # The lead's App Home shows this week's calibration.
    home = await open_home(bot, pipe.slack, "ULEAD")
    assert "The verifier agreed with reviewers on 33 % of 3 decisions" in home
    assert "Verifier passed, reviewer sent back" in home

    # /metrics counts them per route and class.
    samples = await scrape(pipe)
    labels = {"route": route, "workload_class": "standard"}
    for outcome, count in (("agreed", 1.0), ("false_accept", 2.0), ("false_reject", 0.0)):
        key = ("delegate_verifier_decisions", frozenset({**labels, "outcome": outcome}.items()))
        assert samples[key] == count


def anthropic_verdicts(*passed: bool) -> Reply:
    """The verifier's answer where every role is routed to Anthropic first (the harness)."""
    return Reply.tool(
        "record_verdicts",
        {
            "verdicts": [
                {"index": i, "passed": p, "reason": "ok" if p else "no source"}
                for i, p in enumerate(passed, 1)
            ]
        },
    )


async def test_false_rejects_and_unchecked_deliverables(harness: Harness) -> None:
    """A reviewer approving what the verifier failed (after its automatic revision) is a false
    reject; a decision on an order whose automatic checks are off is not the verifier's."""
    h = harness
    checked = await h.order(verification={"automatic_checks": True, "reviewers": ["U2"]})
    h.anthropic.script(
        submit("v1"), anthropic_verdicts(True, False), submit("v2"), anthropic_verdicts(True, False)
    )
    await h.run_next()
    await h.run_next()
    assert (await h.store.orders.get_order(checked.id or "")).status is Status.AWAITING_REVIEW
    unchecked = await h.order(verification={"automatic_checks": False, "reviewers": ["U2"]})
    h.anthropic.script(submit("v1 unchecked"))
    await h.run_next()
    for order, decision in ((checked, "approve"), (unchecked, "reject")):
        [*_, latest] = await h.store.runs.deliverables(order.id or "")
        await decide(
            h.store, h.settings, order.id or "", decision, actor="U2", deliverable_id=latest.id
        )

    found = await h.store.reporting.calibration(h.settings, ALL, Period.week_of(utcnow()))
    verifier = found.verifier
    assert (verifier.decisions, verifier.agreed, verifier.false_accepts) == (1, 0, 0)
    assert verifier.false_rejects == 1 and verifier.agreement == 0.0
    [route] = verifier.by_route
    assert route.route.startswith("anthropic:") and route.false_rejects == 1
    # Neither order came from an intake dialogue: no clarification figures.
    assert (found.clarification.asked_decisions, found.clarification.direct_decisions) == (0, 0)
    # Last week knows nothing of them.
    last_week = Period.week_of(utcnow()).previous()
    before = await h.store.reporting.calibration(h.settings, ALL, last_week)
    assert before.verifier.decisions == 0


async def test_unreadable_calibration_leaves_the_operational_gauges(store: Store) -> None:
    """/metrics reads the last 30 days' calibration with the queue and outbox gauges: if it cannot
    be read (here: its table is gone), those still are, and the calibration is left out."""
    await store.orders.create_order(make_order(), actor="U1")
    async with store.engine.begin() as conn:
        await conn.execute(text("DROP TABLE feedback"))
    gauges = await store.reporting.gauges()
    assert gauges.calibration is None
    assert sum(gauges.orders_by_state.values()) == 1

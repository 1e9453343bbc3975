"""Slack's feedback buttons (issue 21): on a deliverable's review prompt and on a chat answer,
each press stored through signed Slack requests, a second press replacing the first, refused
for someone who cannot see the order, acknowledged without a word in the channel, and shown by
`delegate show`, App Home and the digest (per workload class and route)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import Block as SdkBlock
from slack_sdk.web.async_client import AsyncWebClient

from bot.feedback import REFUSED, feedback_block
from bot.ids import APPROVE_ACTION, FEEDBACK_ACTION, REJECT_ACTION
from tests.fakes.anthropic import FakeAnthropic, Reply
from tests.fakes.slack import FakeSlack
from tests.support.bot import RunningBot, running_bot
from tests.support.cli import delegate as run_delegate
from tests.support.factories import make_order
from tests.support.intake import chat
from tests.support.pipeline import Pipeline, PipelineFactory, verdicts
from tests.support.records import llm_calls
from tests.support.waiting import eventually
from workers.models import utcnow
from workers.store import Store
from workers.store.reporting.calibration import OrderFeedback
from workers.store.reporting.metrics import Period
from workers.workorder import Status

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py



def submit(content: str, summary: str = "Pricing table ready.") -> Reply:
    return Reply.tool("submit_deliverable", {"content": content, "summary": summary})


@pytest.fixture
async def pipe(pipeline: PipelineFactory) -> AsyncIterator[Pipeline]:
    async with pipeline() as p:
        yield p


def feedback_values(message: dict[str, Any]) -> list[str]:
    return [
        element[side]["value"]
        for block in message.get("blocks") or []
        if block.get("type") == "context_actions"
        for element in block["elements"]
        if element.get("type") == "feedback_buttons"
        for side in ("positive_button", "negative_button")
    ]


async def press(
    bot: RunningBot, value: str, user: str, *, channel: str = "C1", ts: str = "1.1"
) -> None:
    """A press of one side of the feedback buttons, as Slack sends it (bolt's
    FeedbackButtonsAction: type feedback_buttons, the side's value and text)."""
    payload = bot.sender.block_action(
        FEEDBACK_ACTION,
        value,
        user_id=user,
        channel_id=channel,
        message_ts=ts,
        block_id="fb1",
        action_type="feedback_buttons",
        text="👍" if value.endswith(":up") else "👎",
    )
    status, _ = await bot.sender.action(payload)
    assert status == 200


async def ratings(store: Store, order_id: str) -> dict[str, str]:
    found = (await store.reporting.order_feedback([order_id])).get(order_id)
    return {r.user: r.rating for r in (found or OrderFeedback(order_id)).ratings}


async def until_rated(store: Store, order_id: str, expected: dict[str, str]) -> None:
    async def rated() -> bool:
        return await ratings(store, order_id) == expected

    await eventually(rated)


async def delegate(*args: str, database_url: str) -> tuple[int, str, str]:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": database_url}
    return await run_delegate(*args, env=env, timeout=120)


async def digest_json(database_url: str) -> dict[str, Any]:
    week = Period.week_of(utcnow()).label
    code, out, err = await delegate(
        "digest", "--team", "all", "--week", week, "--format", "json", database_url=database_url
    )
    assert code == 0, err
    return dict(json.loads(out))


async def open_home(bot: RunningBot, fake_slack: FakeSlack, user: str) -> str:
    """Open `user`'s App Home and return the text of the view published for them."""
    before = len(fake_slack.calls_to("views.publish"))
    status, _ = await bot.sender.event(
        {"type": "app_home_opened", "user": user, "channel": "D1", "tab": "home", "event_ts": "1.2"}
    )
    assert status == 200
    await fake_slack.wait_until(lambda: len(fake_slack.calls_to("views.publish")) > before)
    view = fake_slack.calls_to("views.publish")[-1].args["view"]
    return json.dumps(view["blocks"], ensure_ascii=False)


async def test_presses_are_stored_replaced_refused_and_shown(pipe: Pipeline) -> None:
    bot, store = pipe.bot, pipe.bot.store
    pipe.openai.script(verdicts(True, True, True))
    order_id = await pipe.order_started(submit("| Acme | $10 (acme.com/pricing) |"))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    prompt = await pipe.post(APPROVE_ACTION)
    assert feedback_values(prompt) == [f"{order_id}:up", f"{order_id}:down"]
    await pipe.drained()
    posted = len(pipe.slack.calls_to("chat.postMessage"))

    await press(bot, f"{order_id}:up", "U5")
    await until_rated(store, order_id, {"U5": "up"})
    await press(bot, f"{order_id}:down", "U5")  # changed their mind: replaces, not adds
    await until_rated(store, order_id, {"U5": "down"})
    await press(bot, f"{order_id}:up", "U6")
    await until_rated(store, order_id, {"U5": "down", "U6": "up"})
    rated = (await store.reporting.order_feedback([order_id]))[order_id]
    assert rated.tally.label == "👍 1 · 👎 1"
    [latest] = (await store.runs.deliverables(order_id))[-1:]
    assert {r.deliverable_id for r in rated.ratings} == {latest.id}, "the version they saw"

    # Someone elsewhere, not on the order, pressing a forged value: refused, to them only.
    await press(bot, f"{order_id}:up", "U9", channel="C9")
    [refusal] = await pipe.slack.wait_for("chat.postEphemeral")
    assert (refusal.args["user"], refusal.args["text"]) == ("U9", REFUSED)
    assert await ratings(store, order_id) == {"U5": "down", "U6": "up"}
    # The presses that counted were acknowledged quietly: nothing said to anyone.
    assert [c.args["user"] for c in pipe.slack.calls_to("chat.postEphemeral")] == ["U9"]
    assert len(pipe.slack.calls_to("chat.postMessage")) == posted

    # The reviewer rejects what the verifier had passed; the buttons stay on the prompt.
    await pipe.click(REJECT_ACTION, order_id, "U7")
    await pipe.status_of(order_id, Status.REJECTED)
    decided = await pipe.update("Rejected* by <@U7>")
    assert feedback_values(decided) == [f"{order_id}:up", f"{order_id}:down"]

    database_url = bot.settings.database_url
    code, out, err = await delegate("show", order_id, database_url=database_url)
    assert code == 0, err
    assert "Feedback:     👍 1 · 👎 1" in out

    home = await open_home(bot, pipe.slack, "U1")
    assert f"{order_id}" in home and "👍 1 · 👎 1" in home

    [execute] = [c for c in await llm_calls(store, order_id) if c.role == "execute"]
    [verify] = [c for c in await llm_calls(store, order_id) if c.role == "verify"]
    data = await digest_json(database_url)
    assert (data["feedback_up"], data["feedback_down"]) == (1, 1)
    assert data["feedback_by_route"] == [
        {
            "workload_class": "standard",
            "route": f"{execute.provider}:{execute.model}",
            "up": 1,
            "down": 1,
        }
    ]
    # Issue 22's "done means": the verifier passed what the reviewer rejected.
    assert (data["verifier_agreement"], data["verifier_false_accepts"]) == (0.0, 1)
    assert data["verifier_by_route"] == [
        {
            "workload_class": "standard",
            "route": f"{verify.provider}:{verify.model}",
            "decisions": 1,
            "agreed": 0,
            "false_accepts": 1,
            "false_rejects": 0,
            "agreement": 0.0,
        }
    ]
    assert (
        "The verifier agreed with reviewers on 0 % of 1 decision; "
        "it passed 1 deliverable reviewers sent back." in data["headlines"]
    )
    assert "Feedback on answers and deliverables: 👍 1 · 👎 1." in data["headlines"]


@pytest.fixture
async def bot(
    store: Store, fake_slack: FakeSlack, settings_factory: Callable[..., Any]
) -> AsyncIterator[RunningBot]:
    async with running_bot(settings_factory(), store=store, fake_slack=fake_slack) as running:
        yield running


async def test_a_chat_answer_carries_feedback_counted_under_chat(
    bot: RunningBot, fake_slack: FakeSlack, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(chat("EBITDA is earnings before interest, taxes and amortisation."))
    mention = bot.sender.app_mention("<@UBOT> what is EBITDA?", channel="C1")
    assert (await bot.sender.event(mention))[0] == 200
    [answer] = await fake_slack.wait_for("chat.postMessage")
    session = await bot.store.slack.intake_session("C1", mention["ts"])
    assert session is not None and session.id is not None
    subject = f"chat-{session.id}"
    assert feedback_values(answer.args) == [f"{subject}:up", f"{subject}:down"]

    await press(bot, f"{subject}:down", "U3")
    await press(bot, f"{subject}:up", "U3")  # replaces their first press
    await press(bot, f"{subject}:up", "U4", channel="C9")  # elsewhere, not the requester

    def counted() -> list[dict[str, Any]]:
        return [
            c.args for c in fake_slack.calls_to("chat.postEphemeral") if c.args["user"] == "U4"
        ]

    await fake_slack.wait_until(lambda: bool(counted()))
    data = await digest_json(bot.settings.database_url)
    [row] = data["feedback_by_route"]
    assert (row["workload_class"], row["up"], row["down"]) == ("chat", 1, 0)
    assert row["route"].startswith("anthropic:"), "the intake route that answered"


async def test_the_fake_slack_checks_feedback_buttons_as_slack_does(
    fake_slack: FakeSlack,
) -> None:
    block = feedback_block("WO-12")
    # The SDK's own model of the block reads it back unchanged (the shape Slack documents).
    assert SdkBlock.parse(block).to_dict() == block  # type: ignore[union-attr]
    client = AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url)
    await client.chat_postMessage(channel="C1", text="deliverable", blocks=[block])

    buttons = block["elements"][0]
    broken: list[tuple[dict[str, Any], str]] = [
        ({**block, "elements": [buttons] * 6}, "1 to 5 items"),
        ({**block, "elements": [{**buttons, "negative_button": None}]}, "negative_button"),
        (
            {
                **block,
                "elements": [
                    {**buttons, "positive_button": {**buttons["positive_button"], "value": "v" * 2001}}
                ],
            },
            "/positive_button/value",
        ),
        ({**block, "elements": [{"type": "button", "text": buttons["positive_button"]["text"]}]}, "feedback_buttons or icon_button"),
    ]
    for blocks, detail in broken:
        with pytest.raises(SlackApiError) as info:
            await client.chat_postMessage(channel="C1", text="t", blocks=[blocks])
        assert info.value.response["error"] == "invalid_blocks"
        assert detail in " ".join(info.value.response["response_metadata"]["messages"])
    fake_slack.problems.clear()


async def test_presses_at_once_by_one_person_leave_one_rating(store: Store) -> None:
    """Two first presses by the same person racing (a double click, two devices) take turns:
    one row, the later press standing, never a unique-key error."""
    order = await store.orders.create_order(make_order(), actor="U1")
    assert order.id
    # Two processes' stores on one database, as two `delegate run` would be.
    other = Store.from_url(store.engine.url.render_as_string(hide_password=False))
    try:
        pressed = await asyncio.gather(
            *(
                (store, other)[i % 2].feedback.record_order_feedback(
                    order.id, user="U5", rating="up" if i % 3 else "down"
                )
                for i in range(20)
            )
        )
    finally:
        await other.close()
    assert sum(p.previous is None for p in pressed) == 1
    found = (await store.reporting.order_feedback([order.id]))[order.id]
    assert [r.user for r in found.ratings] == ["U5"]

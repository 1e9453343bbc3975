"""Who decides, end to end (security issue, item 2): a channel's reviewers are a floor the
requester cannot remove (not in the Edit modal, not by naming themselves in the request), only
admins change reviewers or the escalation contact once the card is posted, and a decision is
bound to the deliverable its prompt showed. Signed Slack requests in, Web API calls out, a real
worker pool in between."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.cards import EDIT_ACTION, START_ACTION
from bot.ids import (
    APPROVE_ACTION,
    CHANGES_ACTION,
    CHANGES_CALLBACK,
    EXTEND_ACTION,
    REJECT_ACTION,
)
from bot.modals import EDIT_CALLBACK
from tests.fakes.anthropic import Reply
from tests.fakes.openai import Reply as OpenAIReply
from tests.support.intake import draft
from tests.support.pipeline import Pipeline, PipelineFactory, button_value
from tests.support.slack import state_from_view
from tests.support.waiting import eventually
from workers.keys import result_key, review_key
from workers.states import EDITABLE
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


def submit(content: str) -> Reply:
    return Reply.tool("submit_deliverable", {"content": content, "summary": "Done."})


@pytest.fixture
async def pipe(pipeline: PipelineFactory) -> AsyncIterator[Pipeline]:
    async with pipeline(
        admins=["UADMIN"],
        channels={"C1": CHANNEL},
    ) as p:
        yield p


async def proposed(pipe: Pipeline, text: str, **draft_fields: Any) -> str:
    """A mention in C1 up to the card; the proposed order's id."""
    pipe.anthropic.script(draft(**draft_fields))
    await pipe.bot.sender.event(pipe.bot.sender.app_mention(f"<@UBOT> {text}", channel="C1"))
    await pipe.post(START_ACTION)
    [order] = await pipe.bot.store.orders.list_orders()
    assert order.id
    return order.id


async def run_to_review(pipe: Pipeline, order_id: str, content: str = "v1") -> None:
    pipe.anthropic.script(submit(content))
    pipe.openai.script(all_met())
    await pipe.click(START_ACTION, order_id, "U1")
    await pipe.status_of(order_id, Status.AWAITING_REVIEW, within=20)


async def edit_view(pipe: Pipeline, order_id: str, user: str) -> dict[str, Any]:
    before = len(pipe.slack.calls_to("views.open"))
    await pipe.click(EDIT_ACTION, order_id, user)
    opened = await pipe.slack.wait_for("views.open", count=before + 1)
    return dict(opened[-1].args["view"])


async def submit_edit(
    pipe: Pipeline, view: dict[str, Any], user: str, values: dict[str, Any]
) -> tuple[int, str]:
    submission = pipe.bot.sender.view_submission(
        EDIT_CALLBACK, values, user_id=user, private_metadata=view["private_metadata"]
    )
    return await pipe.bot.sender.action(submission)


async def prompts(pipe: Pipeline, count: int) -> list[dict[str, Any]]:
    """The review prompts posted so far (ts and blocks, as a click carries them), once `count`."""

    def posted() -> list[dict[str, Any]]:
        return [
            {"ts": c.response["ts"], "blocks": c.args["blocks"]}
            for c in pipe.slack.calls_to("chat.postMessage")
            if APPROVE_ACTION in json.dumps(c.args.get("blocks") or [])
        ]

    await pipe.slack.wait_until(lambda: len(posted()) >= count, within=20)
    return posted()


async def test_requester_cannot_clear_the_channel_reviewers_in_edit(pipe: Pipeline) -> None:
    order_id = await proposed(pipe, "competitor pricing table")
    order = await pipe.bot.store.orders.get_order(order_id)
    assert order.verification.reviewers == ["U7"] and order.escalation_contact == "U9"

    view = await edit_view(pipe, order_id, "U1")
    blocks = {b.get("block_id") for b in view["blocks"]}
    assert "reviewers" not in blocks and "escalation" not in blocks
    assert "Only an admin can change these" in json.dumps(view["blocks"])
    # The submission carries reviewers and a contact anyway (a stale or hand-made view).
    values = state_from_view(view, title="Pricing v2")
    values["reviewers"] = {"reviewers": {"type": "multi_users_select", "selected_users": []}}
    values["escalation"] = {"escalation": {"type": "users_select", "selected_user": "U1"}}
    status, body = await submit_edit(pipe, view, "U1", values)
    assert status == 200 and "errors" not in body
    await pipe.update("Edited by <@U1>")
    order = await pipe.bot.store.orders.get_order(order_id)
    assert order.title == "Pricing v2", "the rest of the edit is saved"
    assert order.verification.reviewers == ["U7"] and order.escalation_contact == "U9"

    await run_to_review(pipe, order_id)
    await pipe.click(APPROVE_ACTION, order_id, "U1")
    [refusal] = await pipe.slack.wait_for("chat.postEphemeral")
    assert refusal.args["user"] == "U1" and "Only the reviewer (<@U7>)" in refusal.args["text"]
    assert (await pipe.bot.store.orders.get_order(order_id)).status is Status.AWAITING_REVIEW

    await pipe.click(APPROVE_ACTION, order_id, "U7")
    await pipe.status_of(order_id, Status.APPROVED)
    trail = await pipe.bot.store.audit.audit_trail(order_id)
    assert (trail[-1].actor, trail[-1].data["to"]) == ("U7", "approved")


async def test_requester_naming_themselves_reviewer_does_not_make_them_one(
    pipe: Pipeline,
) -> None:
    order_id = await proposed(pipe, "competitor pricing table, <@U1> will review", reviewers=["U1"])
    order = await pipe.bot.store.orders.get_order(order_id)
    assert order.verification.reviewers == ["U7"], "the channel's reviewer stays; U1 is not added"
    assert await pipe.post("You cannot review your own order: the reviewer shown on the card will.")

    await run_to_review(pipe, order_id)
    prompt = await pipe.post(APPROVE_ACTION)
    assert "<@U1>" not in json.dumps(prompt["blocks"]) and "<@U7>" in json.dumps(prompt["blocks"])
    for action in (APPROVE_ACTION, REJECT_ACTION, CHANGES_ACTION):
        await pipe.click(action, order_id, "U1")
    refusals = await pipe.slack.wait_for("chat.postEphemeral", count=3)
    assert all("Only the reviewer (<@U7>)" in r.args["text"] for r in refusals)
    assert not pipe.slack.calls_to("views.open"), "no feedback modal for the requester"
    assert (await pipe.bot.store.orders.get_order(order_id)).status is Status.AWAITING_REVIEW

    await pipe.click(APPROVE_ACTION, order_id, "U7")
    await pipe.status_of(order_id, Status.APPROVED)


async def test_only_an_admin_changes_reviewers_and_escalation_contact(pipe: Pipeline) -> None:
    order_id = await proposed(pipe, "competitor pricing table")
    view = await edit_view(pipe, order_id, "UADMIN")
    assert {"reviewers", "escalation"} <= {b.get("block_id") for b in view["blocks"]}
    values = state_from_view(view, reviewers=["U7", "U8"], escalation="UADMIN")
    status, body = await submit_edit(pipe, view, "UADMIN", values)
    assert status == 200 and "errors" not in body
    await pipe.update("Edited by <@UADMIN>")
    order = await pipe.bot.store.orders.get_order(order_id)
    assert order.verification.reviewers == ["U7", "U8"] and order.escalation_contact == "UADMIN"


async def test_a_click_on_an_outdated_review_prompt_is_refused(pipe: Pipeline) -> None:
    order_id = await proposed(pipe, "competitor pricing table")
    await run_to_review(pipe, order_id, "first version")
    [first] = await prompts(pipe, 1)

    # U7 asks for changes on the first prompt; the rework submits a second deliverable.
    await pipe.click(CHANGES_ACTION, order_id, "U7")
    [opened] = await pipe.slack.wait_for("views.open")
    assert json.loads(opened.args["view"]["private_metadata"])["value"].startswith(f"{order_id}:v")
    pipe.anthropic.script(submit("second version"))
    pipe.openai.script(all_met())
    feedback = pipe.bot.sender.view_submission(
        CHANGES_CALLBACK,
        {"feedback": {"feedback": {"type": "plain_text_input", "value": "Add annual prices."}}},
        user_id="U7",
        private_metadata=opened.args["view"]["private_metadata"],
    )
    assert (await pipe.bot.sender.action(feedback))[0] == 200
    await pipe.post("second version", within=20)
    await pipe.status_of(order_id, Status.AWAITING_REVIEW, within=20)
    _, second = await prompts(pipe, 2)
    assert button_value(second, APPROVE_ACTION) != button_value(first, APPROVE_ACTION)
    # The deliverer records the prompt's ts just after Slack answers; the refusal links it.
    current = (await pipe.bot.store.runs.deliverables(order_id))[-1].id
    key = review_key(result_key(order_id, current))

    async def recorded() -> bool:
        posted = await pipe.bot.store.slack.slack_message(key)
        return posted is not None and posted.ts == second["ts"]

    await eventually(recorded)

    # Approve and Request changes on the first prompt: refused, pointing to the current one.
    await pipe.click(APPROVE_ACTION, order_id, "U7", message=first)
    await pipe.click(CHANGES_ACTION, order_id, "U7", message=first)
    refusals = await pipe.slack.wait_for("chat.postEphemeral", count=2)
    for refusal in refusals:
        text = refusal.args["text"]
        assert "earlier version" in text and "the current review prompt" in text
        assert "https://" in text, "a permalink to the current prompt"
    assert len(pipe.slack.calls_to("views.open")) == 1, "no modal for the outdated prompt"
    assert (await pipe.bot.store.orders.get_order(order_id)).status is Status.AWAITING_REVIEW

    await pipe.click(APPROVE_ACTION, order_id, "U7")  # the current prompt
    await pipe.status_of(order_id, Status.APPROVED)
    [approved] = [
        e
        for e in await pipe.bot.store.audit.audit_trail(order_id)
        if e.kind == "transition" and e.data["to"] == "approved"
    ]
    deliverables = await pipe.bot.store.runs.deliverables(order_id)
    assert approved.data["deliverable"] == deliverables[-1].id != deliverables[0].id


async def test_extend_above_the_class_needs_the_escalation_contact(pipe: Pipeline) -> None:
    order_id = await proposed(pipe, "competitor pricing table")
    order = await pipe.bot.store.orders.get_order(order_id)
    await pipe.bot.store.orders.update_order(
        order_id,
        actor="U1",
        expected=EDITABLE,
        budget=order.budget.model_copy(update={"max_tool_calls": 1}),
    )
    # One read uses the only tool call; the submission after it is over the budget.
    pipe.anthropic.script(Reply.tool("read_thread", {}), submit("done after the extension"))
    await pipe.click(START_ACTION, order_id, "U1")
    await pipe.status_of(order_id, Status.EXCEPTION, within=20)
    await pipe.post(EXTEND_ACTION)

    # +50 % of $2.00 is above the standard class: the requester alone is refused.
    await pipe.click(EXTEND_ACTION, order_id, "U1")
    [refusal] = await pipe.slack.wait_for("chat.postEphemeral")
    assert "above the standard class" in refusal.args["text"]
    assert "<@U9> (the escalation contact) or an admin" in refusal.args["text"]
    assert (await pipe.bot.store.orders.get_order(order_id)).budget.max_usd == 2.0

    pipe.openai.script(all_met())
    await pipe.click(EXTEND_ACTION, order_id, "U9")
    await pipe.status_of(order_id, Status.AWAITING_REVIEW, within=20)
    assert (await pipe.bot.store.orders.get_order(order_id)).budget.max_usd == 3.0
    extended = [e for e in await pipe.bot.store.audit.audit_trail(order_id) if e.kind == "edited"]
    assert extended[-1].actor == "U9"


async def test_a_class_hop_cannot_carry_a_deep_budget_into_quick(pipe: Pipeline) -> None:
    """Issue 19, item 7: the budget is checked against the class the order ends in, and only
    the escalation contact or an admin changes the class."""
    order_id = await proposed(pipe, "competitor pricing table")
    deep = {"workload": "deep", "budget_usd": "10", "wall_clock_min": "60", "tool_calls": "150"}
    view = await edit_view(pipe, order_id, "UADMIN")
    status, body = await submit_edit(pipe, view, "UADMIN", state_from_view(view, **deep))
    assert status == 200 and "errors" not in body, body
    await pipe.update("Edited by <@UADMIN>")
    order = await pipe.bot.store.orders.get_order(order_id)
    assert order.workload_class.value == "deep" and order.budget.max_usd == 10.0

    # The requester moves it to quick, keeping the deep budget: refused on both counts.
    view = await edit_view(pipe, order_id, "U1")
    _, body = await submit_edit(pipe, view, "U1", state_from_view(view, workload="quick"))
    errors = json.loads(body)["errors"]
    assert "needs an admin or the escalation contact" in errors["workload"]
    assert "Above the quick class" in errors["budget_usd"]
    order = await pipe.bot.store.orders.get_order(order_id)
    assert order.workload_class.value == "deep" and order.budget.max_usd == 10.0

    # Within the class it already has, the requester still edits what they own.
    _, body = await submit_edit(pipe, view, "U1", state_from_view(view, title="Pricing v2"))
    assert "errors" not in body, body
    await pipe.slack.wait_until(
        lambda: any("Pricing v2" in json.dumps(c.args) for c in pipe.slack.calls_to("chat.update"))
    )

    # An admin may move it, budget and all: they may exceed any class.
    view = await edit_view(pipe, order_id, "UADMIN")
    _, body = await submit_edit(pipe, view, "UADMIN", state_from_view(view, workload="quick"))
    assert "errors" not in body, body

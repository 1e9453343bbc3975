"""The verification gate end to end: Slack in (signed requests), a real worker pool running the
order, the fake models answering, and the thread showing deliverable, checks and decisions.

Decisions, reworks and retries run on both databases; the tests marked `front_door` are about
what the thread shows (modals, long texts, notices) and run on SQLite only."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import insert
from sqlmodel import select

from bot.cards import CANCEL_ACTION
from bot.dedupe import recover_unhandled
from bot.ids import (
    APPROVE_ACTION,
    CHANGES_ACTION,
    CHANGES_CALLBACK,
    EXCEPTION_CANCEL_ACTION,
    EXTEND_ACTION,
    EXTEND_CALLBACK,
    EXTEND_CUSTOM_ACTION,
    REJECT_ACTION,
    RETRY_ACTION,
)
from bot.review_blocks import decided_blocks
from bot.slack_client import TRANSIENT_RETRIES
from tests.fakes.anthropic import Reply
from tests.fakes.slack import FakeSlack
from tests.support.pipeline import Pipeline, PipelineFactory, verdicts
from tests.support.records import attempts as fetch_attempts
from tests.support.records import llm_calls
from tests.support.settings import FAST_ENGINE
from tests.support.slack import state_from_view
from tests.support.statements import refusing_outbox_rows
from tests.support.waiting import bot_idle, eventually
from workers.followup import FollowUps
from workers.keys import status_key
from workers.models import SlackEventSeen, SlackMessage, utcnow
from workers.review import decide
from workers.store import Store
from workers.store.slack import sealed_delivery
from workers.workorder import Status

CRITERIA = ["Covers Acme, Globex and Initech", "Every price cites a source URL", "Fits on one page"]


def submit(content: str, summary: str = "Pricing table ready.") -> Reply:
    return Reply.tool("submit_deliverable", {"content": content, "summary": summary})


@pytest.fixture
async def pipe(pipeline: PipelineFactory) -> AsyncIterator[Pipeline]:
    async with pipeline(admins=["UADMIN"]) as p:
        yield p


async def test_mention_to_approved(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, True, True))
    order_id = await pipe.order_started(
        submit("| Vendor | Price |\n| Acme | $10 (acme.com/pricing) |")
    )
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)

    deliverable = await pipe.post("| Acme | $10")
    assert deliverable["thread_ts"] == (await pipe.bot.store.orders.get_order(order_id)).thread_ts
    prompt = await pipe.post(APPROVE_ACTION)
    text = json.dumps(prompt["blocks"], ensure_ascii=False)
    assert "<@U7>" in text and "all 3 criteria met" in text
    assert "✅ Covers Acme, Globex and Initech" in text and "Spend and time: $" in text
    # The verifier ran on the verify route (OpenAI), its cost on the order.
    calls = await llm_calls(pipe.bot.store, order_id)
    assert [c.role for c in calls] == ["execute", "verify"]
    row = await pipe.bot.store.orders.get_row(order_id)
    assert row.spent_micro_usd == sum(c.cost_micro_usd for c in calls)

    await pipe.click(APPROVE_ACTION, order_id, "U7")
    await pipe.status_of(order_id, Status.APPROVED)
    decided = await pipe.update("Approved* by <@U7>")
    assert APPROVE_ACTION not in json.dumps(decided["blocks"]), "the buttons disappear"
    await pipe.update("Approved (by <@U7>)")  # the status message shows the final state
    await pipe.update("· Approved ·")
    trail = await pipe.bot.store.audit.audit_trail(order_id)
    assert (trail[-1].actor, trail[-1].data["to"]) == ("U7", "approved")


async def test_failing_criterion_gets_one_automatic_revision(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, False, True), verdicts(True, True, True))
    order_id = await pipe.order_started(
        submit("v1 without sources"), submit("v2 with sources for everyone")
    )
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    revision_request = json.dumps(pipe.anthropic.requests[-1]["messages"])
    assert "no source for Globex" in revision_request, "the run saw the verifier's findings"
    assert not pipe.posts_with("v1 without sources"), (
        "a failed first draft is not shown to the reviewer"
    )
    await pipe.post("v2 with sources for everyone")
    row = await pipe.bot.store.orders.get_row(order_id)
    assert row.auto_revisions == 1
    prompt = await pipe.post(APPROVE_ACTION)
    assert "all 3 criteria met" in json.dumps(prompt["blocks"], ensure_ascii=False)


async def test_failures_after_the_last_revision_go_to_the_reviewer_honestly(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, False, True), verdicts(True, False, True))
    order_id = await pipe.order_started(submit("v1"), submit("v2 still missing a source"))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    prompt = await pipe.post(APPROVE_ACTION)
    text = json.dumps(prompt["blocks"], ensure_ascii=False)
    assert "1 of 3 criteria *not met*" in text and "❌ Every price cites a source URL" in text


async def test_request_changes_rework_then_approve(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, True, True), verdicts(True, True, True))
    order_id = await pipe.order_started(submit("v1"))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)

    await pipe.click(CHANGES_ACTION, order_id, "U7")
    [opened] = await pipe.slack.wait_for("views.open")
    view = opened.args["view"]
    assert view["callback_id"] == CHANGES_CALLBACK
    empty = pipe.bot.sender.view_submission(
        CHANGES_CALLBACK,
        {"feedback": {"feedback": ""}},
        user_id="U7",
        private_metadata=view["private_metadata"],
    )
    _, body = await pipe.bot.sender.action(empty)
    assert "Say what should change" in json.loads(body)["errors"]["feedback"]

    pipe.anthropic.script(submit("v2 with annual prices"))
    feedback = pipe.bot.sender.view_submission(
        CHANGES_CALLBACK,
        {"feedback": {"feedback": "Add annual prices."}},
        user_id="U7",
        private_metadata=view["private_metadata"],
    )
    assert (await pipe.bot.sender.action(feedback))[0] == 200
    await pipe.slack.wait_until(lambda: bool(pipe.posts_with("v2 with annual prices")))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    assert "Add annual prices." in json.dumps(pipe.anthropic.requests[-1]["messages"])
    row = await pipe.bot.store.orders.get_row(order_id)
    assert row.rework_count == 1
    decided = await pipe.update("Changes requested* by <@U7>")
    assert "Add annual prices." in json.dumps(decided["blocks"])

    await pipe.click(APPROVE_ACTION, order_id, "U7")
    await pipe.status_of(order_id, Status.APPROVED)


@pytest.mark.front_door
async def test_the_changes_modal_is_acknowledged_before_its_work_is_done(
    pipe: Pipeline,
) -> None:
    """Slack wants a view submission answered within 3 s: the decision, the thread updates and
    the requeue happen after the ack, so a slow Slack or database cannot close the modal with
    an error while the decision goes through anyway."""
    pipe.openai.script(verdicts(True, True, True), verdicts(True, True, True))
    order_id = await pipe.order_started(submit("v1"))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    await pipe.click(CHANGES_ACTION, order_id, "U7")
    [opened] = await pipe.slack.wait_for("views.open")
    pipe.anthropic.script(submit("v2 with annual prices"))
    gate = pipe.slack.gates["chat.update"] = asyncio.Event()  # Slack is slow to update
    try:
        feedback = pipe.bot.sender.view_submission(
            CHANGES_CALLBACK,
            {"feedback": {"feedback": "Add annual prices."}},
            user_id="U7",
            private_metadata=opened.args["view"]["private_metadata"],
        )
        status, body = await pipe.bot.sender.action(feedback)
        assert (status, body) == (200, "")  # answered while the thread updates still wait
    finally:
        gate.set()
    await pipe.update("Changes requested* by <@U7>")
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)


async def test_request_changes_is_one_transaction(pipe: Pipeline) -> None:
    """If queueing the rework fails, the decision is not left half-made: the order is still
    awaiting review, with no feedback in its inbox and no rework counted."""
    pipe.openai.script(verdicts(True, True, True))
    order_id = await pipe.order_started(submit("v1"))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    store = pipe.bot.store
    requeue = store.queue._requeue

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("the database went away mid-decision")

    store.queue._requeue = broken  # type: ignore[method-assign]
    try:
        with pytest.raises(ConnectionError):
            await decide(
                store, pipe.bot.settings, order_id, "changes", actor="U7", feedback="More."
            )
    finally:
        store.queue._requeue = requeue  # type: ignore[method-assign]
    row = await store.orders.get_row(order_id)
    assert (row.status, row.rework_count, row.inbox or []) == (Status.AWAITING_REVIEW.value, 0, [])
    await pipe.click(APPROVE_ACTION, order_id, "U7")  # and it can still be decided
    await pipe.status_of(order_id, Status.APPROVED)


@pytest.mark.front_door
async def test_unauthorised_approver_is_refused(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, True, True))
    order_id = await pipe.order_started(submit("v1"))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    for user in (
        "U3",
        "U1",
        "UADMIN",
    ):  # a bystander, the requester (a reviewer is named), an admin
        await pipe.click(APPROVE_ACTION, order_id, user)
    refusals = await pipe.slack.wait_for("chat.postEphemeral", count=3)
    assert all("Only the reviewer (<@U7>)" in r.args["text"] for r in refusals)
    assert (await pipe.bot.store.orders.get_order(order_id)).status is Status.AWAITING_REVIEW


async def _plant_delivery(store: Store, event_id: str, body: dict[str, Any]) -> None:
    """What someone with write access to the database, but not the audit key, can do: put a
    delivery in the recovery queue as if a dead process had left it unhandled."""
    async with store.engine.begin() as conn:
        await conn.execute(
            insert(SlackEventSeen.__table__).values(  # type: ignore[attr-defined]
                event_id=event_id,
                kind="app_mention",
                received_at=utcnow() - timedelta(hours=1),
                body=body,
                attempts=1,
            )
        )


async def test_a_planted_approval_is_never_replayed(pipe: Pipeline) -> None:
    """An Approve click written into the recovery queue does not approve the order: it has no
    MAC under the audit key, and an interaction is never replayed even with one."""
    assert pipe.bot.bolt is not None
    pipe.openai.script(verdicts(True, True, True))
    order_id = await pipe.order_started(submit("| Acme | $10 |"))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    approve = await pipe.click_payload(APPROVE_ACTION, order_id, "U7")
    store = pipe.bot.store
    await _plant_delivery(store, "sig:planted-raw", approve)
    await _plant_delivery(
        store, "sig:planted-mac", sealed_delivery(store.audit_key, "sig:planted-mac", approve)
    )

    taken = await recover_unhandled(pipe.bot.bolt, store, older_than=timedelta(0))
    await bot_idle()
    assert (await store.orders.get_order(order_id)).status is Status.AWAITING_REVIEW
    trail = await store.audit.audit_trail(order_id)
    assert not [e for e in trail if e.actor == "U7" or e.data.get("to") == "approved"]
    assert taken == 0
    async with store.db.sessions() as s:
        for event_id in ("sig:planted-raw", "sig:planted-mac"):
            row = await s.get(SlackEventSeen, event_id)
            assert row is not None and row.handled_at is not None, "given up, not retried"
    assert await recover_unhandled(pipe.bot.bolt, store, older_than=timedelta(0)) == 0


async def test_concurrent_approve_and_reject_make_one_decision(
    pipe: Pipeline, fake_slack: FakeSlack
) -> None:
    pipe.openai.script(verdicts(True, True, True))
    order_id = await pipe.order_started(submit("v1"))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    await asyncio.gather(
        pipe.click(APPROVE_ACTION, order_id, "U7"),
        pipe.click(REJECT_ACTION, order_id, "U7"),
        pipe.click(APPROVE_ACTION, order_id, "U7"),
    )
    await fake_slack.wait_until(
        lambda: len(fake_slack.calls_to("chat.postEphemeral")) >= 2, within=10
    )
    final = (await pipe.bot.store.orders.get_order(order_id)).status
    assert final in (Status.APPROVED, Status.REJECTED)
    decisions = [
        e
        for e in await pipe.bot.store.audit.audit_trail(order_id)
        if e.kind == "transition" and e.data["to"] in ("approved", "rejected")
    ]
    assert len(decisions) == 1
    assert all(
        "already been decided" in c.args["text"] for c in fake_slack.calls_to("chat.postEphemeral")
    )


async def posted_status(store: Store, order_id: str) -> SlackMessage:
    """The order's status message once it is posted (status updates go out apart from the run,
    so the first can still be on its way when the review prompt is out)."""

    async def posted() -> SlackMessage | None:
        message = await store.slack.slack_message(status_key(order_id))
        return message if message is not None and message.ts else None

    await eventually(posted)
    message = await posted()
    assert message is not None
    return message


async def hold_status_post(store: Store, order_id: str, *, for_s: float) -> str:
    """Make the order's status message look as if another process were posting it right now
    (its claim held for `for_s`, no ts yet); returns the ts it had."""
    await posted_status(store, order_id)
    async with store.transaction() as s:
        query = select(SlackMessage).where(SlackMessage.key == status_key(order_id))
        row = (await s.exec(query)).one()
        ts = row.ts or ""
        row.ts, row.claimed_by = "", "another-process"
        row.claimed_until = utcnow() + timedelta(seconds=for_s)
        s.add(row)
    return ts


async def test_a_decision_reaches_the_status_while_another_process_posts_it(
    pipe: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    pipe.openai.script(verdicts(True, True, True))
    order_id = await pipe.order_started(submit("v1"))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    await pipe.post(APPROVE_ACTION)
    store = pipe.bot.store
    ts = await hold_status_post(store, order_id, for_s=60)

    await pipe.click(APPROVE_ACTION, order_id, "U7")
    await pipe.status_of(order_id, Status.APPROVED)
    # The other process's post lands: the status then shows the decision, not its older text.
    channel = (await store.orders.get_order(order_id)).channel or ""
    await store.slack.save_slack_message(
        key=status_key(order_id), purpose="status", channel=channel, ts=ts, order=order_id
    )
    shown = await pipe.update("Approved (by <@U7>)")
    assert shown["ts"] == ts
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_decision_reaches_the_status_after_its_poster_died(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, True, True))
    order_id = await pipe.order_started(submit("v1"))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    await pipe.post(APPROVE_ACTION)
    # Its poster died after posting: the claim runs out, and the message is found in the thread.
    ts = await hold_status_post(pipe.bot.store, order_id, for_s=1)

    await pipe.click(APPROVE_ACTION, order_id, "U7")
    shown = await pipe.update("Approved (by <@U7>)")
    assert shown["ts"] == ts
    statuses = [
        c
        for c in pipe.slack.calls_to("chat.postMessage")
        if c.args["text"].startswith(f"*{order_id}* ·")
    ]
    assert len(statuses) == 1, "the status message is not posted twice"


@pytest.mark.front_door
async def test_a_status_message_deleted_in_slack_is_posted_again(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, True, True))
    order_id = await pipe.order_started(submit("v1"))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    await pipe.post(APPROVE_ACTION)
    # Every status owed so far is shown: otherwise a late one finds the message gone and posts
    # it again before the approval does.
    await pipe.drained()
    # A workspace admin deletes the bot's status message.
    deleted = await posted_status(pipe.bot.store, order_id)
    admin = AsyncWebClient(token=pipe.slack.token, base_url=pipe.slack.api_url)
    await admin.chat_delete(channel=deleted.channel, ts=deleted.ts or "")

    await pipe.click(APPROVE_ACTION, order_id, "U7")
    again = await pipe.post("Approved (by <@U7>)")
    assert again["thread_ts"] == (await pipe.bot.store.orders.get_order(order_id)).thread_ts

    async def recorded() -> bool:  # later updates edit the new message
        stored = await pipe.bot.store.slack.slack_message(status_key(order_id))
        return stored is not None and stored.ts not in ("", deleted.ts)

    await eventually(recorded)


@pytest.mark.front_door
async def test_long_deliverable_is_uploaded_as_a_file_where_canvases_are_off(
    pipe: Pipeline,
) -> None:
    pipe.openai.script(verdicts(True, True, True))
    pipe.slack.fail_next("canvases.create", status=200, error="canvas_disabled_user_team")
    long_text = "# Report\n" + "\n".join(
        f"Row {i}: Acme $10, Globex $12, Initech $9" for i in range(800)
    )
    order_id = await pipe.order_started(submit(long_text, "A long report."))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    [upload] = await pipe.slack.wait_for("files.completeUploadExternal")
    assert upload.args["channel_id"] == "C1"
    [stored] = pipe.slack.files.values()
    assert stored["content"].decode() == long_text
    assert not pipe.posts_with("Row 799"), "the long text is not pasted into the thread"
    await pipe.post(APPROVE_ACTION)


@pytest.mark.front_door
async def test_a_200000_character_summary_keeps_the_review_buttons(pipe: Pipeline) -> None:
    """The summary used to fill the prompt's 50 blocks, and the cut took the buttons with it."""
    pipe.openai.script(verdicts(True, True, True))
    summary = "Summary start. " + "Every price checked twice. " * 7_500
    assert len(summary) > 200_000
    order_id = await pipe.order_started(submit("| Acme | $10 (acme.com/pricing) |", summary))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)

    prompt = await pipe.post("is ready for your review")
    [controls] = [b for b in prompt["blocks"] if b["type"] == "actions"]
    assert [e["text"]["text"] for e in controls["elements"]] == [
        "Approve",
        "Request changes",
        "Reject",
    ]
    text = json.dumps(prompt["blocks"], ensure_ascii=False)
    assert "Summary start." in text and "summary cut at 1,000 characters" in text
    assert len(text) < 10_000, "the summary is shown short; the deliverable carries the work"
    await pipe.click(APPROVE_ACTION, order_id, "U7")
    await pipe.status_of(order_id, Status.APPROVED)


async def test_budget_exception_extend_resumes_to_completion(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, True, True))
    # One read uses the only tool call; the stop comes before the next model call.
    order_id = await pipe.order_started(
        Reply.tool("read_thread", {}), submit("v1 after extension"), budget={"max_tool_calls": 1}
    )
    await pipe.status_of(order_id, Status.EXCEPTION)
    exception = await pipe.post(EXTEND_ACTION)
    text = exception["text"]
    assert "Budget exhausted" in text and "<@U1>" in text and "Spend so far" in text
    blocks = json.dumps(exception["blocks"])
    for action in (EXTEND_ACTION, EXTEND_CUSTOM_ACTION, RETRY_ACTION, EXCEPTION_CANCEL_ACTION):
        assert action in blocks

    await pipe.click(EXTEND_ACTION, order_id, "U3")  # not requester, escalation contact or admin
    [refusal] = await pipe.slack.wait_for("chat.postEphemeral")
    assert "can act on" in refusal.args["text"]
    # +50 % takes the order above its class: not for the requester alone (who is also the
    # escalation contact here, as no channel names one).
    await pipe.click(EXTEND_ACTION, order_id, "U1")
    [_, above] = await pipe.slack.wait_for("chat.postEphemeral", count=2)
    assert "above the standard class" in above.args["text"]
    assert "only an admin can do that" in above.args["text"]
    assert (await pipe.bot.store.orders.get_order(order_id)).status is Status.EXCEPTION

    await pipe.click(EXTEND_ACTION, order_id, "UADMIN")
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    order = await pipe.bot.store.orders.get_order(order_id)
    assert order.budget.max_tool_calls == 2
    await pipe.post("v1 after extension")
    await pipe.update("Budget extended to")
    attempts = await fetch_attempts(pipe.bot.store, order_id)
    assert len(attempts) == 2, "Extend resumed the run as a new attempt"
    edits = [
        e
        for e in await pipe.bot.store.audit.audit_trail(order_id)
        if e.kind == "edited" and e.actor == "UADMIN"
    ]
    assert edits and edits[-1].data["reason"] == "budget extended"


@pytest.mark.front_door
async def test_custom_extension_modal_validates(pipe: Pipeline) -> None:
    # The fourth call exceeds the budget; Extend (x1.5) leaves room for it and the submission.
    order_id = await pipe.order_started(
        *[Reply.tool("read_thread", {}) for _ in range(4)], budget={"max_tool_calls": 3}
    )
    await pipe.status_of(order_id, Status.EXCEPTION)
    await pipe.post(EXTEND_CUSTOM_ACTION)  # pressed on the notice, once it is in the thread
    await pipe.click(EXTEND_CUSTOM_ACTION, order_id, "U1")
    [opened] = await pipe.slack.wait_for("views.open")
    view = opened.args["view"]
    assert view["callback_id"] == EXTEND_CALLBACK
    low = pipe.bot.sender.view_submission(
        EXTEND_CALLBACK,
        state_from_view(view, usd="0.10"),
        user_id="U1",
        private_metadata=view["private_metadata"],
    )
    _, body = await pipe.bot.sender.action(low)
    assert "more than the current $2.00" in json.loads(body)["errors"]["usd"]
    above = pipe.bot.sender.view_submission(
        EXTEND_CALLBACK,
        state_from_view(view, usd="5"),
        user_id="U1",
        private_metadata=view["private_metadata"],
    )
    _, body = await pipe.bot.sender.action(above)
    assert "only an admin can do that" in json.loads(body)["errors"]["usd"]
    pipe.anthropic.script(submit("done"))
    pipe.openai.script(verdicts(True, True, True))
    ok = pipe.bot.sender.view_submission(
        EXTEND_CALLBACK,
        state_from_view(view, usd="5"),
        user_id="UADMIN",
        private_metadata=view["private_metadata"],
    )
    assert (await pipe.bot.sender.action(ok))[0] == 200
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    assert (await pipe.bot.store.orders.get_order(order_id)).budget.max_usd == 5.0
    # The notice shows the extension as the +50 % button's would: its buttons give way.
    notice, ts = await pipe.post(EXTEND_ACTION), _notice_ts(pipe, EXTEND_ACTION)
    await pipe.slack.wait_until(lambda: bool(_edits_of(pipe, ts)))
    [edit] = _edits_of(pipe, ts)
    line = edit.args["text"]
    assert line.startswith("Budget extended to $5.00 · ") and line.endswith(
        "by <@UADMIN>; resuming from the last checkpoint."
    )
    assert edit.args["blocks"] == decided_blocks(notice["blocks"], line=line)


@pytest.mark.parametrize(
    ("kind", "setup", "title"),
    [
        ("authority", "forbidden", "Stopped by its authority policy"),
        ("provider", "bad_key", "The model provider is unavailable"),
    ],
)
@pytest.mark.front_door
async def test_exception_kinds_post_plain_messages_with_buttons(
    pipe: Pipeline, kind: str, setup: str, title: str
) -> None:
    replies = (
        # The "default" policy does not offer web_fetch: the model calls it anyway.
        [
            Reply.tool("web_fetch", {"url": "https://example.com"}, undeclared_ok=True)
            for _ in range(4)
        ]
        if setup == "forbidden"
        else [Reply.error(401, "invalid x-api-key")]
    )
    order_id = await pipe.order_started(*replies, authority_policy="default")
    await pipe.status_of(order_id, Status.EXCEPTION)
    exception = await pipe.post(EXTEND_ACTION)
    assert title in exception["text"] and "<@U1>" in exception["text"]
    await pipe.click(EXCEPTION_CANCEL_ACTION, order_id, "U1")
    await pipe.status_of(order_id, Status.CANCELLED)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_reminder_and_escalation_fire_on_time_and_survive_a_restart(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, True, True))
    order_id = await pipe.order_started(submit("v1"))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    settings = pipe.bot.settings
    clock = Clock()

    def follow_ups() -> FollowUps:  # a fresh instance is what a restarted process has
        return FollowUps(settings, pipe.bot.store, clock=clock)

    await follow_ups().sweep()
    assert not pipe.posts_with("a reminder")
    clock.now += timedelta(seconds=settings.review.reminder_after_s + 1)
    await follow_ups().sweep()
    await follow_ups().sweep()
    await pipe.post("a reminder")
    await pipe.drained()
    reminders = pipe.posts_with("a reminder")
    assert len(reminders) == 1 and "<@U7>" in reminders[0]["text"]
    clock.now += timedelta(seconds=settings.review.escalate_after_s)
    restarted = follow_ups()
    await restarted.sweep()
    await restarted.sweep()
    await pipe.post("has waited")
    await pipe.drained()
    escalations = pipe.posts_with("has waited")
    assert len(escalations) == 1 and escalations[0]["text"].startswith(
        "<@U1>"
    )  # escalation contact
    assert len(pipe.posts_with("a reminder")) == 1


@pytest.mark.front_door
async def test_quiet_order_gets_a_note_saying_why(pipe: Pipeline) -> None:
    order_id = await pipe.order_started(
        Reply.tool("ask_requester", {"question": "Which currency?"})
    )
    await pipe.status_of(order_id, Status.WAITING_FOR_REQUESTER)
    clock = Clock()
    clock.now += timedelta(seconds=pipe.bot.settings.review.quiet_after_s + 5)
    await FollowUps(pipe.bot.settings, pipe.bot.store, clock=clock).sweep()
    note = await pipe.post("Still here")
    assert "waiting for <@U1> to answer" in note["text"]


async def test_stalled_run_posts_an_exception_and_retry_resumes_it(pipe: Pipeline) -> None:
    chatter = [Reply(text="Let me think about this some more.") for _ in range(3)]
    order_id = await pipe.order_started(*chatter)
    await pipe.status_of(order_id, Status.EXCEPTION)
    exception = await pipe.post(RETRY_ACTION)
    assert "The run stalled" in exception["text"] and "<@U1>" in exception["text"]
    pipe.openai.script(verdicts(True, True, True))
    pipe.anthropic.script(submit("finally done"))
    await pipe.click(RETRY_ACTION, order_id, "U1")
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    await pipe.post("finally done")
    await pipe.update("Retried by <@U1>")


def _notice_ts(pipe: Pipeline, action_id: str) -> str:
    """The ts of the latest message posted with the button `action_id`."""
    [*_, notice] = [
        c
        for c in pipe.slack.calls_to("chat.postMessage")
        if action_id in json.dumps(c.args.get("blocks") or [])
    ]
    assert notice.response is not None
    return str(notice.response["ts"])


def _edits_of(pipe: Pipeline, ts: str) -> list[Any]:
    """The chat.update calls on the message `ts` that Slack carried out."""
    return [
        c
        for c in pipe.slack.calls_to("chat.update")
        if c.args.get("ts") == ts and c.status == 200 and (c.response or {}).get("ok")
    ]


async def test_a_retry_acknowledgement_slack_fails_to_show_arrives_once_from_the_outbox(
    pipe: Pipeline,
) -> None:
    """The edit that shows who pressed Retry on the exception notice is owed by the Retry
    itself (an outbox row of its transaction): Slack failing it, past the client's own
    retries, only delays it. The deliverer shows it once, on the notice as it was posted."""
    chatter = [Reply(text="Let me think about this some more.") for _ in range(3)]
    order_id = await pipe.order_started(*chatter)
    await pipe.status_of(order_id, Status.EXCEPTION)
    notice = await pipe.post(RETRY_ACTION)
    ts = _notice_ts(pipe, RETRY_ACTION)
    pipe.slack.fail_next(
        "chat.update",
        status=500,
        times=TRANSIENT_RETRIES + 1,
        matching=lambda args: args.get("ts") == ts,
    )
    pipe.openai.script(verdicts(True, True, True))
    pipe.anthropic.script(submit("finally done"))
    await pipe.click(RETRY_ACTION, order_id, "U1")
    await pipe.slack.wait_until(lambda: bool(_edits_of(pipe, ts)))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    await bot_idle()
    await pipe.drained()
    [edit] = _edits_of(pipe, ts)
    line = "Retried by <@U1>; resuming from the last checkpoint."
    assert edit.args["text"] == line
    assert edit.args["blocks"] == decided_blocks(notice["blocks"], line=line)
    tried = [c for c in pipe.slack.calls_to("chat.update") if c.args.get("ts") == ts]
    assert len(tried) == TRANSIENT_RETRIES + 2, "failed as often as asked, then shown once"
    [row] = [m for m in await pipe.bot.store.outbox.outbox(order_id) if m.kind == "exception_decided"]
    assert row.sent_at is not None and row.attempts == 2 and row.key.endswith(":decided")


async def test_an_exception_cancel_whose_acknowledgement_cannot_be_written_is_not_made(
    pipe: Pipeline,
) -> None:
    """The acknowledgement is written in the Cancel's own transaction: when it cannot be, the
    order is not cancelled either and the notice keeps its buttons. Pressed again, the Cancel
    goes through and the notice shows it once."""
    chatter = [Reply(text="Let me think about this some more.") for _ in range(3)]
    order_id = await pipe.order_started(*chatter)
    await pipe.status_of(order_id, Status.EXCEPTION)
    notice = await pipe.post(EXCEPTION_CANCEL_ACTION)
    ts = _notice_ts(pipe, EXCEPTION_CANCEL_ACTION)
    await pipe.drained()
    with refusing_outbox_rows(pipe.bot.store.engine, "exception_decided"):
        await pipe.click(EXCEPTION_CANCEL_ACTION, order_id, "U1")
        await bot_idle()
    assert (await pipe.bot.store.orders.get_order(order_id)).status is Status.EXCEPTION
    await pipe.drained()
    assert not [c for c in pipe.slack.calls_to("chat.update") if c.args.get("ts") == ts]

    await pipe.click(EXCEPTION_CANCEL_ACTION, order_id, "U1")
    await pipe.status_of(order_id, Status.CANCELLED)
    await pipe.slack.wait_until(lambda: bool(_edits_of(pipe, ts)))
    await bot_idle()
    await pipe.drained()
    [edit] = _edits_of(pipe, ts)
    assert edit.args["blocks"] == decided_blocks(notice["blocks"], line="Cancelled by <@U1>.")


async def test_quota_wait_beyond_its_limit_becomes_an_exception(
    store: Store,
    pipeline: PipelineFactory,
) -> None:
    async with pipeline(
        teams={"default": {"weekly_usd": 0.01}},
        engine={**FAST_ENGINE, "max_quota_wait_s": 1},
    ) as p:
        order_id = await p.order_started(submit("never runs"))
        await p.status_of(order_id, Status.EXCEPTION)
        exception = await p.post(EXTEND_ACTION)
        assert "Waited too long for team quota" in exception["text"]
        assert (await llm_calls(store, order_id)) == []


@pytest.mark.front_door
async def test_deadline_at_risk_and_missed_notices(pipe: Pipeline) -> None:
    order_id = await pipe.order_started(
        Reply.tool("ask_requester", {"question": "Which currency?"})
    )
    await pipe.status_of(order_id, Status.WAITING_FOR_REQUESTER)
    deadline = datetime.now(UTC) + timedelta(hours=2)
    await pipe.bot.store.orders.update_order(
        order_id, actor="U1", expected={Status.WAITING_FOR_REQUESTER}, deadline=deadline
    )
    clock = Clock()
    follow_ups = FollowUps(pipe.bot.settings, pipe.bot.store, clock=clock)
    await follow_ups.sweep()
    assert not pipe.posts_with("deadline")
    clock.now = deadline - timedelta(minutes=30)
    await follow_ups.sweep()
    await follow_ups.sweep()
    await pipe.post("at risk of missing its deadline")
    await pipe.drained()
    assert len(pipe.posts_with("at risk of missing its deadline")) == 1
    clock.now = deadline + timedelta(minutes=1)
    await follow_ups.sweep()
    missed = await pipe.post("has missed its deadline")
    assert missed["text"].startswith("<@U1>")


async def test_cancel_button_on_the_status_message_stops_a_running_order(pipe: Pipeline) -> None:
    slow = Reply.tool("read_thread", {})
    slow.delay = 60  # the run is stopped long before this reply would end its step
    order_id = await pipe.order_started(slow)
    await pipe.status_of(order_id, Status.RUNNING)
    # The status message offers Cancel (the card, redrawn as the order stands, says Running too).
    await pipe.slack.wait_until(
        lambda: any(
            CANCEL_ACTION in json.dumps(m["blocks"])
            for m in pipe.posts_with("· Running ·") + pipe.updates_with("· Running ·")
        )
    )
    await pipe.click(CANCEL_ACTION, order_id, "U3")  # a bystander
    [refusal] = await pipe.slack.wait_for("chat.postEphemeral")
    assert "Only <@U1>" in refusal.args["text"]
    await pipe.click(CANCEL_ACTION, order_id, "U1")
    await pipe.status_of(order_id, Status.CANCELLED)

    async def attempt_closed() -> bool:  # the worker notices within cancel_poll_s
        return (await fetch_attempts(pipe.bot.store, order_id))[-1].ended_at is not None

    await eventually(attempt_closed, timeout_s=30)
    assert (await fetch_attempts(pipe.bot.store, order_id))[-1].outcome == "cancelled"


async def test_cancel_reply_in_the_thread_stops_a_waiting_order(pipe: Pipeline) -> None:
    order_id = await pipe.order_started(
        Reply.tool("ask_requester", {"question": "Which currency?"})
    )
    await pipe.status_of(order_id, Status.WAITING_FOR_REQUESTER)
    question = await pipe.post("Which currency?")
    assert question["text"].startswith("<@U1>")
    thread = (await pipe.bot.store.orders.get_order(order_id)).thread_ts
    reply = pipe.bot.sender.direct_message("cancel", channel="C1", thread_ts=thread)
    reply["channel_type"] = "channel"
    await pipe.bot.sender.event(reply)
    await pipe.status_of(order_id, Status.CANCELLED)


async def test_requester_reply_resumes_a_parked_run(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, True, True))
    order_id = await pipe.order_started(
        Reply.tool("ask_requester", {"question": "Which currency?"})
    )
    await pipe.status_of(order_id, Status.WAITING_FOR_REQUESTER)
    pipe.anthropic.script(submit("Prices in EUR"))
    thread = (await pipe.bot.store.orders.get_order(order_id)).thread_ts
    reply = pipe.bot.sender.direct_message("EUR please", channel="C1", thread_ts=thread)
    reply["channel_type"] = "channel"
    await pipe.bot.sender.event(reply)
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    assert "EUR please" in json.dumps(pipe.anthropic.requests[-1]["messages"])


@pytest.mark.front_door
async def test_the_card_shows_a_review_decision_slack_first_fails_to_show(pipe: Pipeline) -> None:
    """The card's redraw after a decision is owed by the decision itself (an outbox row of its
    transaction), like the prompt's: Slack failing the edit past the client's own retries only
    delays it. It used to be edited from the button handler, and lost."""
    pipe.openai.script(verdicts(True, True, True))
    order_id = await pipe.order_started(submit("v1"))
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    await pipe.post(APPROVE_ACTION)
    await pipe.drained()
    card = await pipe.bot.store.slack.slack_message(f"{order_id}:card")
    assert card is not None and card.ts
    ts = card.ts
    pipe.slack.fail_next(
        "chat.update",
        status=500,
        times=TRANSIENT_RETRIES + 1,
        matching=lambda args: args.get("ts") == ts,
    )
    await pipe.click(APPROVE_ACTION, order_id, "U7")
    await pipe.status_of(order_id, Status.APPROVED)
    await pipe.slack.wait_until(
        lambda: any("Approved" in json.dumps(e.args["blocks"]) for e in _edits_of(pipe, ts))
    )
    await pipe.drained()
    rows = await pipe.bot.store.outbox.outbox(order_id)
    [row] = [m for m in rows if m.kind == "card" and ":decided:" in m.key]
    assert row.sent_at is not None and row.attempts == 2

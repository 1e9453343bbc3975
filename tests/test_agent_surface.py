"""Slack's agent surface end to end (issue 21): signed requests in, Web API calls out, a real
worker pool in between. An order's thread is an agent session (processing, suspended at review,
closed), its run streams a live plan (a task per step, stopped with the state and its buttons),
the native stop button is Cancel under Cancel's authority, and a deliverable's Markdown renders."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.ids import APPROVE_ACTION, CANCEL_ACTION
from tests.fakes.anthropic import Reply
from tests.fakes.slack import FakeSlack
from tests.support.pipeline import Pipeline, PipelineFactory, verdicts
from tests.support.waiting import eventually
from workers.workorder import Status

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py

TABLE = "| Vendor | Price |\n|---|---|\n| Acme | $10 |\n| Globex | $12 |"


def submit(content: str, summary: str = "Pricing table ready.", **kwargs: Any) -> Reply:
    return Reply.tool("submit_deliverable", {"content": content, "summary": summary}, **kwargs)


@pytest.fixture
async def pipe(
    pipeline: PipelineFactory,
    fake_slack: FakeSlack,
) -> AsyncIterator[Pipeline]:
    fake_slack.agent()  # declared an agent: Slack grants assistant:write
    async with pipeline(admins=["UADMIN"]) as p:
        yield p


async def _thread(pipe: Pipeline, order_id: str) -> tuple[str, str]:
    order = await pipe.bot.store.orders.get_order(order_id)
    assert order.channel and order.thread_ts
    return order.channel, order.thread_ts


def _session(pipe: Pipeline, thread: tuple[str, str]) -> dict[str, Any]:
    return pipe.slack.sessions.get(thread) or {"status": None, "history": []}


def _stream_tasks(pipe: Pipeline) -> list[dict[str, Any]]:
    """Every task_update the bot sent, in order, over all stream calls."""
    return [
        chunk
        for method in ("chat.startStream", "chat.appendStream", "chat.stopStream")
        for call in pipe.slack.calls_to(method)
        for chunk in call.args.get("chunks") or []
        if chunk.get("type") == "task_update"
    ]


def _status_posted(slack: FakeSlack) -> bool:
    """Whether an order's status message is in its thread (its post carries the status key)."""
    for call in slack.calls_to("chat.postMessage"):
        payload = (call.args.get("metadata") or {}).get("event_payload") or {}
        if str(payload.get("key", "")).endswith(":status"):
            return True
    return False


def _in_order(seen: list[str], wanted: list[str]) -> bool:
    it = iter(seen)
    return all(any(s == w for s in it) for w in wanted)


async def test_an_order_is_a_session_with_a_live_plan_and_a_rendered_table(
    pipe: Pipeline,
) -> None:
    pipe.openai.script(verdicts(True, True, True))
    # The run hands in once its plan streams: a busy deliverer may otherwise first look when
    # the run has already ended, and a run that never streamed keeps its status message.
    streaming = pipe.slack.once(lambda: bool(pipe.slack.calls_to("chat.startStream")))
    order_id = await pipe.order_started(
        Reply.tool("read_thread", {}), Reply.tool("read_thread", {}), submit(TABLE, hold=streaming)
    )
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    thread = await _thread(pipe, order_id)
    await pipe.slack.wait_until(lambda: bool(pipe.slack.calls_to("chat.stopStream")))
    await pipe.slack.wait_until(lambda: _session(pipe, thread)["status"] == "suspended")

    # The session: titled with the order, processing while the run worked, suspended at review.
    session = _session(pipe, thread)
    order = await pipe.bot.store.orders.get_order(order_id)
    assert session["title"] == order.title
    assert _in_order(session["history"], ["processing", "suspended"])

    # The live plan: one stream in plan mode, in the order's thread, for its requester.
    [start] = pipe.slack.calls_to("chat.startStream")
    assert start.args["task_display_mode"] == "plan"
    assert start.args["thread_ts"] == thread[1]
    assert (start.args["recipient_user_id"], start.args["recipient_team_id"]) == ("U1", "T1")
    titles = [t["title"] for t in _stream_tasks(pipe)]
    ids_per_title: dict[str, set[str]] = {}
    for task in _stream_tasks(pipe):
        ids_per_title.setdefault(task["title"], set()).add(task["id"])
    # A task per tool call (two reads of the thread: two tasks), verifying and handing in.
    assert len(ids_per_title["Reading the thread"]) == 2, titles
    assert "Checking the deliverable against its acceptance criteria" in titles
    assert "Handing in for review" in titles
    # Stopped with the final state and the review buttons, the session left suspended.
    [stop] = pipe.slack.calls_to("chat.stopStream")
    stopped = json.dumps(stop.args["blocks"])
    assert APPROVE_ACTION in stopped and "Awaiting review" in stopped
    assert stop.args["session_status"] == "suspended"
    [stream] = pipe.slack.streams_in(*thread)
    assert not stream["streaming"]
    assert all(t["status"] == "complete" for t in stream["tasks"].values()), stream["tasks"]

    # The deliverable's Markdown table goes as a markdown block: Slack renders it.
    posted = await pipe.post("| Acme | $10 |")
    markdown = [b for b in posted["blocks"] if b["type"] == "markdown"]
    assert markdown and TABLE in markdown[0]["text"]

    await pipe.click(APPROVE_ACTION, order_id, "U7")
    await pipe.status_of(order_id, Status.APPROVED)
    await pipe.slack.wait_until(lambda: _session(pipe, thread)["status"] == "closed")
    assert _in_order(_session(pipe, thread)["history"], ["processing", "suspended", "closed"])
    # The stopped stream is the status message now: edited in place to the final state.
    await pipe.slack.wait_until(
        lambda: any(u["ts"] == stream["ts"] for u in pipe.updates_with("· Approved ·"))
    )
    [final] = [u for u in pipe.updates_with("· Approved ·") if u["ts"] == stream["ts"]]
    assert APPROVE_ACTION not in json.dumps(final["blocks"])
    await pipe.drained()


async def test_an_exception_leaves_the_session_suspended(pipe: Pipeline) -> None:
    """A run that stops in an exception (here its budget's tool calls run out) waits on a
    person, as a review does: the thread's session is suspended, not left processing."""
    # The second call (over the budget) waits until the plan streams, so the stream's stop
    # is what sets the session (a busy deliverer may otherwise first look after the run).
    streaming = pipe.slack.once(lambda: bool(pipe.slack.calls_to("chat.startStream")))
    order_id = await pipe.order_started(
        Reply.tool("read_thread", {}),
        Reply.tool("read_thread", {}, hold=streaming),
        budget={"max_tool_calls": 1},
    )
    await pipe.status_of(order_id, Status.EXCEPTION, within=20)
    thread = await _thread(pipe, order_id)
    await pipe.post("Budget exhausted")
    await pipe.slack.wait_until(lambda: _session(pipe, thread)["status"] == "suspended")
    assert _in_order(_session(pipe, thread)["history"], ["processing", "suspended"])
    [stop] = await pipe.slack.wait_for("chat.stopStream")
    assert stop.args["session_status"] == "suspended"
    assert "· Needs attention ·" in json.dumps(stop.args["blocks"], ensure_ascii=False)
    await pipe.drained()
    assert _session(pipe, thread)["status"] == "suspended"


async def test_the_native_stop_is_cancel_under_cancels_authority(pipe: Pipeline) -> None:
    order_id = await pipe.order_started(
        Reply.tool("read_thread", {}), Reply(text="thinking slowly", delay=30)
    )
    thread = await _thread(pipe, order_id)
    await pipe.slack.wait_until(lambda: bool(pipe.slack.streams_in(*thread)))
    await eventually(lambda: len(pipe.anthropic.requests) >= 2 + 1)  # intake + two steps
    row = await pipe.bot.store.orders.get_row(order_id)
    assert row.status == Status.RUNNING.value and row.reserved_micro_usd > 0

    # A bystander's stop changes nothing: the run goes on, the session is processing again.
    before = len(_session(pipe, thread)["history"])
    status, _ = await pipe.bot.sender.event(pipe.slack.stop_pressed(*thread, "U9"))
    assert status == 200
    await pipe.slack.wait_until(
        lambda: any(e["recipient"] == "U9" for e in pipe.slack.ephemerals)
        and len(_session(pipe, thread)["history"]) > before
    )
    assert _session(pipe, thread)["status"] == "processing"
    [refusal] = [e for e in pipe.slack.ephemerals if e["recipient"] == "U9"]
    assert "can stop it" in refusal["text"]
    # ... and costs nothing: the run keeps its reservation and its status.
    after = await pipe.bot.store.orders.get_row(order_id)
    assert (after.status, after.reserved_micro_usd) == (row.status, row.reserved_micro_usd)

    # The requester's stop cancels the run, as Cancel does: its reservation is released.
    status, _ = await pipe.bot.sender.event(pipe.slack.stop_pressed(*thread, "U1"))
    assert status == 200
    await pipe.status_of(order_id, Status.CANCELLED)

    async def released() -> bool:
        return (await pipe.bot.store.orders.get_row(order_id)).reserved_micro_usd == 0

    await eventually(released)
    await pipe.slack.wait_until(lambda: _session(pipe, thread)["status"] == "closed")
    trail = await pipe.bot.store.audit.audit_trail(order_id)
    assert any(e.actor == "U1" and e.data.get("to") == "cancelled" for e in trail)
    # The stream Slack stopped is edited as the status message, with no Cancel left to press.
    [stream] = pipe.slack.streams_in(*thread)
    await pipe.slack.wait_until(
        lambda: any(u["ts"] == stream["ts"] for u in pipe.updates_with("· Cancelled ·"))
    )
    [final] = [u for u in pipe.updates_with("· Cancelled ·") if u["ts"] == stream["ts"]]
    assert CANCEL_ACTION not in json.dumps(final["blocks"])
    await pipe.drained()


async def test_without_the_agent_surface_the_status_message_is_edited_as_before(
    pipeline: PipelineFactory,
    fake_slack: FakeSlack,
) -> None:
    """An app not declared an agent: Slack refuses the session once, nothing streams, and the
    status message is edited in place, as before."""
    async with pipeline() as pipe:
        pipe.openai.script(verdicts(True, True, True))
        # The run hands in once its status message is up, so the final state is an edit of it.
        posted = fake_slack.once(lambda: _status_posted(fake_slack))
        order_id = await pipe.order_started(
            Reply.tool("read_thread", {}), submit(TABLE, hold=posted)
        )
        await pipe.status_of(order_id, Status.AWAITING_REVIEW)
        await pipe.update("· Awaiting review ·")
        await pipe.drained()
    refused = fake_slack.calls_to("agents.sessions.setStatus")
    assert [c.response and c.response["error"] for c in refused] == ["missing_scope"]
    assert not fake_slack.calls_to("chat.startStream")
    assert not fake_slack.sessions

"""The live plan's durability (issue 21): a run's stream rides on the order's status row, so its
last state is delivered once, however the deliverer dies or Slack's answers get lost; and where
Slack refuses streaming the status message is edited as before. Each test runs on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.delivery import Deliverer
from bot.reporter import SlackReporter
from tests.fakes.slack import FakeSlack
from tests.support.factories import make_order
from tests.support.waiting import eventually
from workers import queue
from workers.config import Settings
from workers.store import Store
from workers.store.outbox import merge_plan
from workers.workorder import Status, WorkOrder


def _deliverer(store: Store, fake_slack: FakeSlack) -> Deliverer:
    """A new process's deliverer: a client of its own, so nothing is remembered of what an
    earlier one sent (without retry handlers: every failure reaches the deliverer at once)."""
    client = AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url)
    reporter = SlackReporter(store=store, client=client, settings=Settings())
    return Deliverer(store, reporter, poll_s=0.02, backoff_s=0.01, max_backoff_s=0.05)


async def _drain(store: Store, deliverer: Deliverer) -> None:
    async def done() -> bool:
        await deliverer.deliver_due()
        return not await store.outbox.undelivered()

    await eventually(done, timeout_s=30, interval_s=0.02)


async def _running(store: Store, settings_factory: Any) -> WorkOrder:
    settings = settings_factory(
        database_url=str(store.engine.url.render_as_string(hide_password=False))
    )
    order = await store.orders.create_order(make_order(status=Status.AWAITING_CONFIRMATION), actor="U1")
    assert order.id
    await queue.enqueue(store, settings, order.id, actor="U1")
    claim = await queue.claim(store, settings, "w1")
    assert claim.order is not None and claim.order.status is Status.RUNNING
    return claim.order


@pytest.fixture(autouse=True)
def _agent(fake_slack: FakeSlack) -> None:
    fake_slack.agent()


async def test_a_restart_finds_its_stream_and_a_lost_stop_is_not_stopped_twice(
    store: Store, fake_slack: FakeSlack, settings_factory: Any
) -> None:
    order = await _running(store, settings_factory)
    assert order.id
    first = _deliverer(store, fake_slack)
    await store.outbox.report_status(order.id, "Reading example.com")
    await _drain(store, first)
    [stream] = fake_slack.streams_in("C1", "1700000000.000100")

    # Another process takes over (the first remembers nothing of it) and the run goes on.
    second = _deliverer(store, fake_slack)
    await store.outbox.report_status(order.id, "Reading example.org")
    await _drain(store, second)
    assert len(fake_slack.calls_to("chat.startStream")) == 1, "the stream found, not restarted"
    titles = [t["title"] for t in stream["tasks"].values()]
    assert titles == ["Reading the request and its thread", "Reading example.com", "Reading example.org"]

    # The stop is carried out but its answer is lost: the next attempt finds the stream
    # stopped and edits it instead (the same final state, once).
    fake_slack.fail_next("chat.stopStream", 500, processed=True)
    await store.queue.finish_run(order.id, "w1", Status.AWAITING_REVIEW, reason="deliverable submitted")
    await _drain(store, _deliverer(store, fake_slack))
    assert [c.status for c in fake_slack.calls_to("chat.stopStream")] == [500, 200]
    assert fake_slack.calls_to("chat.stopStream")[-1].response == {
        "ok": False,
        "error": "message_not_in_streaming_state",
    }
    assert fake_slack.streams_in("C1", "1700000000.000100") == [stream]
    assert not stream["streaming"] and "Awaiting review" in json.dumps(stream["blocks"])
    edit = fake_slack.last_call("chat.update")
    assert edit.args["ts"] == stream["ts"] and "Awaiting review" in json.dumps(edit.args["blocks"])
    assert all(t["status"] == "complete" for t in stream["tasks"].values())
    assert fake_slack.sessions[("C1", "1700000000.000100")]["status"] == "suspended"


async def test_a_start_whose_answer_was_lost_falls_back_to_the_status_message(
    store: Store, fake_slack: FakeSlack, settings_factory: Any
) -> None:
    """A stream carries no key to look for until it stops: a start that may have happened is
    never repeated (no second stream); that run's plan goes on the edited status message."""
    order = await _running(store, settings_factory)
    assert order.id
    fake_slack.fail_next("chat.startStream", 503)
    await _drain(store, _deliverer(store, fake_slack))
    assert len(fake_slack.calls_to("chat.startStream")) == 1
    [status] = [m for m in fake_slack.messages_in("C1") if "Running" in m.get("text", "")]
    await store.outbox.report_status(order.id, "Reading example.com")
    await _drain(store, _deliverer(store, fake_slack))
    assert len(fake_slack.calls_to("chat.startStream")) == 1
    assert not fake_slack.calls_to("chat.appendStream")
    assert fake_slack.last_call("chat.update").args["ts"] == status["ts"]
    assert "Reading example.com" in status["text"]


async def test_where_slack_does_not_stream_the_status_message_is_edited_as_before(
    store: Store, fake_slack: FakeSlack, settings_factory: Any
) -> None:
    fake_slack.streaming = False  # a workspace without chat.*Stream
    order = await _running(store, settings_factory)
    assert order.id
    deliverer = _deliverer(store, fake_slack)
    await _drain(store, deliverer)
    await store.outbox.report_status(order.id, "Reading example.com")
    await _drain(store, deliverer)
    assert len(fake_slack.calls_to("chat.startStream")) == 1, "refused once, not asked again"
    [status] = [m for m in fake_slack.messages_in("C1") if "WO-" in m.get("text", "")]
    assert "Reading example.com" in status["text"]
    # The session is Slack's still: it says the order is being worked on.
    assert fake_slack.sessions[("C1", "1700000000.000100")]["status"] == "processing"


def test_the_plan_keeps_every_step_a_coalesced_status_replaced() -> None:
    """Steps written faster than they are sent replace the unsent status row: the plan on it
    still holds each of them; a new run starts a new plan."""
    payload: dict[str, Any] | None = None
    for step in ("Reading the request and its thread", "Reading a.com", "Reading a.com"):
        payload = merge_plan(payload, {"step": step, "phase": "run", "task": {"title": step, "status": "in_progress"}})
    assert payload is not None
    assert [t["title"] for t in payload["plan"]] == [
        "Reading the request and its thread",
        "Reading a.com",
        "Reading a.com",
    ], "two tool calls alike are two tasks"
    assert [t["status"] for t in payload["plan"]] == ["complete", "complete", "in_progress"]
    rest = merge_plan(
        payload,
        {"phase": "rest", "task": {"title": "Handing in for review", "status": "complete", "state": True}},
    )
    assert rest["stream"] == 1 and all(t["status"] == "complete" for t in rest["plan"])
    again = merge_plan(rest, {"phase": "run"})
    assert again["stream"] == 2 and again["plan"] == []


async def test_a_final_state_slack_refuses_to_stream_is_shown_on_the_stopped_stream(
    store: Store, fake_slack: FakeSlack, settings_factory: Any
) -> None:
    order = await _running(store, settings_factory)
    assert order.id
    deliverer = _deliverer(store, fake_slack)
    await _drain(store, deliverer)
    fake_slack.fail_next("chat.stopStream", 200, error="invalid_blocks")
    await store.queue.finish_run(
        order.id, "w1", Status.AWAITING_REVIEW, reason="deliverable submitted"
    )
    await _drain(store, deliverer)
    refused, bare = fake_slack.calls_to("chat.stopStream")
    assert refused.args.get("blocks") and not bare.args.get("blocks")
    [stream] = fake_slack.streams_in("C1", "1700000000.000100")
    assert not stream["streaming"]
    edit = fake_slack.last_call("chat.update")
    assert edit.args["ts"] == stream["ts"] and "Awaiting review" in json.dumps(edit.args["blocks"])


async def test_a_wait_for_approval_ends_the_runs_stream_and_the_next_run_streams_anew(
    store: Store, fake_slack: FakeSlack, settings_factory: Any
) -> None:
    order = await _running(store, settings_factory)
    assert order.id
    deliverer = _deliverer(store, fake_slack)
    await store.outbox.report_status(order.id, "Querying the warehouse")
    await _drain(store, deliverer)
    await store.queue.finish_run(
        order.id, "w1", Status.WAITING_FOR_REQUESTER, reason="waiting for a person to allow a tool call"
    )
    await _drain(store, deliverer)
    [first] = fake_slack.streams_in("C1", "1700000000.000100")
    assert not first["streaming"]
    assert [(t["title"], t["status"]) for t in first["tasks"].values()][-2:] == [
        ("Querying the warehouse", "complete"),
        ("Waiting for approval", "pending"),
    ]
    assert fake_slack.last_call("chat.stopStream").args["session_status"] == "suspended"

    # Allowed: the order is queued again and its next run streams a plan of its own.
    await store.orders.transition(order.id, Status.QUEUED, actor="U1", reason="tool call allowed")
    settings = settings_factory(
        database_url=str(store.engine.url.render_as_string(hide_password=False))
    )
    claim = await queue.claim(store, settings, "w2")
    assert claim.order is not None
    await _drain(store, deliverer)
    first_again, second = fake_slack.streams_in("C1", "1700000000.000100")
    assert first_again is first and second["streaming"]
    assert [t["title"] for t in second["tasks"].values()] == ["Reading the request and its thread"]
    assert fake_slack.sessions[("C1", "1700000000.000100")]["status"] == "processing"


async def test_steps_faster_than_the_status_interval_go_out_in_one_append_losing_none(
    store: Store, fake_slack: FakeSlack, settings_factory: Any
) -> None:
    """A run's steps are coalesced (engine.status_update_interval_s) before they reach
    chat.appendStream's rate tier: five quick tool calls, one append, five tasks."""
    order = await _running(store, settings_factory)
    assert order.id
    deliverer = _deliverer(store, fake_slack)
    await _drain(store, deliverer)
    steps = [f"Reading example.com/page-{n}" for n in range(5)]
    for step in steps:
        await store.outbox.report_status(order.id, step, coalesce_s=1.0)
    await _drain(store, deliverer)
    [append] = fake_slack.calls_to("chat.appendStream")
    sent = [c["title"] for c in append.args["chunks"]]
    assert sent == ["Reading the request and its thread", *steps]
    [stream] = fake_slack.streams_in("C1", "1700000000.000100")
    assert [t["status"] for t in stream["tasks"].values()] == ["complete"] * 5 + ["in_progress"]

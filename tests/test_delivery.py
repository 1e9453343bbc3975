"""Once Start is clicked, the thread hears the outcome exactly once: the durable outbox, per-order
delivery, a refused token, stale status updates and posting across processes (the Reliability
issue, items 1-3). Each test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from slack_sdk.web.async_client import AsyncWebClient

from bot.delivery import Deliverer
from bot.home import home_view
from bot.reporter import SlackReporter
from bot.server import build_web_app
from tests.fakes.anthropic import FakeAnthropic, Reply
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack, SlackError
from tests.support.databases import Database
from tests.support.factories import make_order
from tests.support.processes import spawn_worker, worker_env
from tests.support.settings import FAST_ENGINE
from tests.support.waiting import eventually
from workers import intake_replies, queue
from workers.config import Settings, load_settings
from workers.errors import RetryLater
from workers.followup import FollowUps
from workers.keys import exception_key, result_key, review_key, status_key
from workers.models import utcnow
from workers.progress import Spend
from workers.review import decide
from workers.runtime import run_worker
from workers.store import OutboxItem, Store
from workers.store.outbox import SLACK, exception_notice
from workers.store.reporting.home import home_data
from workers.store.sweeps import single_runner
from workers.workorder import Status, WorkOrder


def _client(fake_slack: FakeSlack) -> AsyncWebClient:
    """A client without retry handlers: every failure reaches the deliverer at once."""
    return AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url)


def _posted(fake_slack: FakeSlack) -> list[str]:
    """Keys of the chat.postMessage calls Slack accepted."""
    keys = []
    for call in fake_slack.calls_to("chat.postMessage"):
        if call.response and call.response.get("ok"):
            metadata: Any = call.args.get("metadata") or {}
            keys.append(metadata.get("event_payload", {}).get("key", "?"))
    return keys


async def _order(store: Store, **fields: Any) -> WorkOrder:
    return await store.orders.create_order(
        make_order(status=Status.AWAITING_CONFIRMATION, **fields), actor="U1"
    )


async def _awaiting_review(store: Store, settings: Any, **fields: Any) -> WorkOrder:
    order = await _order(store, **fields)
    assert order.id
    await queue.enqueue(store, settings, order.id, actor="U1")
    claim = await queue.claim(store, settings, "w1")
    assert claim.order is not None and claim.order.id == order.id
    finished = await store.queue.finish_run(
        order.id, "w1", Status.AWAITING_REVIEW, reason="deliverable submitted"
    )
    assert finished is not None
    return finished


def _deliverer(store: Store, fake_slack: FakeSlack) -> Deliverer:
    reporter = SlackReporter(store=store, client=_client(fake_slack), settings=Settings())
    return Deliverer(store, reporter, poll_s=0.02, backoff_s=0.01, max_backoff_s=0.05)


async def _deliver_until(deliverer: Deliverer, predicate: Any) -> None:
    async def done() -> bool:
        await deliverer.deliver_due()
        return bool(predicate())

    await eventually(done, timeout_s=30, interval_s=0.02)


# ---------------------------------------------------------------------------- 1. durable outbox


async def test_a_slack_outage_longer_than_the_retries_is_delivered_once_when_slack_is_back(
    store: Store, fake_slack: FakeSlack
) -> None:
    order = await _order(store)
    assert order.id
    key = exception_key(order.id, 1)
    await store.outbox.add_to_outbox(order.id, [exception_notice(key, "budget", "the budget ran out")])
    fake_slack.fail_next("chat.postMessage", 503, times=12)  # the old outbox gave up after 8
    deliverer = _deliverer(store, fake_slack)

    await _deliver_until(deliverer, lambda: key in _posted(fake_slack))

    assert _posted(fake_slack) == [key]
    [message] = await store.outbox.outbox(order.id)
    assert message.sent_at is not None and message.attempts == 13
    assert await deliverer.deliver_due() == 0  # nothing left; nothing posted again
    assert _posted(fake_slack) == [key]


async def test_a_post_slack_is_slow_to_answer_holds_up_no_other_order(
    store: Store, fake_slack: FakeSlack
) -> None:
    """A send takes as long as Slack takes to answer: up to the client's timeout, and longer
    with its retries. Meanwhile the same deliverer sends what other orders are owed."""
    slow = await _order(store, channel="C-slow")
    fine = await _order(store, channel="C1")
    assert slow.id and fine.id
    answer = fake_slack.channel_gates["C-slow"] = asyncio.Event()
    await store.outbox.add_to_outbox(
        slow.id, [exception_notice(exception_key(slow.id, 1), "budget", "out of budget")]
    )
    deliverer = _deliverer(store, fake_slack)
    stop = asyncio.Event()
    running = deliverer.start(stop)
    try:
        await fake_slack.wait_until(
            lambda: any(c.args.get("channel") == "C-slow" for c in fake_slack.calls)
        )
        # Written while the slow post waits for its answer.
        await store.outbox.add_to_outbox(
            fine.id, [exception_notice(exception_key(fine.id, 1), "budget", "out of budget")]
        )
        await fake_slack.wait_until(lambda: exception_key(fine.id or "", 1) in _posted(fake_slack))
        assert exception_key(slow.id, 1) not in _posted(fake_slack)
        answer.set()
        await fake_slack.wait_until(lambda: exception_key(slow.id or "", 1) in _posted(fake_slack))
    finally:
        answer.set()
        stop.set()
        await asyncio.wait_for(running, 20)
    assert await store.outbox.undelivered() == []


async def test_a_send_slower_than_its_claim_renews_it_and_nobody_takes_it_over(
    store: Store, fake_slack: FakeSlack
) -> None:
    """Claims are short (bot.delivery.OUTBOX_CLAIM_S) so that what a killed process had claimed
    goes out soon from another one; a live sender renews its claims for as long as Slack takes,
    so nobody else takes the message from under it."""
    order = await _order(store, channel="C-slow")
    assert order.id
    key = exception_key(order.id, 1)
    answer = fake_slack.channel_gates["C-slow"] = asyncio.Event()
    await store.outbox.add_to_outbox(order.id, [exception_notice(key, "budget", "out of budget")])
    reporter = SlackReporter(store=store, client=_client(fake_slack), settings=Settings())
    sender = Deliverer(store, reporter, poll_s=0.05, claim_s=3.0)
    other = Deliverer(
        store,
        SlackReporter(store=store, client=_client(fake_slack), settings=Settings()),
        claim_s=3.0,
    )
    stop = asyncio.Event()
    running = sender.start(stop)
    try:
        await fake_slack.wait_until(
            lambda: any(c.args.get("channel") == "C-slow" for c in fake_slack.calls)
        )
        [claimed] = await store.outbox.outbox(order.id)
        assert claimed.claimed_until is not None

        async def renewed() -> bool:
            [row] = await store.outbox.outbox(order.id)
            assert row.claimed_until is not None
            return (row.claimed_until - claimed.claimed_until).total_seconds() >= 2

        await eventually(renewed, interval_s=0.1)  # held past its first claim's end
        assert await other.deliver_due() == 0
        answer.set()
        await fake_slack.wait_until(lambda: key in _posted(fake_slack))
    finally:
        answer.set()
        stop.set()
        await asyncio.wait_for(running, 20)
    assert _posted(fake_slack) == [key]
    assert len(fake_slack.calls_to("chat.postMessage")) == 1
    assert await store.outbox.undelivered() == []


async def test_one_order_s_undeliverable_message_does_not_hold_up_another_s(
    store: Store, fake_slack: FakeSlack
) -> None:
    stuck = await _order(store, channel="C-gone")
    fine = await _order(store, channel="C1")
    assert stuck.id and fine.id
    await store.outbox.add_to_outbox(
        stuck.id, [exception_notice(exception_key(stuck.id, 1), "budget", "out of budget")]
    )
    await store.outbox.add_to_outbox(
        fine.id, [exception_notice(exception_key(fine.id, 1), "budget", "out of budget")]
    )
    # Slack refuses every post into the channel the bot was removed from.
    original = fake_slack.handlers["chat.postMessage"]

    def post(args: dict[str, Any]) -> dict[str, Any]:
        if args.get("channel") == "C-gone":
            raise SlackError("not_in_channel")
        return original(args)

    fake_slack.handlers["chat.postMessage"] = post
    deliverer = _deliverer(store, fake_slack)

    await _deliver_until(deliverer, lambda: exception_key(fine.id or "", 1) in _posted(fake_slack))
    await deliverer.deliver_due()

    # Tried once, recognised as permanent, flagged on the order; not retried.
    [failed] = await store.outbox.outbox(stuck.id)
    assert failed.permanent and failed.error == "not_in_channel" and failed.attempts == 1
    events = [e for e in await store.audit.audit_trail(stuck.id) if e.kind == "delivery_failed"]
    assert events and events[0].data["error"] == "not_in_channel"
    tries = [c for c in fake_slack.calls_to("chat.postMessage") if c.args["channel"] == "C-gone"]
    assert len(tries) == 1

    # The requester sees it in App Home, with what to do about it.
    data = await home_data(store.engine, Settings(), "U1", now=utcnow())
    home = json.dumps(home_view(data)["blocks"], ensure_ascii=False)
    assert "Not delivered to your threads" in home
    assert f"{stuck.id} · its exception message" in home and "invite the bot" in home

    # The admin sees it in the health check's body (the service itself is healthy).
    async with TestClient(TestServer(build_web_app(store=store, bolt=None))) as http:
        response = await http.get("/healthz")
        body = await response.json()
    assert response.status == 200
    assert body["outbox"]["failed"] == [
        {"order": stuck.id, "key": exception_key(stuck.id, 1), "error": "not_in_channel"}
    ]


async def test_a_revoked_token_turns_healthz_red_and_stops_claiming_until_it_works_again(
    store: Store, fake_slack: FakeSlack, fake_anthropic: FakeAnthropic, settings_factory: Any
) -> None:
    settings = settings_factory(
        database_url=str(store.engine.url.render_as_string(hide_password=False)),
        engine=FAST_ENGINE,
    )
    first = await _order(store)
    assert first.id
    await store.outbox.add_to_outbox(
        first.id, [exception_notice(exception_key(first.id, 1), "budget", "out of budget")]
    )
    deliverer = _deliverer(store, fake_slack)
    fake_slack.tokens = {"xoxb-rotated"}  # the bot's token was revoked
    await deliverer.deliver_due()

    assert await store.outbox.problem(SLACK) == "token refused (invalid_auth)"
    [message] = await store.outbox.outbox(first.id)
    assert message.sent_at is None and not message.permanent  # kept for when it works again
    async with TestClient(TestServer(build_web_app(store=store, bolt=None))) as http:
        response = await http.get("/healthz")
        body = await response.json()
    assert response.status == 503
    assert body["status"] == "unhealthy" and body["slack"] == "token refused (invalid_auth)"
    assert body["outbox"]["undelivered"] == 1

    # No new work is claimed while the token is refused.
    queued = await _order(store)
    assert queued.id
    await queue.enqueue(store, settings, queued.id, actor="U1")
    fake_anthropic.script(Reply.tool("submit_deliverable", {"content": "done", "summary": "ok"}))
    stop = asyncio.Event()
    worker = asyncio.create_task(
        run_worker(settings, store=store, stop=stop, handle_signals=False)
    )
    try:

        async def claimed() -> bool:
            return (await store.orders.get_order(queued.id or "")).status is not Status.QUEUED

        with pytest.raises(TimeoutError):  # several poll intervals pass without a claim
            await eventually(claimed, timeout_s=1.0)

        fake_slack.tokens.add("xoxb-test")  # reinstalled
        assert await deliverer.check_token()
        assert await store.outbox.problem(SLACK) is None
        await eventually(claimed)
        await _deliver_until(
            deliverer, lambda: exception_key(first.id or "", 1) in _posted(fake_slack)
        )
    finally:
        stop.set()
        await asyncio.wait_for(worker, 20)


async def test_the_review_prompt_is_posted_once_after_its_worker_is_killed(
    database: Database,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    fake_slack: FakeSlack,
    tmp_path: Path,
) -> None:
    """The worker commits 'awaiting review' but cannot post (Slack is down) and is SIGKILLed:
    the review prompt is not lost with its memory; the bot's deliverer posts it, once."""
    store = Store(database.engine())
    settings = load_settings(database_url=database.url)
    order = await _order(store)
    order_id = order.id or ""
    await queue.enqueue(store, settings, order_id, actor="U1")
    fake_anthropic.script(
        Reply.tool("submit_deliverable", {"content": "the table", "summary": "ok"})
    )
    fake_slack.fail_next("chat.postMessage", 503, times=10_000)
    env = worker_env(
        database, fake_anthropic, fake_openai, tmp_path, slack_api_url=fake_slack.api_url
    )
    worker = await spawn_worker(env, tmp_path, worker_id="doomed")
    try:

        async def committed_and_tried() -> bool:
            if (await store.orders.get_order(order_id)).status is not Status.AWAITING_REVIEW:
                return False
            messages = await store.outbox.outbox(order_id)
            # Tried and failed, released for a later attempt (not mid-send).
            return bool(messages) and all(
                m.attempts >= 1 and m.claimed_by is None and m.sent_at is None for m in messages
            )

        await eventually(committed_and_tried, timeout_s=60)
    finally:
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
    assert _posted(fake_slack) == []

    fake_slack._failures.clear()  # Slack is back
    deliverer = _deliverer(store, fake_slack)
    [item] = await store.runs.deliverables(order_id)
    review = review_key(result_key(order_id, item.id))
    await _deliver_until(deliverer, lambda: review in _posted(fake_slack))
    await deliverer.deliver_due()

    assert _posted(fake_slack).count(result_key(order_id, item.id)) == 1
    assert _posted(fake_slack).count(review) == 1
    await store.close()


async def test_a_review_prompt_delivered_after_a_decision_from_home_shows_the_decision(
    store: Store, fake_slack: FakeSlack, settings_factory: Any
) -> None:
    """The reviewer decides from App Home before the deliverer has posted the thread's review
    prompt (Slack slow, or the deliverer behind): the prompt that lands afterwards shows who
    decided, with no buttons left to click."""
    settings = settings_factory(
        database_url=str(store.engine.url.render_as_string(hide_password=False))
    )
    order = await _order(store)
    assert order.id
    await queue.enqueue(store, settings, order.id, actor="U1")
    claim = await queue.claim(store, settings, "w1")
    assert claim.attempt is not None and claim.attempt.id is not None
    attempt = claim.attempt.id
    item = await store.runs.save_deliverable(
        order.id,
        tool_use_id="t1",
        content="the table",
        summary="done",
        attempt_id=attempt,
        actor="w1",
    )
    key = result_key(order.id, item.id)
    await store.queue.finish_run(
        order.id,
        "w1",
        Status.AWAITING_REVIEW,
        reason="deliverable submitted",
        attempt_id=attempt,
        outbox=[OutboxItem("result", key, {"content": "the table", "summary": "done"})],
    )
    # App Home sends the bare order id: the decision is not tied to a prompt.
    await decide(store, settings, order.id, "approve", actor="U7")

    deliverer = _deliverer(store, fake_slack)
    await _deliver_until(deliverer, lambda: review_key(key) in _posted(fake_slack))

    [prompt] = [
        c.args
        for c in fake_slack.calls_to("chat.postMessage")
        if c.args.get("metadata", {}).get("event_payload", {}).get("key") == review_key(key)
    ]
    shown = json.dumps(prompt["blocks"])
    assert "Approved* by <@U7>" in shown
    assert not [b for b in prompt["blocks"] if b["type"] == "actions"], "no buttons to click"


# ---------------------------------------------------------------------------- 2. stale status


async def test_a_stale_status_update_never_overwrites_approved(
    store: Store, fake_slack: FakeSlack, settings_factory: Any
) -> None:
    settings = settings_factory(
        database_url=str(store.engine.url.render_as_string(hide_password=False))
    )
    reporter = SlackReporter(store=store, client=_client(fake_slack), settings=settings)
    spend = Spend(0.1, 2.0, 100, 1000, 1, 10, 1, 10, 5.0, 60)
    awaiting = await _awaiting_review(store, settings)
    assert awaiting.id
    await reporter.status(awaiting, "Deliverable submitted; waiting for review", spend)
    approved = await store.orders.transition(
        awaiting.id, Status.APPROVED, actor="U7", reason="approved by the reviewer"
    )
    await reporter.status(approved, "Approved by <@U7>", spend)

    # The first update, retried late from its old snapshot.
    await reporter.status(awaiting, "Deliverable submitted; waiting for review", spend)

    [message] = [m for m in fake_slack.messages_in("C1") if "Approved" in json.dumps(m)]
    shown = json.dumps(message["blocks"])
    assert "Approved by" in shown and "Cancel" not in shown
    assert "waiting for review" not in json.dumps(fake_slack.last_call("chat.update").args)
    posted = await store.slack.slack_message(status_key(awaiting.id))
    assert posted is not None and posted.ts == message["ts"]


# ---------------------------------------------------------------------------- 3. across processes


async def test_two_processes_posting_the_same_key_post_it_once(
    store: Store, fake_slack: FakeSlack
) -> None:
    order = await _order(store)
    assert order.id
    other = Store.from_url(str(store.engine.url.render_as_string(hide_password=False)))
    try:
        fake_slack.delay["chat.postMessage"] = 0.3  # both are in flight together
        reporters = [
            SlackReporter(
                store=s, client=_client(fake_slack), settings=Settings(), owner=f"process-{n}"
            )
            for n, s in enumerate((store, other))
        ]
        key = f"{order.id}:notice:1"
        outcomes = await asyncio.gather(
            *(
                r.post_once(order, key=key, purpose="notice", text="hello", blocks=[])
                for r in reporters
            ),
            return_exceptions=True,
        )
        assert _posted(fake_slack) == [key]
        # The loser was told to look again later; then it finds the post.
        assert sum(isinstance(o, RetryLater) for o in outcomes) == 1
        ts = await reporters[1].post_once(order, key=key, purpose="notice", text="x", blocks=[])
        assert ts and _posted(fake_slack) == [key]
    finally:
        await other.close()


async def test_a_claim_left_by_a_dead_poster_is_taken_over_after_it_expires(
    store: Store, fake_slack: FakeSlack
) -> None:
    order = await _order(store)
    assert order.id
    key = f"{order.id}:notice:2"
    state, _ = await store.slack.claim_slack_message(
        key=key, purpose="notice", channel="C1", owner="dead", order=order.id, claim_s=-1
    )
    assert state == "claimed"
    state, _ = await store.slack.claim_slack_message(
        key=key, purpose="notice", channel="C1", owner="alive", order=order.id
    )
    assert state == "retaken"  # it may have posted before it died: the reporter looks first
    state, _ = await store.slack.claim_slack_message(
        key=key, purpose="notice", channel="C1", owner="third", order=order.id
    )
    assert state == "busy"


async def test_the_follow_up_sweep_runs_on_one_process_at_a_time(
    store: Store, fake_slack: FakeSlack, settings_factory: Any
) -> None:
    settings = settings_factory(
        database_url=str(store.engine.url.render_as_string(hide_password=False))
    )
    sweeps = FollowUps(settings, store)
    postgres = store.engine.dialect.name == "postgresql"
    other = Store.from_url(str(store.engine.url.render_as_string(hide_password=False)))
    try:
        async with single_runner(other.engine, "follow-ups") as mine:
            assert mine
            # Another process is sweeping: this one skips its round (SQLite: one process).
            assert await sweeps.sweep() is not postgres
        assert await sweeps.sweep()
    finally:
        await other.close()


async def test_outbox_items_written_twice_under_one_key_are_kept_once(store: Store) -> None:
    order = await _order(store)
    assert order.id
    item = OutboxItem("question", f"{order.id}:question:t1", {"text": "Which currency?"})
    await store.outbox.add_to_outbox(order.id, [item])
    await store.outbox.add_to_outbox(order.id, [item])  # a resumed run writes it again
    assert [m.key for m in await store.outbox.outbox(order.id)] == [item.key]


async def test_a_card_owed_to_an_order_without_a_thread_is_settled_not_retried(
    store: Store, fake_slack: FakeSlack
) -> None:
    """A console order has no card in Slack: an Edit's redraw of it (a forged button value for
    its id) is done by doing nothing, not retried for ever."""
    order = await _order(store, channel=None, thread_ts=None)
    assert order.id
    await store.orders.update_order(
        order.id,
        actor="UADMIN",
        expected={Status.AWAITING_CONFIRMATION},
        outbox=[intake_replies.card(order.id, "edit-1", edited_by="UADMIN")],
        title="Renamed",
    )
    deliverer = _deliverer(store, fake_slack)
    assert await deliverer.deliver_due() == 1
    assert await store.outbox.undelivered() == []
    assert fake_slack.calls_to("chat.postMessage") == []

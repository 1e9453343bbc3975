"""Claims of messages to send use the database's clock (issue 18, failure 3): a process whose
host clock runs 120 s ahead takes neither another process's live outbox claim nor its live
post claim, so it never sends the same message a second time. Due times are the database's too:
what such a process writes (a message, a status, a prompt, an order put back in the queue) is
due at once for every other process, not 120 s later."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from tests.support.databases import Database
from tests.support.factories import make_order
from workers import models
from workers.budget import quota_week
from workers.store import Admission, OutboxItem, Store
from workers.workorder import Status

SKEW = timedelta(seconds=120)


@contextlib.contextmanager
def host_clock_ahead(monkeypatch: pytest.MonkeyPatch, skew: timedelta) -> Iterator[None]:
    """While inside, this process's wall clock reads `skew` ahead, wherever the store reads it."""
    real = models.utcnow

    def ahead() -> datetime:
        return real() + skew

    with monkeypatch.context() as patch:
        for name, module in list(sys.modules.items()):
            if name.startswith("workers.") and getattr(module, "utcnow", None) is real:
                patch.setattr(module, "utcnow", ahead)
        yield


async def _order_id(store: Store) -> str:
    order = await store.orders.create_order(make_order(), actor="U1")
    assert order.id
    return order.id


async def test_a_host_clock_ahead_does_not_take_a_live_outbox_claim(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    right, skewed = Store(database.engine()), Store(database.engine())
    try:
        order_id = await _order_id(right)
        await right.outbox.add_to_outbox(order_id, [OutboxItem("question", f"{order_id}:question:1")])
        [claimed] = await right.outbox.claim_outbox("right", claim_s=60)  # sending it now

        with host_clock_ahead(monkeypatch, SKEW):
            taken = await skewed.outbox.claim_outbox("skewed", claim_s=60)

        assert [m.key for m in taken] == []  # would be sent a second time
        [row] = await right.outbox.outbox(order_id)
        assert (row.claimed_by, row.attempts) == ("right", 1)
        # Once the message is sent and a later one is retried, a clock ahead still waits.
        assert claimed.id is not None
        await right.outbox.outbox_sent(claimed.id)
        await right.outbox.add_to_outbox(order_id, [OutboxItem("question", f"{order_id}:question:2")])
        [second] = await right.outbox.claim_outbox("right", claim_s=60)
        assert second.id is not None
        with host_clock_ahead(monkeypatch, -SKEW):  # a clock behind backs off as long
            await skewed.outbox.outbox_retry(second.id, after_s=60, error="slack is down")
        assert await right.outbox.claim_outbox("right") == []
    finally:
        await right.close()
        await skewed.close()


async def test_a_host_clock_ahead_does_not_take_a_live_post_claim(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    right, skewed = Store(database.engine()), Store(database.engine())
    try:
        order_id = await _order_id(right)
        key = f"{order_id}:result:1"
        state, _ = await right.slack.claim_slack_message(
            key=key, purpose="result", channel="C1", owner="right", order=order_id, claim_s=60
        )
        assert state == "claimed"  # posting it now

        with host_clock_ahead(monkeypatch, SKEW):
            state, row = await skewed.slack.claim_slack_message(
                key=key, purpose="result", channel="C1", owner="skewed", order=order_id, claim_s=60
            )

        assert state == "busy", state  # "retaken" would look for the post, miss it, post again
        assert row.claimed_by == "right"
    finally:
        await right.close()
        await skewed.close()


def _admission() -> Admission:
    return Admission(
        week=quota_week(models.utcnow()),
        quota_micro_usd=lambda team: 10**12,
        max_runs_per_user=lambda team: 10,
    )


async def _claimed_kinds(store: Store) -> list[str]:
    """Claim what is due now and mark it sent; the kinds claimed."""
    taken = await store.outbox.claim_outbox("right")
    for message in taken:
        assert message.id is not None
        await store.outbox.outbox_sent(message.id, "right")
    return sorted(m.kind for m in taken)


async def test_what_a_host_clock_ahead_writes_is_due_at_once(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every message a process whose clock runs 120 s ahead writes, and the order it puts back
    in the queue, can be claimed at once by a process whose clock is right: its due times are
    the database's, not its own (audit of issue 18: they were the host's)."""
    right, skewed = Store(database.engine()), Store(database.engine())
    try:
        order = await right.orders.create_order(
            make_order(status=Status.AWAITING_CONFIRMATION), actor="U1"
        )
        assert order.id is not None
        order_id = order.id
        with host_clock_ahead(monkeypatch, SKEW):
            await skewed.outbox.add_to_outbox(order_id, [OutboxItem("question", f"{order_id}:question:1")])
            await skewed.queue.enqueue(order_id, priority=1, actor="U1", reason="started")
        # A new message and the status row a state change inserts.
        assert await _claimed_kinds(right) == ["question", "status"]

        with host_clock_ahead(monkeypatch, SKEW):
            claim = await skewed.queue.claim("skewed", lease_ttl_s=60, admission=_admission())
        assert claim.attempt is not None and claim.attempt.id is not None
        assert await _claimed_kinds(right) == ["status"]  # the sent status row, rewritten

        with host_clock_ahead(monkeypatch, SKEW):
            assert await skewed.outbox.report_status(order_id, "Reading the thread")
            approval = await skewed.approvals.request_approval(
                order_id,
                tool_use_id="toolu_1",
                tool="drop_table",
                server="wh",
                arguments={"table": "t"},
                attempt_id=claim.attempt.id,
            )
        # A run's step on the status row and the approval prompt its request owes.
        assert await _claimed_kinds(right) == ["approval", "status"]

        with host_clock_ahead(monkeypatch, SKEW):
            parked = await skewed.queue.finish_run(
                order_id,
                "skewed",
                Status.WAITING_FOR_REQUESTER,
                reason="waiting for a person to allow a tool call",
                attempt_id=claim.attempt.id,
                awaiting=["toolu_1"],
            )
            assert parked is not None and parked.status is Status.WAITING_FOR_REQUESTER
            assert approval.id is not None
            await skewed.approvals.decide_approval(approval.id, "once", actor="U1")
        assert await _claimed_kinds(right) == ["approval_decided", "status"]
        # The answer put the order back in the queue: due now, not once the skewed clock's now
        # has come.
        again = await right.queue.claim("right", lease_ttl_s=60, admission=_admission())
        assert again.order is not None and again.order.id == order_id
    finally:
        await right.close()
        await skewed.close()

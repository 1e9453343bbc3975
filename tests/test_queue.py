"""Claims, leases, priorities, quota waits and lease recovery, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from tests.support.databases import Database
from tests.support.engine import Harness
from tests.support.records import attempts, llm_calls, team_spend
from workers import queue, review
from workers.budget import quota_week, usd_to_micro
from workers.errors import IllegalTransition, OrderMoved
from workers.models import LlmCall, utcnow
from workers.states import TAKES_REPLIES, WaitKind
from workers.store import Store
from workers.workorder import Status, WorkloadClass, WorkOrder


async def test_a_claim_leases_the_order_to_one_worker(harness: Harness) -> None:
    h = harness
    order = await h.order()
    claim = await queue.claim(h.store, h.settings, "w1")
    assert claim.order is not None and claim.order.id == order.id
    assert claim.order.status == Status.RUNNING and claim.attempt is not None
    row = await h.store.orders.get_row(order.id or "")
    assert row.lease_owner == "w1" and row.lease_expires_at is not None and row.attempts == 1
    assert (await queue.claim(h.store, h.settings, "w2")).order is None
    number = int((order.id or "")[3:])
    before = row.lease_expires_at
    assert await h.store.queue.check_leases([number], "w1", renew_ttl_s=600) == ({number}, set())
    assert (await h.store.orders.get_row(number)).lease_expires_at > before  # renewed
    assert await h.store.queue.check_leases([number], "w2", renew_ttl_s=5) == (set(), set())
    assert (await h.store.orders.get_row(number)).lease_owner == "w1"  # w2 renewed nothing
    assert await h.store.queue.check_leases([number], "w1") == ({number}, set())
    await queue.cancel(h.store, order.id or "", actor="U1")
    assert await h.store.queue.check_leases([number], "w1") == (set(), {number})


async def test_priority_then_age_decides_the_order_of_claims(harness: Harness) -> None:
    h = harness
    deep = await h.order(workload_class=WorkloadClass.DEEP, requester="U1")
    standard = await h.order(workload_class=WorkloadClass.STANDARD, requester="U2")
    quick_old = await h.order(workload_class=WorkloadClass.QUICK, requester="U3")
    quick_new = await h.order(workload_class=WorkloadClass.QUICK, requester="U4")
    claimed = []
    for n in range(4):
        claim = await queue.claim(h.store, h.settings, f"w{n}")
        assert claim.order is not None
        claimed.append(claim.order.id)
    assert claimed == [quick_old.id, quick_new.id, standard.id, deep.id]


async def test_an_order_beyond_quota_waits_until_a_lead_raises_it(harness: Harness) -> None:
    h = harness
    week = quota_week(utcnow())
    await h.store.ledger.set_team_quota("default", week, quota_micro_usd=usd_to_micro(0.01), actor="lead")
    order = await h.order()
    claim = await queue.claim(h.store, h.settings, "w1")
    assert claim.order is None
    [(waiting, reason)] = claim.waiting
    assert waiting.id == order.id and "team quota" in reason and "$0.01" in reason
    row = await h.store.orders.get_row(order.id or "")
    assert row.status == "queued" and row.wait_reason == reason and row.waiting_since is not None
    assert row.wait_kind == WaitKind.QUOTA
    # Reported once, not on every poll.
    assert (await queue.claim(h.store, h.settings, "w1")).waiting == []
    await h.store.ledger.set_team_quota("default", week, quota_micro_usd=usd_to_micro(50), actor="lead")
    claim = await queue.claim(h.store, h.settings, "w1")
    assert claim.order is not None and claim.order.id == order.id
    row = await h.store.orders.get_row(order.id or "")
    assert row.wait_reason is None and row.wait_kind is None
    system = [e.kind for e in await h.store.audit.audit_trail("system")]
    assert system.count("team_quota") == 2


async def test_a_quota_wait_beyond_its_limit_ends_in_exception(harness: Harness) -> None:
    h = harness
    h.settings = h.settings.model_copy(
        update={"engine": h.settings.engine.model_copy(update={"max_quota_wait_s": 60})}
    )
    week = quota_week(utcnow())
    await h.store.ledger.set_team_quota("default", week, quota_micro_usd=0, actor="lead")
    order = await h.order()
    first = await h.store.queue.claim("w1", lease_ttl_s=5, admission=queue.admission(h.settings))
    assert first.waiting
    later = utcnow() + timedelta(seconds=120)
    claim = await h.store.queue.claim(
        "w1", lease_ttl_s=5, admission=queue.admission(h.settings, later), now=later
    )
    [expired] = claim.expired
    assert expired.id == order.id and expired.status == Status.EXCEPTION
    assert (await h.store.orders.get_row(order.id or "")).exception_kind == "quota"


async def test_per_user_concurrent_run_limit(harness: Harness) -> None:
    h = harness
    teams = {"default": {"weekly_usd": 100.0, "max_concurrent_runs_per_user": 1, "members": []}}
    h.settings = h.settings.model_copy(
        update={
            "teams": h.settings.model_validate({**h.settings.model_dump(), "teams": teams}).teams
        }
    )
    first = await h.order(requester="U1")
    second = await h.order(requester="U1")
    other = await h.order(requester="U2")
    claimed = await queue.claim(h.store, h.settings, "w1")
    assert claimed.order is not None and claimed.order.id == first.id
    claim = await queue.claim(h.store, h.settings, "w1")
    assert claim.order is not None and claim.order.id == other.id
    [(waiting, reason)] = claim.waiting
    assert waiting.id == second.id and "the requester already has 1 run going" in reason


async def test_an_order_deferred_to_later_is_not_claimed_early(harness: Harness) -> None:
    h = harness
    order = await h.order()
    later = utcnow() + timedelta(minutes=5)
    await h.store.queue.claim("w0", lease_ttl_s=5, admission=queue.admission(h.settings))
    await h.store.queue.finish_run(
        order.id or "", "w0", Status.QUEUED, reason="provider said wait", available_at=later
    )
    assert (await queue.claim(h.store, h.settings, "w1")).order is None
    claim = await h.store.queue.claim(
        "w1", lease_ttl_s=5, admission=queue.admission(h.settings), now=later
    )
    assert claim.order is not None


async def test_an_expired_lease_is_requeued_then_fails_after_max_attempts(harness: Harness) -> None:
    h = harness
    order = await h.order()
    number = int((order.id or "")[3:])
    for attempt in range(1, 4):
        claim = await queue.claim(h.store, h.settings, f"w{attempt}")
        assert claim.order is not None and claim.attempt is not None
        # A model call in flight when the worker died.
        await h.store.ledger.reserve_spend(
            number,
            team="default",
            week=quota_week(utcnow()),
            quota_micro_usd=usd_to_micro(100),
            plan=lambda headroom: __import__("workers.budget").budget.CallPlan(100, 1000, 500),
            call=LlmCall(order_id=number, role="execute", provider="anthropic", model="m"),
        )
        assert await h.store.queue.reap_expired(max_lost=3) == []  # not expired yet
        reaped = await h.store.queue.reap_expired(max_lost=3, now=utcnow() + timedelta(seconds=10))
        assert [o.id for o in reaped] == [order.id]
        row = await h.store.orders.get_row(order.id or "")
        assert row.lost_leases == attempt and row.lease_owner is None
        assert row.reserved_micro_usd == 0 and row.spent_micro_usd == 1000 * attempt
        expected = Status.QUEUED if attempt < 3 else Status.EXCEPTION
        assert reaped[0].status == expected
    row = await h.store.orders.get_row(order.id or "")
    assert row.exception_kind == "crashed"
    calls = await llm_calls(h.store, order.id or "")
    assert [c.outcome for c in calls] == ["interrupted"] * 3
    assert [a.outcome for a in await attempts(h.store, order.id or "")] == ["lost"] * 3
    spend = await team_spend(h.store, "default", quota_week(utcnow()))
    assert spend is not None and spend.spent_micro_usd == 3000 and spend.reserved_micro_usd == 0


async def test_concurrent_claimers_never_share_an_order(
    database: Database, harness: Harness
) -> None:
    h = harness
    teams = {"default": {"weekly_usd": 100.0, "max_concurrent_runs_per_user": 1000, "members": []}}
    h.settings = h.settings.model_copy(
        update={
            "teams": h.settings.model_validate({**h.settings.model_dump(), "teams": teams}).teams
        }
    )
    orders = [await h.order() for _ in range(20)]
    stores = [Store(database.engine()) for _ in range(5)]

    async def claimer(n: int) -> list[str]:
        got = []
        while True:
            claim = await queue.claim(stores[n], h.settings, f"w{n}")
            if claim.order is None:
                return got
            got.append(claim.order.id or "")

    results = await asyncio.gather(*(claimer(n) for n in range(5)))
    flat = [oid for got in results for oid in got]
    assert sorted(flat) == sorted(o.id or "" for o in orders)
    assert len(set(flat)) == len(flat)
    for s in stores:
        await s.close()


async def test_cancel_and_reply_through_the_queue_api(harness: Harness) -> None:
    h = harness
    order = await h.order()
    cancelled = await queue.cancel(h.store, order.id or "", actor="U1")
    assert cancelled.status == Status.CANCELLED
    other = await h.order()
    item = await h.store.queue.add_to_inbox(
        other.id or "", {"kind": "note", "text": "hi"}, actor="U1", expected=TAKES_REPLIES
    )
    assert item.status == Status.QUEUED  # not waiting: left for the run
    assert (await h.store.orders.get_row(other.id or "")).inbox == [{"kind": "note", "text": "hi"}]
    # A reply read while the run was going, written after it was cancelled, is refused.
    with pytest.raises(OrderMoved):
        await h.store.queue.add_to_inbox(
            order.id or "", {"kind": "note", "text": "late"}, actor="U1", expected=TAKES_REPLIES
        )
    assert (await h.store.orders.get_row(order.id or "")).inbox in (None, [])


async def test_cancel_on_an_exception_does_not_cancel_a_retry_that_landed_first(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancel and Retry clicked at once on an exception: the Retry is written between the moment
    Cancel looked at the order and the moment it writes. The retried run must survive."""
    h = harness
    order = await h.order()
    assert order.id
    await h.store.orders.transition(order.id, Status.EXCEPTION, actor="w1", reason="stalled")
    write = h.store.queue.cancel_order  # queue.cancel's one transaction

    async def retry_lands_first(*args: Any, **kwargs: Any) -> WorkOrder:
        await review.handle_exception(h.store, h.settings, order.id or "", "retry", actor="U2")
        return await write(*args, **kwargs)

    monkeypatch.setattr(h.store.queue, "cancel_order", retry_lands_first)
    with pytest.raises(IllegalTransition):
        await review.handle_exception(h.store, h.settings, order.id, "cancel", actor="U1")
    assert (await h.store.orders.get_order(order.id)).status is Status.QUEUED


async def test_a_transition_refuses_a_state_its_caller_did_not_expect(harness: Harness) -> None:
    h = harness
    order = await h.order()
    assert order.id
    with pytest.raises(IllegalTransition):
        await h.store.orders.transition(
            order.id, Status.CANCELLED, actor="U1", reason="x", expected={Status.EXCEPTION}
        )
    cancelled = await h.store.orders.transition(
        order.id, Status.CANCELLED, actor="U1", reason="x", expected={Status.QUEUED}
    )
    assert cancelled.status is Status.CANCELLED

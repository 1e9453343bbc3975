"""Lock order between spend and the audit trail, and reservations a run leaves behind.

Found by the chaos run (bench/chaos.py, tests/test_chaos.py): a reaper that audited one expired
run and then charged the next one's in-flight call deadlocked on PostgreSQL with a worker
settling a model call (which charges the team's spend row, then audits). PostgreSQL aborted the
worker's transaction, its run failed into an exception, and the call it was settling stayed
pending: its reservation held the order's budget and the team's week for good.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text

from tests.support.databases import Database
from tests.support.engine import Harness
from tests.support.records import llm_calls, team_spend
from tests.support.waiting import eventually
from workers import queue
from workers.budget import CallPlan, quota_week, usd_to_micro
from workers.models import LlmCall, utcnow
from workers.store import Store
from workers.workorder import Status, WorkOrder


async def _running_with_call(h: Harness, worker: str, *, pending_call: bool) -> WorkOrder:
    order = await h.order(requester=worker.upper())
    claim = await queue.claim(h.store, h.settings, worker)
    assert claim.order is not None and claim.order.id == order.id
    if pending_call:
        number = int((order.id or "")[3:])
        await h.store.ledger.reserve_spend(
            number,
            team="default",
            week=quota_week(utcnow()),
            quota_micro_usd=usd_to_micro(100),
            plan=lambda headroom: CallPlan(100, 1000, 500),
            call=LlmCall(order_id=number, role="execute", provider="anthropic", model="m"),
        )
    return claim.order


async def _lock_waiters(database: Database) -> int:
    engine = database.engine()
    try:
        async with engine.connect() as conn:
            found = await conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return int(found.scalar_one())
    finally:
        await engine.dispose()


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_the_reaper_charges_before_it_audits_so_a_settling_worker_cannot_deadlock_it(
    database: Database, harness: Harness
) -> None:
    h = harness
    # Reaped in id order: the first has nothing in flight, the second a model call.
    first = await _running_with_call(h, "w1", pending_call=False)
    second = await _running_with_call(h, "w2", pending_call=True)
    week = quota_week(utcnow())

    # A worker settling a call elsewhere: it holds the team's spend row (charged) and is about
    # to audit, which takes the audit trail's lock.
    settler = Store(database.engine())
    async with settler.transaction() as s:
        await s.exec(  # type: ignore[call-overload]
            text(
                "SELECT id FROM team_spend WHERE team = 'default' AND week = :week FOR UPDATE"
            ).bindparams(week=week)
        )
        reaping = asyncio.create_task(
            h.store.queue.reap_expired(max_lost=3, now=utcnow() + timedelta(minutes=5))
        )
        await eventually(lambda: _lock_waiters(database), timeout_s=30)  # the reaper waits
        # Before the fix the reaper held the audit lock here (it had audited the first order)
        # while waiting for the team row: PostgreSQL aborted one of the two as a deadlock.
        await settler.ledger._serialise(s, "*")
    reaped = await asyncio.wait_for(reaping, 30)
    await settler.close()

    assert sorted(o.id or "" for o in reaped) == sorted([first.id or "", second.id or ""])
    assert all(o.status == Status.QUEUED for o in reaped)
    assert [c.outcome for c in await llm_calls(h.store, second.id or "")] == ["interrupted"]
    spend = await team_spend(h.store, "default", week)
    assert spend is not None and spend.reserved_micro_usd == 0 and spend.spent_micro_usd == 1000


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_cancel_charges_before_it_audits(database: Database, harness: Harness) -> None:
    h = harness
    order = await _running_with_call(h, "w1", pending_call=True)
    week = quota_week(utcnow())
    settler = Store(database.engine())
    async with settler.transaction() as s:
        await s.exec(  # type: ignore[call-overload]
            text(
                "SELECT id FROM team_spend WHERE team = 'default' AND week = :week FOR UPDATE"
            ).bindparams(week=week)
        )
        cancelling = asyncio.create_task(queue.cancel(h.store, order.id or "", actor="U1"))
        await eventually(lambda: _lock_waiters(database), timeout_s=30)
        await settler.ledger._serialise(s, "*")
    cancelled = await asyncio.wait_for(cancelling, 30)
    await settler.close()
    assert cancelled.status == Status.CANCELLED
    row = await h.store.orders.get_row(order.id or "")
    assert row.reserved_micro_usd == 0 and row.spent_micro_usd == 1000


async def test_a_run_that_ends_with_a_call_still_pending_is_charged_its_reservation(
    harness: Harness,
) -> None:
    """A run failed while settling a call (the settle's transaction was aborted) and stopped
    in exception: the call is charged its worst case when the run ends, not held forever."""
    h = harness
    order = await _running_with_call(h, "w1", pending_call=True)
    row = await h.store.orders.get_row(order.id or "")
    assert row.reserved_micro_usd == 1000

    finished = await h.store.queue.finish_run(
        order.id or "",
        "w1",
        Status.EXCEPTION,
        reason="the run failed unexpectedly",
        exception_kind="crashed",
        exception_message="the run failed unexpectedly",
    )
    assert finished is not None and finished.status == Status.EXCEPTION

    row = await h.store.orders.get_row(order.id or "")
    assert row.reserved_micro_usd == 0 and row.spent_micro_usd == 1000
    assert [c.outcome for c in await llm_calls(h.store, order.id or "")] == ["interrupted"]
    spend = await team_spend(h.store, "default", quota_week(utcnow()))
    assert spend is not None and spend.reserved_micro_usd == 0 and spend.spent_micro_usd == 1000


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_a_settlement_that_guesses_a_stale_head_charges_the_team_once(
    database: Database, harness: Harness
) -> None:
    """On PostgreSQL a settlement charges the team's week in the statement that appends its
    audit event from the head this process last wrote. When another process has appended to the
    chain since, that guess misses: the charge must then not happen in it, only once, with the
    event, after the head is read."""
    h = harness
    order = await _running_with_call(h, "w1", pending_call=False)
    number, week = int((order.id or "")[3:]), quota_week(utcnow())
    for n in range(3):
        call, _ = await h.store.ledger.reserve_spend(
            number,
            team="default",
            week=week,
            quota_micro_usd=usd_to_micro(100),
            plan=lambda headroom: CallPlan(100, 1000, 500),
            call=LlmCall(order_id=number, role="execute", provider="anthropic", model="m"),
        )
        other = Store(database.engine())
        try:
            await other.audit.audit(order.id or "", actor="other", kind="note", data={"n": n})
        finally:
            await other.close()
        assert call.id is not None
        settled = await h.store.ledger.settle_spend(
            call.id, cost_micro_usd=700, tokens=10, usage=None, outcome="ok", latency_ms=1
        )
        assert settled

    spend = await team_spend(h.store, "default", week)
    assert spend is not None and (spend.reserved_micro_usd, spend.spent_micro_usd) == (0, 2100)
    trail = await h.store.audit.audit_trail(order.id or "")
    assert [e.kind for e in trail].count("model_call") == 3
    _, breaks = await h.store.audit.verify_audit()
    assert breaks == []

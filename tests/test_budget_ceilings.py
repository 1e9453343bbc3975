"""Each ceiling stops a run, and what was spent stays within it (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from tests.fakes.anthropic import Reply
from tests.support.engine import Harness
from tests.support.records import attempts as fetch_attempts
from tests.support.records import llm_calls, team_spend
from workers import queue
from workers.budget import quota_week, usd_to_micro
from workers.models import utcnow
from workers.states import WaitKind
from workers.workorder import Budget, Status


def greedy(name: str = "read_thread") -> Any:
    """A model that always uses every output token it is allowed and never finishes."""
    return lambda body: Reply.tool(name, {}, usage={"output_tokens": body["max_tokens"]})


async def _stopped(h: Harness, order_id: str, limit_phrase: str) -> Any:
    row = await h.store.orders.get_row(order_id)
    assert row.status == Status.EXCEPTION.value, row.status
    assert row.exception_kind == "budget"
    assert limit_phrase in (row.exception_message or ""), row.exception_message
    budget = Budget.model_validate(row.budget)
    assert row.spent_micro_usd <= usd_to_micro(budget.max_usd)
    assert row.spent_tokens <= budget.max_tokens
    assert row.tool_calls <= budget.max_tool_calls
    assert row.model_calls <= budget.max_model_calls
    assert row.reserved_micro_usd == 0 and row.reserved_tokens == 0
    calls = await llm_calls(h.store, order_id)
    assert row.spent_micro_usd == sum(c.cost_micro_usd for c in calls)
    [(oid, kind, message)] = h.reporter.exceptions.values()
    assert (oid, kind) == (order_id, "budget")
    return row


async def test_the_usd_ceiling(harness: Harness) -> None:
    h = harness
    budget = Budget(
        max_usd=0.2,
        max_tokens=10_000_000,
        max_wall_clock_s=60,
        max_tool_calls=500,
        max_model_calls=500,
    )
    order = await h.order(budget=budget)
    h.anthropic.script(*[greedy()] * 200)
    await h.run_next()
    row = await _stopped(h, order.id or "", "USD budget")
    assert row.model_calls > 3  # it did work before the ceiling
    # The last calls were shrunk to fit what was left.
    sizes = [r["max_tokens"] for r in h.anthropic.requests]
    assert sizes[0] == 1024 and min(sizes) < 1024


async def test_the_token_ceiling(harness: Harness) -> None:
    h = harness
    budget = Budget(
        max_usd=100, max_tokens=40_000, max_wall_clock_s=60, max_tool_calls=500, max_model_calls=500
    )
    order = await h.order(budget=budget)
    h.anthropic.script(*[greedy()] * 200)
    await h.run_next()
    await _stopped(h, order.id or "", "token budget")


async def test_the_tool_call_ceiling(harness: Harness) -> None:
    h = harness
    budget = Budget(max_usd=10, max_tokens=1_000_000, max_wall_clock_s=60, max_tool_calls=2)
    order = await h.order(budget=budget)
    h.anthropic.script(*[Reply.tool("read_thread", {})] * 3)
    await h.run_next()
    row = await _stopped(h, order.id or "", "tool calls")
    assert row.tool_calls == 2


async def test_the_model_call_ceiling(harness: Harness) -> None:
    h = harness
    budget = Budget(
        max_usd=10, max_tokens=1_000_000, max_wall_clock_s=60, max_tool_calls=50, max_model_calls=2
    )
    order = await h.order(budget=budget)
    h.anthropic.script(*[Reply.tool("read_thread", {})] * 3)
    await h.run_next()
    row = await _stopped(h, order.id or "", "model calls")
    assert row.model_calls == 2 and len(h.anthropic.requests) == 2


async def test_the_wall_clock_ceiling_cuts_off_a_slow_call(harness: Harness) -> None:
    h = harness
    budget = Budget(max_usd=10, max_tokens=1_000_000, max_wall_clock_s=1, max_tool_calls=50)
    order = await h.order(budget=budget)
    slow_s = 60  # the reply would end the step long after the 1 s ceiling
    h.anthropic.script(Reply.tool("read_thread", {}, delay=slow_s))
    async with asyncio.timeout(slow_s / 2):  # cut off, not waited out (however slow the machine)
        await h.run_next()
    row = await _stopped(h, order.id or "", "wall-clock")
    assert 1000 <= row.elapsed_ms < slow_s * 1000
    [call] = await llm_calls(h.store, order.id or "")
    assert call.outcome == "interrupted" and call.cost_micro_usd == call.reserved_micro_usd


async def test_a_spent_team_quota_sends_the_run_back_to_wait(harness: Harness) -> None:
    h = harness
    week = quota_week(utcnow())
    await h.store.ledger.set_team_quota("default", week, quota_micro_usd=usd_to_micro(0.06), actor="lead")
    order = await h.order()
    h.anthropic.script(*[greedy()] * 50)
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "requeued"
    row = await h.store.orders.get_row(order.id or "")
    assert row.status == Status.QUEUED.value and "weekly quota" in (row.wait_reason or "")
    assert row.wait_kind == WaitKind.QUOTA
    spend = await team_spend(h.store, "default", week)
    assert spend is not None and spend.spent_micro_usd <= usd_to_micro(0.06)
    assert spend.reserved_micro_usd == 0
    assert h.reporter.waits and h.reporter.waits[0][0] == order.id
    # It waits in the queue until the quota frees.
    claim = await h.run_next()
    assert claim is None


async def test_a_call_that_costs_more_than_its_reservation_stops_the_run(harness: Harness) -> None:
    """A provider reporting far more tokens than the request could hold (a mispriced or
    misbehaving model) must not be followed by another call on the same bet."""
    h = harness
    order = await h.order()
    h.anthropic.script(
        Reply.tool("read_thread", {}, usage={"input_tokens": 5_000_000, "output_tokens": 10}),
    )
    await h.run_next()
    assert len(h.anthropic.requests) == 1  # stopped before the next call
    row = await h.store.orders.get_row(order.id or "")
    assert (row.status, row.exception_kind) == (Status.EXCEPTION.value, "budget")
    assert "more than the" in (row.exception_message or "") and "reserved" in (
        row.exception_message or ""
    )
    [(_, kind, message)] = h.reporter.exceptions.values()
    assert kind == "budget" and "stopped before the next call" in message
    trail = await h.store.audit.audit_trail(order.id or "")
    [overrun] = [e.data for e in trail if e.kind == "reservation_overrun"]
    [call] = await llm_calls(h.store, order.id or "")
    assert overrun == {
        "model_call": call.id,
        "reserved_micro_usd": overrun["reserved_micro_usd"],
        "cost_micro_usd": call.cost_micro_usd,
    }
    assert overrun["cost_micro_usd"] > overrun["reserved_micro_usd"] > 0


async def test_an_order_waiting_for_quota_is_claimed_only_when_its_next_call_fits(
    harness: Harness,
) -> None:
    """Quota frees a little: more than the claim headroom, less than the waiting run's next
    call. The order stays queued (no run started only to wait again); it starts once the
    call fits."""
    h = harness
    # Every call needs room for 4,096 output tokens: more than the claim's quota headroom.
    engine = h.settings.engine.model_copy(
        update={"min_output_tokens": 4096, "max_output_tokens": 4096}
    )
    h.settings = h.settings.model_copy(update={"engine": engine})
    week = quota_week(utcnow())
    await h.store.ledger.set_team_quota("default", week, quota_micro_usd=usd_to_micro(0.2), actor="lead")
    order = await h.order()
    h.anthropic.script(*[greedy()] * 50)
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "requeued"
    row = await h.store.orders.get_row(order.id or "")
    needed = row.quota_needed_micro_usd
    assert needed is not None and needed > usd_to_micro(h.settings.engine.quota_headroom_usd)
    spend = await team_spend(h.store, "default", week)
    assert spend is not None
    used = spend.spent_micro_usd + spend.reserved_micro_usd
    later = utcnow() + timedelta(hours=1)  # past the back-off

    # More than the headroom is free, not enough for the next call: nothing starts.
    await h.store.ledger.set_team_quota("default", week, quota_micro_usd=used + needed - 1, actor="lead")
    claim = await h.store.queue.claim(
        "w2", lease_ttl_s=60, admission=queue.admission(h.settings), now=later
    )
    assert claim.order is None
    assert len(await fetch_attempts(h.store, order.id or "")) == 1
    assert (await h.store.orders.get_row(order.id or "")).status == Status.QUEUED.value

    # Enough for the call: it starts.
    await h.store.ledger.set_team_quota("default", week, quota_micro_usd=used + needed, actor="lead")
    claim = await h.store.queue.claim(
        "w2", lease_ttl_s=60, admission=queue.admission(h.settings), now=later
    )
    assert claim.order is not None and claim.order.id == order.id

"""Zombie workers and clocks (Reliability issue, item 4): every write a run makes is fenced by
its lease, and lease times come from the database's clock, not each host's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.fakes.anthropic import Reply
from tests.support.engine import Harness
from tests.support.records import attempts as fetch_attempts
from tests.support.records import llm_calls
from tests.support.waiting import eventually
from workers import queue
from workers.budget import BudgetGuard
from workers.errors import LeaseLost
from workers.models import LlmCall, ToolCall, utcnow
from workers.runtime import Worker
from workers.store.runs import Checkpoint
from workers.workorder import Status


def _worker(h: Harness, worker_id: str, now: Callable[[], datetime] = utcnow) -> Worker:
    return Worker(
        h.settings, h.store, h.router, worker_id=worker_id, tools=h.tools, now=now
    )


async def _take_over(h: Harness, order_id: str, worker_id: str) -> int:
    """The lease of `order_id`'s run expires and `worker_id` claims the order: the first worker
    is now a zombie. Returns the new attempt's id."""
    reaped = await h.store.queue.reap_expired(max_lost=9, now=utcnow() + timedelta(minutes=10))
    assert [o.id for o in reaped] == [order_id]
    claim = await queue.claim(h.store, h.settings, worker_id)
    assert claim.order is not None and claim.attempt is not None and claim.attempt.id
    return claim.attempt.id


async def test_a_zombie_run_writes_nothing_and_posts_nothing(harness: Harness) -> None:
    h = harness
    order = await h.order()
    order_id = order.id or ""
    zombie = await queue.claim(h.store, h.settings, "zombie")
    assert zombie.order is not None and zombie.attempt is not None and zombie.attempt.id
    live_attempt = await _take_over(h, order_id, "rescuer")
    # Had the zombie carried on, the model would have handed in a deliverable at once.
    h.anthropic.script(Reply.tool("submit_deliverable", {"content": "zombie's", "summary": "z"}))

    outcome = await h.agent("zombie").run(zombie.order, zombie.attempt)

    assert outcome.kind == "lost"
    assert h.anthropic.requests == []  # no model call, so nothing reserved or spent
    assert h.reporter.results == {} and h.reporter.exceptions == {}
    row = await h.store.orders.get_row(order_id)
    assert (row.status, row.lease_owner) == (Status.RUNNING.value, "rescuer")
    assert (row.reserved_micro_usd, row.spent_micro_usd, row.model_calls) == (0, 0, 0)
    attempts = {a.id: a for a in await fetch_attempts(h.store, order_id)}
    assert attempts[zombie.attempt.id].checkpoint_at is None  # it saved no checkpoint
    assert attempts[live_attempt].outcome is None
    assert await h.store.runs.deliverables(order_id) == []


async def test_each_write_of_a_fenced_out_attempt_raises_lease_lost(harness: Harness) -> None:
    h = harness
    order = await h.order()
    order_id = order.id or ""
    number = int(order_id[3:])
    zombie = await queue.claim(h.store, h.settings, "zombie")
    assert zombie.attempt is not None and zombie.attempt.id
    stale = zombie.attempt.id
    await _take_over(h, order_id, "rescuer")

    with pytest.raises(LeaseLost):
        await h.store.runs.save_step(
            stale, checkpoint=Checkpoint([], step=3, elapsed_ms=10)
        )
    guard = BudgetGuard(
        h.store.ledger, h.settings, order_number=number, team="default", budget=order.budget,
        attempt_id=stale,
    )  # fmt: skip
    with pytest.raises(LeaseLost):
        await guard.reserve(
            role="execute", provider="anthropic", model="claude-sonnet-4-6",
            input_tokens=100, want_output_tokens=100,
        )  # fmt: skip
    with pytest.raises(LeaseLost):
        await guard.charge_tool_call()
    with pytest.raises(LeaseLost):  # a step's writes together: none of them
        await h.store.runs.save_step(
            stale,
            tool_calls=[ToolCall(order_id=number, attempt_id=stale, name="read_thread")],
            checkpoint=Checkpoint(messages=[], step=3, elapsed_ms=10),
            count=guard.tool_count(status="Reading the thread"),
        )
    with pytest.raises(LeaseLost):
        await h.store.runs.record_tool_call(
            ToolCall(order_id=number, attempt_id=stale, name="read_thread", outcome="ok")
        )
    with pytest.raises(LeaseLost):
        await h.store.runs.save_deliverable(
            order_id, tool_use_id="t1", content="x", summary="x", attempt_id=stale, actor="zombie"
        )
    # The same worker claiming the order again does not revive its old attempt.
    assert (
        await h.store.queue.finish_run(
            order_id, "zombie", Status.AWAITING_REVIEW, reason="zombie", attempt_id=stale
        )
        is None
    )
    row = await h.store.orders.get_row(order_id)
    assert (row.status, row.lease_owner, row.tool_calls, row.model_calls) == (
        Status.RUNNING.value, "rescuer", 0, 0,
    )  # fmt: skip
    assert await llm_calls(h.store, order_id) == [] and await h.store.runs.tool_calls(order_id) == []


async def test_an_attempt_reclaimed_by_the_same_worker_fences_the_old_attempt(
    harness: Harness,
) -> None:
    h = harness
    order = await h.order()
    first = await queue.claim(h.store, h.settings, "w1")
    assert first.attempt is not None and first.attempt.id
    await _take_over(h, order.id or "", "w1")
    with pytest.raises(LeaseLost):
        await h.store.runs.save_step(
            first.attempt.id, checkpoint=Checkpoint([], step=1, elapsed_ms=0)
        )
    call = LlmCall(order_id=int((order.id or "")[3:]), attempt_id=first.attempt.id, role="execute",
                   provider="anthropic", model="m")  # fmt: skip
    with pytest.raises(LeaseLost):
        await h.store.ledger.reserve_spend(
            order.id or "", team="default", week="2026-01-05", quota_micro_usd=10**9,
            plan=lambda _: __import__("workers.budget").budget.CallPlan(1, 1, 1), call=call,
        )  # fmt: skip


@pytest.mark.parametrize("skew", [timedelta(minutes=2), timedelta(minutes=-2)])
async def test_a_worker_whose_clock_is_off_by_two_minutes_reaps_no_live_run(
    harness: Harness, skew: timedelta
) -> None:
    """One worker's wall clock is off: its claims' leases are as long as everyone's, and its
    reaper does not take live runs from workers whose clocks are right (nor they from it)."""
    h = harness
    first, second = await h.order(), await h.order()
    h.anthropic.script(
        Reply(text="(first run, slow)", delay=60), Reply(text="(second run, slow)", delay=60)
    )
    skewed = _worker(h, "skewed", now=lambda: utcnow() + skew)
    right = _worker(h, "right")
    stop = asyncio.Event()
    tasks = [asyncio.create_task(skewed.run(stop))]
    try:
        await eventually(lambda: len(h.anthropic.requests) == 1)
        tasks.append(asyncio.create_task(right.run(stop)))
        await eventually(lambda: len(h.anthropic.requests) == 2)
        # Both runs are live and renewing; each worker reaps what it believes has expired.
        for worker in (skewed, right):
            await worker._reap()
        for order in (first, second):
            row = await h.store.orders.get_row(order.id or "")
            assert row.status == Status.RUNNING.value, row.status
            assert row.lost_leases == 0
        owners = {(await h.store.orders.get_row(o.id or "")).lease_owner for o in (first, second)}
        assert owners == {"skewed", "right"}
        for order in (first, second):  # no run was ever written by two workers
            assert len(await fetch_attempts(h.store, order.id or "")) == 1
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_worker_that_cannot_renew_its_lease_stops_the_run_before_the_lease_expires(
    harness: Harness,
) -> None:
    """The database stops answering the heartbeat: the worker gives the run up while its lease
    is still valid (with a margin), so nobody else has taken it over while it still runs."""
    h = harness
    engine = h.settings.engine.model_copy(
        update={"lease_ttl_s": 60, "heartbeat_s": 15, "cancel_poll_s": 0.02}
    )
    settings = h.settings.model_copy(update={"engine": engine})
    order = await h.order()
    h.anthropic.script(Reply(text="(slow)", delay=60))
    elapsed = [0.0]  # the worker's monotonic clock, moved by the test
    worker = Worker(
        settings,
        h.store,
        h.router,
        worker_id="cut-off",
        tools=h.tools,
        clock=lambda: elapsed[0],
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    checks = [0]

    async def unreachable(*args: object, **kwargs: object) -> bool:
        checks[0] += 1
        raise ConnectionError("the database does not answer")

    try:
        await eventually(lambda: len(h.anthropic.requests) == 1)
        h.store.queue.check_leases = unreachable  # type: ignore[method-assign]

        elapsed[0] = 30.0  # two heartbeats missed: the lease still has half its time
        seen = checks[0]
        await eventually(lambda: checks[0] >= seen + 3)
        assert worker.running, "still well inside the lease: keep going"

        elapsed[0] = 50.0  # ten seconds before the lease expires
        await eventually(lambda: not worker.running)
        row = await h.store.orders.get_row(order.id or "")
        assert row.lease_owner == "cut-off" and row.status == Status.RUNNING.value
        assert row.lease_expires_at is not None
        assert row.lease_expires_at.replace(tzinfo=None) > utcnow().replace(tzinfo=None)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)


async def test_one_query_checks_the_leases_of_all_of_a_workers_runs(harness: Harness) -> None:
    """A worker with many runs in flight renews and checks their leases together: one query
    per heartbeat or poll, not one per run (which queued a busy worker's heartbeats)."""
    h = harness
    orders = [await h.order(requester=f"U{i}") for i in range(6)]
    h.anthropic.script(*[Reply(text="(slow)", delay=60)] * 6)
    worker = Worker(
        h.settings, h.store, h.router, worker_id="busy", tools=h.tools, concurrency=6
    )
    checked: list[list[int]] = []
    check = h.store.queue.check_leases

    async def counting(numbers: Any, worker_id: str, **kwargs: Any) -> Any:
        checked.append(sorted(numbers))
        return await check(numbers, worker_id, **kwargs)

    h.store.queue.check_leases = counting  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await eventually(lambda: len(h.anthropic.requests) == 6)
        everyone = sorted(int((o.id or "")[3:]) for o in orders)
        await eventually(lambda: everyone in checked)
        assert all(len(set(numbers)) == len(numbers) for numbers in checked)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)

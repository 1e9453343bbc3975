"""The worker pool in one process: concurrency, cancellation, parking, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.fakes.anthropic import Reply
from tests.support.databases import Database
from tests.support.engine import Harness
from tests.support.records import attempts, llm_calls
from tests.support.waiting import eventually
from workers import queue
from workers.runtime import Worker, run_worker
from workers.store import Store
from workers.tools import ToolRegistry
from workers.tools.base import ToolContext, ToolResult
from workers.tools.builtin import ReadThread
from workers.workorder import Status


@asynccontextmanager
async def running(h: Harness, *, concurrency: int = 2, worker_id: str = "w1") -> AsyncIterator[Worker]:
    worker = Worker(
        h.settings,
        h.store,
        h.router,
        concurrency=concurrency,
        worker_id=worker_id,
        tools=h.tools,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def status_of(h: Harness, order_id: str) -> Status:
    return (await h.store.orders.get_order(order_id)).status


class HeldReadThread:
    """`read_thread` that does not return until the test releases it: runs stay in their slot
    for as long as the test needs, however fast or slow the machine is."""

    spec = ReadThread.spec
    authority = ReadThread.authority

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.holding = 0
        self.most_held = 0

    def describe(self, arguments: dict[str, Any]) -> str:
        return "Reading the thread"

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        self.holding += 1
        self.most_held = max(self.most_held, self.holding)
        try:
            await self.release.wait()
        finally:
            self.holding -= 1
        return ToolResult("The thread has no messages the bot has seen.")


async def test_a_pool_runs_orders_concurrently_up_to_its_limit(harness: Harness) -> None:
    h = harness
    # Generous leases: the held runs must not lose theirs on a loaded machine (not tested here).
    engine = h.settings.engine.model_copy(update={"lease_ttl_s": 30, "heartbeat_s": 5})
    h.settings = h.settings.model_copy(update={"engine": engine})
    held = HeldReadThread()
    others = [h.tools.get(name) for name in h.tools.names if name != "read_thread"]
    h.tools = ToolRegistry([held, *(t for t in others if t is not None)])
    orders = [await h.order(requester=f"U{n}") for n in range(3)]
    h.anthropic.script(
        *[Reply.tool("read_thread", {}) for _ in range(3)],
        *[Reply.tool("submit_deliverable", {"content": "c", "summary": "s"}) for _ in range(3)],
    )
    async with running(h, concurrency=2) as worker:
        await eventually(lambda: held.holding == 2)  # two runs hold both slots
        assert len(worker.running) == 2
        statuses = [await status_of(h, o.id or "") for o in orders]
        assert statuses.count(Status.QUEUED) == 1, statuses  # the third waits for a slot
        held.release.set()
        for order in orders:
            await eventually(lambda o=order: _is(h, o.id, Status.AWAITING_REVIEW))
    assert held.most_held == 2
    assert sorted(kind for _, kind in [(n, o.kind) for n, o in worker.outcomes]) == ["done"] * 3


async def test_an_order_queued_in_the_workers_process_is_claimed_at_once(harness: Harness) -> None:
    """`delegate run` queues an order (Start) and runs it in one process: its worker claims it
    when the queueing commits, not at its next poll. The poll here is an hour."""
    h = harness
    engine = h.settings.engine.model_copy(update={"poll_interval_s": 3600})
    h.settings = h.settings.model_copy(update={"engine": engine})
    h.anthropic.script(Reply.tool("submit_deliverable", {"content": "c", "summary": "s"}))
    async with running(h) as worker:
        await eventually(lambda: worker.last_pass is not None)  # idle: nothing was queued
        order = await h.order()
        await eventually(lambda: _is(h, order.id, Status.AWAITING_REVIEW))


async def test_a_queueing_that_rolls_back_does_not_wake_the_worker(harness: Harness) -> None:
    h = harness
    woken: list[str] = []
    stop_listening = h.store.on_queued(lambda: woken.append("queued"))
    created = await h.order(start=False)
    try:
        async with h.store.transaction() as s:
            row = await h.store.orders._row(s, created.id or "", for_update=True)
            await h.store.orders._move(s, row, Status.QUEUED, actor="U1", reason="test")
            assert woken == []  # not before the commit
            raise RuntimeError("rolled back")
    except RuntimeError:
        pass
    assert woken == []

    def broken() -> None:
        raise RuntimeError("listener bug")

    stop_broken = h.store.on_queued(broken)
    # The queueing committed: a failing listener is logged, not raised as the enqueue's error.
    queued = await queue.enqueue(h.store, h.settings, created.id or "", actor="U1")
    assert queued.status is Status.QUEUED and woken == ["queued"]
    stop_listening()
    stop_broken()
    await h.order()
    assert woken == ["queued"]


async def _attempt_ended(h: Harness, order_id: str) -> bool:
    return all(a.ended_at is not None for a in await attempts(h.store, order_id))


async def _is(h: Harness, order_id: str | None, status: Status) -> bool:
    return await status_of(h, order_id or "") == status


async def test_cancel_stops_a_running_order_within_seconds(harness: Harness) -> None:
    h = harness
    order = await h.order()
    h.anthropic.script(Reply.tool("read_thread", {}), Reply(text="slow", delay=30))
    async with running(h):
        await eventually(lambda: len(h.anthropic.requests) == 2)
        await queue.cancel(h.store, order.id or "", actor="U1", reason="requester cancelled")
        # Well before the slow reply (30 s) would end the step: the call was interrupted.
        await eventually(lambda: _attempt_ended(h, order.id or ""), timeout_s=20)
    await h.deliver()
    assert h.reporter.steps(order.id or "")[-1] == "Cancelled (by <@U1>)"
    row = await h.store.orders.get_row(order.id or "")
    assert row.status == Status.CANCELLED.value and row.reserved_micro_usd == 0
    calls = await llm_calls(h.store, order.id or "")
    assert [c.outcome for c in calls] == ["ok", "interrupted"]
    assert row.spent_micro_usd == sum(c.cost_micro_usd for c in calls) > 0
    [attempt] = await attempts(h.store, order.id or "")
    assert attempt.outcome == "cancelled"


async def test_ask_requester_parks_the_run_and_the_reply_resumes_it(harness: Harness) -> None:
    h = harness
    order = await h.order()
    h.anthropic.script(
        Reply.tool("ask_requester", {"question": "Which three competitors?"}),
        Reply.tool("submit_deliverable", {"content": "table", "summary": "done"}),
    )
    async with running(h, concurrency=1) as worker:
        await eventually(lambda: _is(h, order.id, Status.WAITING_FOR_REQUESTER))
        await eventually(lambda: not worker.running)  # the slot is free while it waits
        await h.deliver()  # the question went to the outbox with the park
        [(oid, question)] = h.reporter.questions.values()
        assert (oid, question) == (order.id, "Which three competitors?")
        row = await h.store.orders.get_row(order.id or "")
        assert row.lease_owner is None
        assert len(h.anthropic.requests) == 1

        await queue.resume_with_reply(h.store, order.id or "", "Acme, Globex and Initech", user="U1")
        await eventually(lambda: _is(h, order.id, Status.AWAITING_REVIEW))
    await h.deliver()
    resumed = h.anthropic.requests[1]["messages"]
    [answer] = [b for b in resumed[-1]["content"] if b.get("type") == "tool_result"]
    assert "Acme, Globex and Initech" in answer["content"]
    assert [a.outcome for a in await attempts(h.store, order.id or "")] == ["parked", "submitted"]
    assert len(h.reporter.questions) == 1 and h.reporter.duplicates == []
    assert (await h.store.orders.get_row(order.id or "")).inbox == []


async def test_shutdown_lets_the_step_finish_and_requeues_the_run(harness: Harness) -> None:
    h = harness
    order = await h.order()
    h.anthropic.script(Reply.tool("read_thread", {}, delay=0.5), Reply.tool("read_thread", {}))
    worker = Worker(h.settings, h.store, h.router, worker_id="w1", tools=h.tools)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await eventually(lambda: len(h.anthropic.requests) == 1)
    stop.set()
    await asyncio.wait_for(task, 5)
    row = await h.store.orders.get_row(order.id or "")
    assert row.status == Status.QUEUED.value and row.lease_owner is None
    assert len(h.anthropic.requests) == 1  # the step in flight finished; no new one started
    attempt = await h.store.runs.latest_checkpoint(order.id or "")
    assert attempt is not None and attempt.step == 1 and attempt.outcome == "requeued"


async def test_shutdown_cuts_off_a_step_that_outlasts_the_grace_period(harness: Harness) -> None:
    h = harness
    order = await h.order()
    h.anthropic.script(Reply.tool("read_thread", {}), Reply(text="slow", delay=30))
    worker = Worker(h.settings, h.store, h.router, worker_id="w1", tools=h.tools)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await eventually(lambda: len(h.anthropic.requests) == 2)
    stop.set()
    await asyncio.wait_for(task, h.settings.engine.shutdown_grace_s + 3)
    row = await h.store.orders.get_row(order.id or "")
    assert row.status == Status.QUEUED.value and row.lease_owner is None
    assert row.reserved_micro_usd == 0
    calls = await llm_calls(h.store, order.id or "")
    assert calls[-1].outcome == "interrupted"
    # Another worker picks it up from the checkpoint.
    h.anthropic.script(Reply.tool("submit_deliverable", {"content": "c", "summary": "s"}))
    outcome = await h.run_next(worker_id="w2")
    assert outcome is not None and outcome.kind == "done"
    assert h.anthropic.requests[-1]["messages"][1]["content"][0]["name"] == "read_thread"


def _pool_in_task(
    h: Harness, stop: asyncio.Event, on_start: Callable[[Worker], object] | None = None
) -> asyncio.Task[None]:
    """`run_worker` on the harness's store, router and tools, saying the outbox through its
    reporter, until `stop` is set."""
    return asyncio.create_task(
        run_worker(
            h.settings,
            reporter=h.reporter,
            store=h.store,
            router=h.router,
            tools=h.tools,
            stop=stop,
            handle_signals=False,
            on_start=on_start,
        )
    )


async def test_run_worker_says_the_outbox_through_its_reporter(harness: Harness) -> None:
    h = harness
    order = await h.order()
    h.anthropic.script(Reply.tool("submit_deliverable", {"content": "c", "summary": "s"}))
    stop = asyncio.Event()
    task = _pool_in_task(h, stop)
    # No deliverer of its own: the pool says what the run wrote to the outbox through the
    # reporter it was given (a log-only `delegate worker` does the same with the log).
    await eventually(lambda: bool(h.reporter.results))
    await eventually(
        lambda: h.reporter.steps(order.id or "")[-1:] == ["Deliverable submitted; waiting for review"]
    )
    stop.set()
    await asyncio.wait_for(task, 5)
    assert await h.store.outbox.undelivered() == []


async def test_the_model_sdks_are_loaded_when_work_arrives_not_at_start(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing the SDKs costs a process a second or more of CPU and tens of MB: a worker
    with nothing to do (a bot whose orders other workers take, a restart, a health check)
    does not pay it. The first queued order has them loaded before it is claimed."""
    h = harness
    loads: list[str] = []
    pools: list[Worker] = []

    async def preload() -> None:
        loads.append("loading")

    monkeypatch.setattr(h.router, "preload", preload)
    stop = asyncio.Event()
    task = _pool_in_task(h, stop, on_start=pools.append)
    try:
        await eventually(lambda: bool(pools) and pools[0].last_pass is not None)
        first_pass = pools[0].last_pass
        await eventually(lambda: pools[0].last_pass != first_pass)  # idle passes, nothing queued
        assert loads == []
        order = await h.order()
        h.anthropic.script(Reply.tool("submit_deliverable", {"content": "c", "summary": "s"}))
        await eventually(lambda: bool(h.reporter.results))
        assert loads == ["loading"]
        assert (await h.store.orders.get_row(order.id or "")).status != Status.QUEUED.value
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_worker_claims_nothing_while_the_model_sdks_load(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing the SDKs holds the interpreter for seconds: a lease taken meanwhile missed its
    heartbeats on a loaded machine and was taken over mid-step. The pool claims its first order
    once they are loaded."""
    h = harness
    order = await h.order()
    h.anthropic.script(Reply.tool("submit_deliverable", {"content": "c", "summary": "s"}))
    seen_while_loading: list[str] = []

    async def slow_preload() -> None:
        async def status() -> str:
            return (await h.store.orders.get_row(order.id or "")).status

        async def claimed() -> bool:
            return await status() != Status.QUEUED.value

        # A slow import: long enough for the pool to have claimed the order many times over.
        with contextlib.suppress(TimeoutError):
            await eventually(claimed, timeout_s=1.0)
        seen_while_loading.append(await status())

    monkeypatch.setattr(h.router, "preload", slow_preload)
    stop = asyncio.Event()
    task = _pool_in_task(h, stop)
    await eventually(lambda: bool(h.reporter.results))
    stop.set()
    await asyncio.wait_for(task, 5)
    assert seen_while_loading == [Status.QUEUED.value]


async def test_an_order_queued_by_another_process_wakes_the_worker(
    harness: Harness, database: Database
) -> None:
    """A separate `delegate worker` is woken by PostgreSQL NOTIFY when another process (here a
    second engine on the same database) queues an order: it claims it without waiting for its
    poll, which here is an hour. After its listening connection is killed, it listens again.
    SQLite has no NOTIFY: there the order is found by the next poll."""
    h = harness
    postgres = database.backend == "postgres"
    engine = h.settings.engine.model_copy(update={"poll_interval_s": 3600 if postgres else 0.2})
    h.settings = h.settings.model_copy(update={"engine": engine})
    h.anthropic.script(
        Reply.tool("submit_deliverable", {"content": "c", "summary": "s"}),
        Reply.tool("submit_deliverable", {"content": "c2", "summary": "s2"}),
    )
    elsewhere = Store(database.engine())
    if not postgres:
        try:
            async with running(h):
                order = await h.order(start=False)
                await queue.enqueue(elsewhere, h.settings, order.id or "", actor="U1")
                await eventually(lambda: _is(h, order.id, Status.AWAITING_REVIEW))
        finally:
            await elsewhere.close()
        return
    try:
        async with running(h) as worker:
            await eventually(lambda: worker.last_pass is not None)  # idle: nothing was queued
            await eventually(lambda: _listening(elsewhere))
            first = await h.order(start=False)
            await queue.enqueue(elsewhere, h.settings, first.id or "", actor="U1")
            await eventually(lambda: _is(h, first.id, Status.AWAITING_REVIEW))
            # The listening connection dies (a database restart, a proxy timeout): the worker
            # listens again, and the next queueing still wakes it.
            await _kill_listeners(elsewhere)
            await eventually(lambda: _listening(elsewhere))
            second = await h.order(start=False)
            await queue.enqueue(elsewhere, h.settings, second.id or "", actor="U1")
            await eventually(lambda: _is(h, second.id, Status.AWAITING_REVIEW))
    finally:
        await elsewhere.close()


_LISTENERS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"
)


async def _listening(store: Store) -> bool:
    async with store.engine.connect() as conn:
        return bool((await conn.exec_driver_sql(_LISTENERS)).all())


async def _kill_listeners(store: Store) -> None:
    async with store.engine.connect() as conn:
        for (pid,) in (await conn.exec_driver_sql(_LISTENERS)).all():
            await conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")

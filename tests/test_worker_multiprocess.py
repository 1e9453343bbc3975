"""Several worker processes on one PostgreSQL database: 100 orders, none run twice, none lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, func, select

from tests.fakes.anthropic import FakeAnthropic, Reply
from tests.fakes.openai import FakeOpenAI
from tests.support.databases import Database
from tests.support.factories import make_order
from tests.support.processes import spawn_worker, stop_worker, worker_env
from tests.support.records import attempts as fetch_attempts
from tests.support.records import llm_calls
from tests.support.waiting import eventually
from workers import queue
from workers.config import load_settings
from workers.models import AuditEvent, WorkOrderRow
from workers.store import Store
from workers.workorder import Status

ORDERS = 100
PROCESSES = 3
CONCURRENCY = 4


def two_steps(body: dict[str, Any]) -> Reply:
    """Read the thread first, then submit: every order takes two model calls."""
    last = body["messages"][-1]["content"]
    answered = isinstance(last, list) and any(b.get("type") == "tool_result" for b in last)
    if not answered:
        return Reply.tool("read_thread", {})
    return Reply.tool("submit_deliverable", {"content": "done", "summary": "done"})


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_many_workers_run_every_order_exactly_once(
    database: Database,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> None:
    store = Store(database.engine())
    settings = load_settings(
        database_url=database.url,
        teams={"default": {"weekly_usd": 1000.0, "max_concurrent_runs_per_user": 100}},
    )
    ids = []
    for n in range(ORDERS):
        created = await store.orders.create_order(
            make_order(requester=f"U{n % 7}", status=Status.AWAITING_CONFIRMATION), actor="U1"
        )
        await queue.enqueue(store, settings, created.id or "", actor="U1")
        ids.append(created.id or "")
    fake_anthropic.script(*[two_steps] * (ORDERS * 2))
    # Generous leases: this test is about claims, not about recovering from slow machines.
    env = worker_env(
        database,
        fake_anthropic,
        fake_openai,
        tmp_path,
        engine={"lease_ttl_s": 30, "heartbeat_s": 5},
    )
    config = Path(env["DELEGATE_CONFIG"])
    config.write_text(
        config.read_text()
        + "teams:\n  default: {weekly_usd: 1000.0, max_concurrent_runs_per_user: 100}\n"
    )
    workers = [
        await spawn_worker(env, tmp_path, worker_id=f"worker-{n}", concurrency=CONCURRENCY)
        for n in range(PROCESSES)
    ]
    try:

        async def all_done() -> bool:
            async with store.transaction() as s:
                done = (
                    await s.exec(
                        select(func.count())
                        .select_from(WorkOrderRow)
                        .where(WorkOrderRow.status == Status.AWAITING_REVIEW.value)
                    )
                ).one()
            return done == ORDERS

        await eventually(all_done, timeout_s=90, interval_s=0.5)
    finally:
        codes = await asyncio.gather(*(stop_worker(w) for w in workers))
    assert codes == [0] * PROCESSES

    assert len(fake_anthropic.requests) == ORDERS * 2
    by_worker: dict[str, int] = {}
    for order_id in ids:
        attempts = await fetch_attempts(store, order_id)
        assert [a.outcome for a in attempts] == ["submitted"], (order_id, attempts)
        by_worker[attempts[0].worker_id] = by_worker.get(attempts[0].worker_id, 0) + 1
        assert len(await store.runs.deliverables(order_id)) == 1
        assert len(await llm_calls(store, order_id)) == 2
    # Which process claimed what depends on scheduling; on a loaded machine one process may
    # even claim nothing. Every claim came from one of them, and every order was claimed once.
    assert set(by_worker) <= {f"worker-{n}" for n in range(PROCESSES)}, by_worker
    assert sum(by_worker.values()) == ORDERS
    async with store.transaction() as s:
        claims = (
            await s.exec(
                select(AuditEvent.chain, func.count())
                .where(col(AuditEvent.kind) == "attempt_started")
                .group_by(col(AuditEvent.chain))
            )
        ).all()
    assert len(claims) == ORDERS and all(count == 1 for _, count in claims)
    assert (await store.audit.verify_audit())[1] == []
    await store.close()

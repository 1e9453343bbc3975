"""A brief database drop does not fail runs (issue 18, failure 8): a run whose database
connection fails goes back to the queue and resumes from its checkpoint, not counted as a crash;
only `engine.max_attempts` such runs in a row end in exception."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from tests.fakes.anthropic import Reply
from tests.support.databases import Database
from tests.support.engine import Harness
from tests.support.records import attempts as fetch_attempts
from tests.support.waiting import eventually
from workers import db
from workers.agent import DATABASE_DROPPED
from workers.workorder import Status

DONE = {Status.AWAITING_REVIEW.value, Status.APPROVED.value}
SUBMIT = Reply.tool("submit_deliverable", {"content": "The answer.", "summary": "Answered."})


async def _kill_backends(database: Database) -> int:
    """Terminate every connection to the test database but this one (a database restart, a
    fail-over, or an administrator's kill, as the run sees it)."""
    engine = database.engine()
    try:
        async with engine.connect() as conn:
            killed = await conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            return int(killed.scalar_one())
    finally:
        await engine.dispose()


def _drop_once(h: Harness) -> list[int]:
    """SQLite has no server to lose: the run's next step write fails as a dropped connection
    does (OperationalError, connection invalidated)."""
    dropped: list[int] = []
    save = h.store.runs.save_step

    async def failing(*args: Any, **kwargs: Any) -> Any:
        if not dropped:
            dropped.append(1)
            raise OperationalError(
                "UPDATE run_attempts", {}, Exception("disk I/O error"), connection_invalidated=True
            )
        return await save(*args, **kwargs)

    h.store.runs.save_step = failing  # type: ignore[method-assign]
    return dropped


async def test_a_run_whose_database_connections_are_killed_is_resumed_not_crashed(
    harness: Harness, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pooled connection idle for over PING_AFTER_IDLE_S is pinged, and replaced if dead,
    # before use: on a slow machine the kill below took that long, and the run never saw it.
    # The run's next statement must meet the killed connection, as one sent just after the
    # kill does.
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 3600.0)
    h = harness
    order = await h.order()
    order_id = order.id or ""
    h.anthropic.script(Reply(text="Working on it."), SUBMIT)
    h.anthropic.held = asyncio.Event()
    run = asyncio.create_task(h.run_next())
    await eventually(lambda: len(h.anthropic.requests) == 1)  # mid-step: the model is answering
    if database.backend == "postgres":
        assert await _kill_backends(database) >= 1
    else:
        dropped = _drop_once(h)
    h.anthropic.held.set()
    await run

    # The first attempt went back to the queue; the next one resumes and finishes the work.
    await eventually(lambda: _run_again(h, order_id))
    row = await h.store.orders.get_row(order_id)
    assert row.status in DONE, (row.status, row.exception_kind, row.exception_message)
    assert row.exception_kind is None and row.lost_leases == 0 and row.reserved_micro_usd == 0
    outcomes = [a.outcome for a in await fetch_attempts(h.store, order_id)]
    assert outcomes[0] == DATABASE_DROPPED and not any("crashed" in (o or "") for o in outcomes)
    assert h.reporter.exceptions == {}
    if database.backend == "sqlite":
        assert dropped == [1]


async def _run_again(h: Harness, order_id: str) -> bool:
    """Claim and run the order once its back-off has passed; whether it has left the queue."""
    await h.run_next()
    return (await h.store.orders.get_row(order_id)).status != Status.QUEUED.value


async def test_a_database_that_keeps_failing_runs_ends_in_exception(harness: Harness) -> None:
    h = harness
    order = await h.order()
    order_id = order.id or ""
    max_attempts = h.settings.engine.max_attempts
    h.anthropic.script(*[Reply(text="Working on it.")] * max_attempts)

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("UPDATE run_attempts", {}, Exception("server closed the connection"))

    h.store.runs.save_step = failing  # type: ignore[method-assign]
    await eventually(lambda: _run_again(h, order_id), timeout_s=60)

    row = await h.store.orders.get_row(order_id)
    assert (row.status, row.exception_kind) == (Status.EXCEPTION.value, "crashed")
    assert "database connection failed" in (row.exception_message or "")
    outcomes = [a.outcome for a in await fetch_attempts(h.store, order_id)]
    assert outcomes == [DATABASE_DROPPED] * (max_attempts - 1) + ["exception:crashed"]

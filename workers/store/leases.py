"""Lease fencing and the database's clock, shared by every part of the store a run writes through.

A run's writes (checkpoint, reservation, tool-call count and record, deliverable, its ending) are
fenced by its attempt: they lock the order row and go through only while the order is running
under the lease of the worker that started this attempt and the attempt has not been ended (by
the reaper, a cancel, or the run itself). A worker whose lease was taken over ("a zombie": frozen,
partitioned, or just slow) gets `LeaseLost` and must stop without side effects.

Lease expiry and reaping use the database's clock, so that hosts whose clocks disagree still
agree on when a lease ends.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlmodel import col
from sqlmodel import select as select_rows
from sqlmodel.ext.asyncio.session import AsyncSession

from workers.errors import LeaseLost, NotFound
from workers.models import RunAttempt, WorkOrderRow
from workers.store.base import (
    DATABASE_NOW,
    POSTGRES_NOW,
    SQLITE_NOW,
    StoreBase,
    database_time,
)
from workers.workorder import Status, format_order_id

_SQLITE_NOW = select(SQLITE_NOW)
_POSTGRES_NOW = select(POSTGRES_NOW)


async def database_now(store: StoreBase | None, s: AsyncSession) -> datetime:
    """The database server's current time (UTC), read inside the session's transaction (the
    backend is the session's; `store` is kept for the callers that pass it)."""
    assert s.bind is not None
    sqlite = s.bind.dialect.name == "sqlite"
    value = (await s.exec(_SQLITE_NOW if sqlite else _POSTGRES_NOW)).one()[0]  # type: ignore[call-overload]
    now = s.info[DATABASE_NOW] = database_time(value)
    return now


async def transaction_now(s: AsyncSession) -> datetime:
    """The database's time for the due times this transaction writes: the time it already read
    (`database_now`, or with its locked order row), else read now. Never the host's clock: a
    host whose clock runs ahead would write rows nobody may claim until its own now comes."""
    known = s.info.get(DATABASE_NOW)
    return known if known is not None else await database_now(None, s)


async def fenced_row(store: StoreBase, s: AsyncSession, attempt_id: int) -> WorkOrderRow:
    """The order row of a live attempt, locked for the rest of the transaction; `LeaseLost` if
    the attempt no longer holds its order's lease."""
    # One round trip: the order row and the attempt, both locked (order first, as the reaper
    # and a takeover lock them), with the database's clock. A transaction that ended the attempt
    # while this waited for the locks is seen: PostgreSQL re-reads locked rows once they are free.
    clock = SQLITE_NOW if store._sqlite else POSTGRES_NOW
    query = store._for_update(
        select_rows(WorkOrderRow, RunAttempt, clock)
        .join(RunAttempt, col(RunAttempt.order_id) == col(WorkOrderRow.id))
        .where(col(RunAttempt.id) == attempt_id)
        .execution_options(populate_existing=True)
    )
    found = (await s.exec(query)).first()
    if found is None:
        raise NotFound(f"run attempt {attempt_id} does not exist")
    row, attempt, now = found
    s.info[DATABASE_NOW] = database_time(now)
    check_fence(
        order_id=attempt.order_id,
        status=row.status,
        lease_owner=row.lease_owner,
        attempt_number=attempt.number,
        attempt_worker=attempt.worker_id,
        attempt_ended=attempt.ended_at is not None,
    )
    return row


def check_fence(
    *,
    order_id: int,
    status: str,
    lease_owner: str | None,
    attempt_number: int,
    attempt_worker: str,
    attempt_ended: bool,
) -> None:
    """`LeaseLost` unless the attempt is live and its worker holds the running order's lease
    (for a statement that reads the order and its attempt with more beside them)."""
    if attempt_ended or status != Status.RUNNING.value or lease_owner != attempt_worker:
        raise LeaseLost(
            f"{format_order_id(order_id)}: attempt {attempt_number} of {attempt_worker} no "
            "longer holds the lease"
        )

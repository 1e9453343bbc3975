"""The durable outbox: messages an order owes its thread, and the health every process shares.

The engine writes a message (`OutboxItem`: a kind, its idempotency key and a domain payload,
never Slack blocks) in the same transaction as the state change that causes it (`write_outbox`,
called by `finish_run`). A deliverer in any process with a Slack client claims due rows
(`claim_outbox`: FOR UPDATE SKIP LOCKED on PostgreSQL, BEGIN IMMEDIATE on SQLite), sends them
and marks them sent; a failed send backs off on its own row, so one order's trouble never holds
up another's. A row whose claimer died is claimed again once `claimed_until` passes: the
message's key makes the second send find the first instead of posting twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, case, delete, exists, func, insert, or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from workers.keys import exception_key
from workers.models import OutboxMessage, ServiceHealth, WorkOrderRow, utcnow
from workers.store.base import OrderRef, StoreBase, as_utc, order_number
from workers.store.leases import database_now
from workers.workorder import format_order_id

URGENT, NORMAL = 0, 1

SLACK = "slack"
"""The `service_health` entry set while Slack refuses the bot token."""


@dataclass(frozen=True)
class OutboxItem:
    """A message to send once the transaction that writes it commits."""

    kind: str  # result, question, exception, notice
    key: str
    payload: dict[str, Any] = field(default_factory=dict)
    priority: int = URGENT


@dataclass(frozen=True)
class Undelivered:
    """A message not (yet) delivered, for the doctor, the health check and the metrics."""

    order_id: str
    key: str
    kind: str
    attempts: int
    error: str | None
    permanent: bool
    created_at: datetime


def exception_notice(key: str, kind: str, message: str) -> OutboxItem:
    """The exception notice an order owes its thread (rendered with the spend at send time)."""
    return OutboxItem("exception", key, {"kind": kind, "message": message})


def crashed_notice(row: WorkOrderRow, message: str) -> OutboxItem:
    """The notice for an order whose worker kept dying (same key as the reaper's report)."""
    assert row.id is not None
    return exception_notice(
        exception_key(format_order_id(row.id), "crashed", row.attempts), "crashed", message
    )


def insert_ignoring(s: AsyncSession, table: Table, values: Mapping[str, Any]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING on either backend (rowcount 0 if it was there)."""
    assert s.bind is not None
    dialect = s.bind.dialect.name
    if dialect == "postgresql":
        return pg_insert(table).values(**values).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite_insert(table).values(**values).on_conflict_do_nothing()
    return insert(table).values(**values)  # pragma: no cover - Delegate runs on the two above


_outbox: Table = OutboxMessage.__table__  # type: ignore[attr-defined]


async def write_outbox(s: AsyncSession, ref: OrderRef, items: Iterable[OutboxItem]) -> None:
    """Add messages inside an open transaction; a key written before is left as it was."""
    now = utcnow()
    for item in items:
        values = {
            "order_id": order_number(ref),
            "key": item.key,
            "kind": item.kind,
            "payload": item.payload,
            "priority": item.priority,
            "created_at": now,
            "attempts": 0,
            "next_attempt_at": now,
            "permanent": False,
        }
        await s.exec(insert_ignoring(s, _outbox, values))


class OutboxStore(StoreBase):
    async def add_to_outbox(self, ref: OrderRef, items: Iterable[OutboxItem]) -> None:
        async with self.transaction() as s:
            await write_outbox(s, ref, items)

    async def claim_outbox(
        self, owner: str, *, limit: int = 20, claim_s: float = 60.0, now: datetime | None = None
    ) -> list[OutboxMessage]:
        """Due messages for `owner` to send: the oldest undelivered one of each order at most,
        so an order's messages go out in the order they were written.

        Claim times are the database's (`now` only for tests): a host whose clock runs ahead
        must not see a live claim of another process as expired, and send it a second time."""
        async with self.transaction() as s:
            return await self._claim_outbox(
                s, owner, limit=limit, claim_s=claim_s, now=now or await database_now(self, s)
            )

    async def _claim_outbox(
        self, s: AsyncSession, owner: str, *, limit: int, claim_s: float, now: datetime
    ) -> list[OutboxMessage]:
        earlier = aliased(OutboxMessage)
        waiting_behind = exists().where(
            col(earlier.order_id) == col(OutboxMessage.order_id),
            col(earlier.id) < col(OutboxMessage.id),
            col(earlier.sent_at).is_(None),
            col(earlier.permanent).is_(False),
        )
        query = (
            select(OutboxMessage)
            .where(
                col(OutboxMessage.sent_at).is_(None),
                col(OutboxMessage.permanent).is_(False),
                col(OutboxMessage.next_attempt_at) <= now,
                or_(
                    col(OutboxMessage.claimed_until).is_(None),
                    col(OutboxMessage.claimed_until) < now,
                ),
                ~waiting_behind,
            )
            .order_by(col(OutboxMessage.priority), col(OutboxMessage.id))
            .limit(limit)
        )
        query = self._for_update(query, skip_locked=True)
        rows = list((await s.exec(query)).all())
        until = now + timedelta(seconds=claim_s)
        for row in rows:
            row.claimed_by, row.claimed_until = owner, until
            row.attempts += 1
            s.add(row)
        return rows

    async def outbox_sent(self, message_id: int) -> None:
        async with self.transaction() as s:
            await s.exec(
                update(OutboxMessage)
                .where(col(OutboxMessage.id) == message_id)
                .values(
                    sent_at=await database_now(self, s),
                    claimed_by=None,
                    claimed_until=None,
                    error=None,
                )
            )

    async def outbox_retry(self, message_id: int, *, after_s: float, error: str) -> None:
        """Try again after `after_s` (the row's own back-off; other orders are not held up)."""
        async with self.transaction() as s:
            await s.exec(
                update(OutboxMessage)
                .where(col(OutboxMessage.id) == message_id)
                .values(
                    next_attempt_at=await database_now(self, s) + timedelta(seconds=after_s),
                    claimed_by=None,
                    claimed_until=None,
                    error=error[:500],
                )
            )

    async def outbox_failed(self, message_id: int, *, error: str, actor: str) -> None:
        """The message can never be delivered as it is: keep it, flag it, audit it."""
        async with self.transaction() as s:
            row = await s.get(OutboxMessage, message_id)
            if row is None or row.sent_at is not None:
                return
            row.permanent, row.error = True, error[:500]
            row.claimed_by = row.claimed_until = None
            s.add(row)
            await self._append_audit(
                s,
                format_order_id(row.order_id),
                actor=actor,
                kind="delivery_failed",
                data={"key": row.key, "kind": row.kind, "error": error},
            )

    async def outbox(self, ref: OrderRef) -> list[OutboxMessage]:
        query = (
            select(OutboxMessage)
            .where(OutboxMessage.order_id == order_number(ref))
            .order_by(col(OutboxMessage.id))
        )
        async with self._sessions() as s:
            return list((await s.exec(query)).all())

    async def undelivered(self) -> list[Undelivered]:
        """Every message not sent yet, oldest first (the permanent failures among them)."""
        query = (
            select(OutboxMessage)
            .where(col(OutboxMessage.sent_at).is_(None))
            .order_by(col(OutboxMessage.id))
        )
        async with self._sessions() as s:
            rows = (await s.exec(query)).all()
        return [
            Undelivered(
                order_id=format_order_id(r.order_id),
                key=r.key,
                kind=r.kind,
                attempts=r.attempts,
                error=r.error,
                permanent=r.permanent,
                created_at=as_utc(r.created_at) or r.created_at,
            )
            for r in rows
        ]

    # Health every process sees

    async def report_problem(self, name: str, problem: str) -> None:
        async with self.transaction() as s:
            existing = await s.get(ServiceHealth, name)
            if existing is None:
                s.add(ServiceHealth(name=name, problem=problem))
            elif existing.problem != problem:
                existing.problem = problem
                s.add(existing)

    async def clear_problem(self, name: str) -> None:
        async with self.transaction() as s:
            await s.exec(delete(ServiceHealth).where(col(ServiceHealth.name) == name))

    async def problem(self, name: str) -> str | None:
        async with self._sessions() as s:
            row = await s.get(ServiceHealth, name)
        return row.problem if row is not None else None


def outbox_figures_query() -> Any:
    """(unsent count, oldest created_at of those still being tried, permanent count) in one row."""
    pending = col(OutboxMessage.permanent).is_(False)
    return select(
        func.count(),
        func.min(case((pending, col(OutboxMessage.created_at)))),
        func.count(case((col(OutboxMessage.permanent).is_(True), 1))),
    ).where(col(OutboxMessage.sent_at).is_(None))

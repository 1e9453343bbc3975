"""What every part of the store shares: the engine and its transactions, reading an order row
(locked for update when asked), the one checked state change (`_move`) and the audit append
every change goes through in its own transaction.

The two databases lock differently, and only `_for_update` and `_serialise` know it: PostgreSQL
locks rows (FOR UPDATE, SKIP LOCKED) and takes advisory locks, while SQLite's BEGIN IMMEDIATE
(workers.db) already gives each writing transaction the whole database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Self, TypeVar

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.selectable import GenerativeSelect
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from workers.audit import (
    ALL_CHAINS,
    GENESIS_HASH,
    SCHEME_HMAC,
    AuditKey,
    ChainRecord,
    event_hash,
    head_mac,
)
from workers.config import Settings
from workers.db import create_engine, is_sqlite, reading, session_factory
from workers.errors import NotFound, StaleUpdate
from workers.models import AuditEvent, AuditHead, WorkOrderRow, utcnow
from workers.states import check_transition
from workers.store.transitions import record_transition
from workers.workorder import (
    Budget,
    Status,
    Verification,
    WorkOrder,
    format_order_id,
    parse_order_id,
)

OrderRef = str | int
_Query = TypeVar("_Query", bound=GenerativeSelect)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def order_number(ref: OrderRef) -> int:
    return ref if isinstance(ref, int) else parse_order_id(ref)


def row_to_order(row: WorkOrderRow) -> WorkOrder:
    assert row.id is not None
    return WorkOrder(
        id=format_order_id(row.id),
        title=row.title,
        requester=row.requester,
        team=row.team,
        channel=row.channel,
        thread_ts=row.thread_ts,
        goal=row.goal,
        context=row.context,
        deliverable=row.deliverable,
        acceptance_criteria=list(row.acceptance_criteria),
        budget=Budget.model_validate(row.budget),
        workload_class=row.workload_class,
        authority_policy=row.authority_policy,
        verification=Verification.model_validate(row.verification),
        escalation_contact=row.escalation_contact,
        deadline=as_utc(row.deadline),
        status=Status(row.status),
    )


class StoreBase:
    """Engine, transactions, locked reads, state changes and audit appends."""

    def __init__(self, engine: AsyncEngine, *, audit_key: AuditKey | None = None) -> None:
        self.engine = engine
        self._sessions = session_factory(reading(engine))  # reads: no write lock on SQLite
        self._writing = session_factory(engine)
        self._sqlite = is_sqlite(str(engine.url))
        self.audit_key = audit_key or AuditKey.unkeyed()

    @classmethod
    def from_url(cls, url: str, *, audit_key: AuditKey | None = None) -> Self:
        return cls(create_engine(url), audit_key=audit_key)

    @classmethod
    def for_settings(cls, settings: Settings) -> Self:
        """The store as a deployment configures it: its database and its audit key."""
        return cls.from_url(settings.database_url, audit_key=settings.audit_signing_key())

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self._writing() as session, session.begin():
            yield session

    async def ping(self) -> None:
        async with self._sessions() as session:
            await session.exec(select(1))

    async def _row(
        self, s: AsyncSession, ref: OrderRef, *, for_update: bool = False
    ) -> WorkOrderRow:
        number = order_number(ref)
        query = select(WorkOrderRow).where(WorkOrderRow.id == number)
        if for_update:
            query = self._for_update(query)
        row = (await s.exec(query)).first()
        if row is None:
            raise NotFound(f"{format_order_id(number)} does not exist")
        return row

    def _for_update(self, query: _Query, *, skip_locked: bool = False) -> _Query:
        """Lock the rows `query` selects until the transaction ends (PostgreSQL); `skip_locked`
        passes over rows another transaction holds. SQLite needs nothing: BEGIN IMMEDIATE holds
        the write lock already."""
        if self._sqlite:
            return query
        return query.with_for_update(skip_locked=skip_locked)

    async def _serialise(self, s: AsyncSession, key: str) -> None:
        """Make transactions that pass the same key take turns until they commit (a PostgreSQL
        advisory lock); SQLite's BEGIN IMMEDIATE already serialises writers."""
        if not self._sqlite:
            await s.exec(text("SELECT pg_advisory_xact_lock(hashtext(:key))").bindparams(key=key))  # type: ignore[call-overload]

    async def _move(
        self,
        s: AsyncSession,
        row: WorkOrderRow,
        target: Status,
        *,
        actor: str,
        reason: str,
        expected: Collection[Status] | None = None,
        audit: dict[str, Any] | None = None,
        **changes: Any,
    ) -> None:
        """Change a locked row's state inside an open transaction: checked against the table
        (and `expected`), compare-and-set on the version, audited, and copied to `transitions`."""
        assert row.id is not None
        order_id = format_order_id(row.id)
        source = Status(row.status)
        check_transition(order_id, source, target, actor=actor, reason=reason, expected=expected)
        before = {"wait_reason": row.wait_reason, "waiting_since": row.waiting_since}
        result = await s.exec(
            update(WorkOrderRow)
            .where(col(WorkOrderRow.id) == row.id, col(WorkOrderRow.version) == row.version)
            .values(status=target.value, version=row.version + 1, updated_at=utcnow(), **changes)
        )
        if result.rowcount != 1:
            raise StaleUpdate(order_id)
        data = {"from": source.value, "to": target.value, "reason": reason, **(audit or {})}
        event = await self._append_audit(s, order_id, actor=actor, kind="transition", data=data)
        # The metrics' narrow copy of the change, in the same transaction (workers.store.transitions).
        await record_transition(
            s,
            row,
            source,
            target,
            seq=event.seq,
            at=event.at,
            actor=actor,
            audit=data,
            before=before,
        )
        await s.refresh(row)

    async def _append_audit(
        self, s: AsyncSession, chain: str, *, actor: str, kind: str, data: dict[str, Any]
    ) -> ChainRecord:
        await self._serialise(s, chain)  # one append at a time per chain
        last = (
            await s.exec(
                select(AuditEvent)
                .where(AuditEvent.chain == chain)
                .order_by(col(AuditEvent.seq).desc())
                .limit(1)
            )
        ).first()
        seq = (last.seq + 1) if last else 1
        prev_hash = last.hash if last else GENESIS_HASH
        at = utcnow()
        digest = event_hash(
            chain=chain,
            seq=seq,
            at=at,
            actor=actor,
            kind=kind,
            data=data,
            prev_hash=prev_hash,
            key=self.audit_key,
            scheme=SCHEME_HMAC,
        )
        event = AuditEvent(
            chain=chain,
            seq=seq,
            at=at,
            actor=actor,
            kind=kind,
            data=data,
            prev_hash=prev_hash,
            hash=digest,
            scheme=SCHEME_HMAC,
        )
        s.add(event)
        await self._anchor(s, chain, count=seq, last_hash=digest)
        await s.flush()
        return _record(event)

    async def _anchor(self, s: AsyncSession, chain: str, *, count: int, last_hash: str) -> None:
        """Move the chain's head, and the total over all chains, to include the new event.

        A chain anchored for the first time may hold events from before anchoring; the total
        grows by all of them, so that it always equals the sum of the heads."""
        key = self.audit_key
        head = await s.get(AuditHead, chain)
        grew = count - (head.count if head is not None else 0)
        if head is None:
            head = AuditHead(chain=chain, count=count, last_hash=last_hash, mac="")
        head.count, head.last_hash = count, last_hash
        head.mac = head_mac(key, chain, count, last_hash)
        s.add(head)
        await self._serialise(s, ALL_CHAINS)  # the total is one row every append updates
        total = await s.get(AuditHead, ALL_CHAINS, populate_existing=True)
        if total is None:
            total = AuditHead(chain=ALL_CHAINS, count=0, last_hash="", mac="")
        total.count += grew
        total.mac = head_mac(key, ALL_CHAINS, total.count, "")
        s.add(total)


def _record(e: AuditEvent) -> ChainRecord:
    assert e.id is not None
    return ChainRecord(
        id=e.id,
        chain=e.chain,
        seq=e.seq,
        at=as_utc(e.at) or e.at,
        actor=e.actor,
        kind=e.kind,
        data=dict(e.data),
        prev_hash=e.prev_hash,
        hash=e.hash,
        scheme=e.scheme,
    )

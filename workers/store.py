"""The one place that reads and writes the database. Every state change is audited in the same
transaction as the change itself, so the trail cannot miss a step that happened."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from workers.audit import (
    GENESIS_HASH,
    SYSTEM_CHAIN,
    ChainBreak,
    ChainRecord,
    event_hash,
    verify_chain,
)
from workers.db import create_engine, is_sqlite, session_factory
from workers.errors import NotFound, StaleUpdate
from workers.models import (
    AuditEvent,
    LlmCall,
    RunAttempt,
    SlackEventSeen,
    SlackMessage,
    ThreadMessage,
    ToolCall,
    WorkOrderRow,
    utcnow,
)
from workers.states import check_transition
from workers.workorder import (
    Budget,
    Status,
    Verification,
    WorkOrder,
    format_order_id,
    parse_order_id,
)

OrderRef = str | int

# Fields a requester may edit on an order; status and counters change only through the engine.
EDITABLE_FIELDS = frozenset(
    {
        "title",
        "goal",
        "context",
        "deliverable",
        "acceptance_criteria",
        "budget",
        "workload_class",
        "authority_policy",
        "verification",
        "escalation_contact",
        "deadline",
        "team",
    }
)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _order_number(ref: OrderRef) -> int:
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


def _order_columns(order: WorkOrder, fields: frozenset[str] | set[str]) -> dict[str, Any]:
    dumped = order.model_dump(mode="json", include=set(fields))
    if "deadline" in fields:
        dumped["deadline"] = order.deadline
    return dumped


class Store:
    """Async data access for work orders, runs, spend, Slack bookkeeping and the audit trail."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = session_factory(engine)
        self._sqlite = is_sqlite(str(engine.url))

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(create_engine(url))

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session, session.begin():
            yield session

    async def ping(self) -> None:
        async with self._sessions() as session:
            await session.exec(select(1))

    # Work orders

    async def create_order(self, order: WorkOrder, *, actor: str) -> WorkOrder:
        columns = _order_columns(order, EDITABLE_FIELDS | {"requester", "channel", "thread_ts"})
        async with self.transaction() as s:
            row = WorkOrderRow(**columns, status=order.status.value)
            s.add(row)
            await s.flush()
            created = row_to_order(row)
            await self._append_audit(
                s,
                created.id or "",
                actor=actor,
                kind="created",
                data={"order": created.model_dump(mode="json", exclude={"id"})},
            )
        return created

    async def get_order(self, ref: OrderRef) -> WorkOrder:
        async with self._sessions() as s:
            return row_to_order(await self._row(s, ref))

    async def get_row(self, ref: OrderRef) -> WorkOrderRow:
        async with self._sessions() as s:
            return await self._row(s, ref)

    async def list_orders(
        self,
        *,
        requester: str | None = None,
        statuses: Sequence[Status] | None = None,
        limit: int = 100,
    ) -> list[WorkOrder]:
        query = select(WorkOrderRow).order_by(col(WorkOrderRow.id).desc()).limit(limit)
        if requester:
            query = query.where(WorkOrderRow.requester == requester)
        if statuses:
            query = query.where(col(WorkOrderRow.status).in_([s.value for s in statuses]))
        async with self._sessions() as s:
            return [row_to_order(r) for r in (await s.exec(query)).all()]

    async def update_order(
        self, ref: OrderRef, *, actor: str, reason: str = "edited", **fields: Any
    ) -> WorkOrder:
        """Change editable fields, validating the result as a whole before anything is written."""
        unknown = set(fields) - EDITABLE_FIELDS
        if unknown:
            raise ValueError(f"not editable: {', '.join(sorted(unknown))}")
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            current = row_to_order(row)
            updated = WorkOrder.model_validate({**current.model_dump(), **fields})
            before = current.model_dump(mode="json", include=set(fields))
            after = updated.model_dump(mode="json", include=set(fields))
            changed = {
                k: {"from": before[k], "to": after[k]} for k in fields if before[k] != after[k]
            }
            if not changed:
                return current
            for key, value in _order_columns(updated, set(changed)).items():
                setattr(row, key, value)
            row.version += 1
            row.updated_at = utcnow()
            s.add(row)
            await self._append_audit(
                s,
                current.id or "",
                actor=actor,
                kind="edited",
                data={"reason": reason, "changes": changed},
            )
        return updated

    async def transition(
        self, ref: OrderRef, target: Status, *, actor: str, reason: str, **changes: Any
    ) -> WorkOrder:
        """Move an order to `target` if its state machine allows it, atomically across processes.

        `changes` are extra columns set in the same update (lease, counters, availability).
        Raises IllegalTransition if the order is no longer in a state that leads to `target`.
        """
        for _ in range(3):
            try:
                return await self._transition_once(
                    ref, target, actor=actor, reason=reason, **changes
                )
            except StaleUpdate:
                continue
        raise StaleUpdate(f"{ref}: kept changing while moving it to {target.value}")

    async def _transition_once(
        self, ref: OrderRef, target: Status, *, actor: str, reason: str, **changes: Any
    ) -> WorkOrder:
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            order_id = format_order_id(_order_number(ref))
            source = Status(row.status)
            check_transition(order_id, source, target, actor=actor, reason=reason)
            result = await s.exec(
                update(WorkOrderRow)
                .where(col(WorkOrderRow.id) == row.id, col(WorkOrderRow.version) == row.version)
                .values(
                    status=target.value, version=row.version + 1, updated_at=utcnow(), **changes
                )
            )
            if result.rowcount != 1:
                raise StaleUpdate(order_id)
            await self._append_audit(
                s,
                order_id,
                actor=actor,
                kind="transition",
                data={"from": source.value, "to": target.value, "reason": reason},
            )
            await s.refresh(row)
            return row_to_order(row)

    async def _row(
        self, s: AsyncSession, ref: OrderRef, *, for_update: bool = False
    ) -> WorkOrderRow:
        number = _order_number(ref)
        query = select(WorkOrderRow).where(WorkOrderRow.id == number)
        if for_update and not self._sqlite:
            query = query.with_for_update()
        row = (await s.exec(query)).first()
        if row is None:
            raise NotFound(f"{format_order_id(number)} does not exist")
        return row

    # Runs, model calls and tool calls

    async def start_attempt(self, ref: OrderRef, *, worker_id: str) -> RunAttempt:
        number = _order_number(ref)
        async with self.transaction() as s:
            last = (
                await s.exec(
                    select(func.max(RunAttempt.number)).where(RunAttempt.order_id == number)
                )
            ).one()
            attempt = RunAttempt(order_id=number, number=(last or 0) + 1, worker_id=worker_id)
            s.add(attempt)
            await s.flush()
            await self._append_audit(
                s,
                format_order_id(number),
                actor=worker_id,
                kind="attempt_started",
                data={"attempt": attempt.number},
            )
        return attempt

    async def save_checkpoint(
        self, attempt_id: int, messages: list[dict[str, Any]], step: int
    ) -> None:
        async with self.transaction() as s:
            attempt = await s.get(RunAttempt, attempt_id)
            if attempt is None:
                raise NotFound(f"run attempt {attempt_id} does not exist")
            attempt.checkpoint = messages
            attempt.step = step
            attempt.checkpoint_at = utcnow()
            s.add(attempt)

    async def latest_checkpoint(self, ref: OrderRef) -> RunAttempt | None:
        """The most recent attempt that saved a checkpoint, to resume from."""
        query = (
            select(RunAttempt)
            .where(
                RunAttempt.order_id == _order_number(ref),
                col(RunAttempt.checkpoint_at).is_not(None),
            )
            .order_by(col(RunAttempt.number).desc())
            .limit(1)
        )
        async with self._sessions() as s:
            return (await s.exec(query)).first()

    async def attempts(self, ref: OrderRef) -> list[RunAttempt]:
        query = (
            select(RunAttempt)
            .where(RunAttempt.order_id == _order_number(ref))
            .order_by(col(RunAttempt.number))
        )
        async with self._sessions() as s:
            return list((await s.exec(query)).all())

    async def record_llm_call(self, call: LlmCall) -> LlmCall:
        async with self.transaction() as s:
            s.add(call)
        return call

    async def llm_calls(self, ref: OrderRef) -> list[LlmCall]:
        query = (
            select(LlmCall).where(LlmCall.order_id == _order_number(ref)).order_by(col(LlmCall.id))
        )
        async with self._sessions() as s:
            return list((await s.exec(query)).all())

    async def record_tool_call(self, call: ToolCall) -> ToolCall:
        async with self.transaction() as s:
            s.add(call)
        return call

    async def tool_calls(self, ref: OrderRef) -> list[ToolCall]:
        query = (
            select(ToolCall)
            .where(ToolCall.order_id == _order_number(ref))
            .order_by(col(ToolCall.id))
        )
        async with self._sessions() as s:
            return list((await s.exec(query)).all())

    # Slack bookkeeping

    async def mark_event_seen(self, event_id: str, *, kind: str = "") -> bool:
        """Record an inbound delivery; False if any process has recorded it before."""
        try:
            async with self.transaction() as s:
                s.add(SlackEventSeen(event_id=event_id, kind=kind))
        except IntegrityError:
            return False
        return True

    async def slack_message(self, key: str) -> SlackMessage | None:
        async with self._sessions() as s:
            return (await s.exec(select(SlackMessage).where(SlackMessage.key == key))).first()

    async def save_slack_message(
        self, *, key: str, purpose: str, channel: str, ts: str, order: OrderRef | None = None
    ) -> SlackMessage:
        """Remember a posted message under its idempotency key (insert, or update its ts)."""
        order_id = _order_number(order) if order is not None else None
        async with self.transaction() as s:
            existing = (await s.exec(select(SlackMessage).where(SlackMessage.key == key))).first()
            if existing is None:
                existing = SlackMessage(
                    key=key, purpose=purpose, channel=channel, ts=ts, order_id=order_id
                )
            else:
                existing.channel, existing.ts, existing.updated_at = channel, ts, utcnow()
            s.add(existing)
        return existing

    async def record_thread_message(
        self,
        *,
        channel: str,
        thread_ts: str,
        ts: str,
        text: str,
        user: str | None = None,
        bot_id: str | None = None,
    ) -> bool:
        """Remember a message seen in a thread; False if it was already stored."""
        try:
            async with self.transaction() as s:
                s.add(
                    ThreadMessage(
                        channel=channel,
                        thread_ts=thread_ts,
                        ts=ts,
                        text=text,
                        user=user,
                        bot_id=bot_id,
                    )
                )
        except IntegrityError:
            return False
        return True

    async def thread_messages(self, channel: str, thread_ts: str) -> list[ThreadMessage]:
        query = (
            select(ThreadMessage)
            .where(ThreadMessage.channel == channel, ThreadMessage.thread_ts == thread_ts)
            .order_by(col(ThreadMessage.ts))
        )
        async with self._sessions() as s:
            return list((await s.exec(query)).all())

    # Audit trail

    async def audit(
        self, chain: str, *, actor: str, kind: str, data: dict[str, Any] | None = None
    ) -> ChainRecord:
        async with self.transaction() as s:
            return await self._append_audit(s, chain, actor=actor, kind=kind, data=data or {})

    async def _append_audit(
        self, s: AsyncSession, chain: str, *, actor: str, kind: str, data: dict[str, Any]
    ) -> ChainRecord:
        if not self._sqlite:
            # Serialise appends per chain; SQLite's BEGIN IMMEDIATE already serialises writers.
            await s.exec(
                text("SELECT pg_advisory_xact_lock(hashtext(:chain))").bindparams(chain=chain)
            )  # type: ignore[call-overload]
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
            chain=chain, seq=seq, at=at, actor=actor, kind=kind, data=data, prev_hash=prev_hash
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
        )
        s.add(event)
        await s.flush()
        return _record(event)

    async def audit_trail(self, chain: str) -> list[ChainRecord]:
        query = select(AuditEvent).where(AuditEvent.chain == chain).order_by(col(AuditEvent.seq))
        async with self._sessions() as s:
            return [_record(e) for e in (await s.exec(query)).all()]

    async def audit_chains(self) -> list[str]:
        async with self._sessions() as s:
            chains = (await s.exec(select(AuditEvent.chain).distinct())).all()
        return sorted(chains, key=_chain_sort_key)

    async def verify_audit(self) -> tuple[int, list[ChainBreak]]:
        """Verify every chain; return how many events were checked and each chain's first break."""
        checked = 0
        breaks: list[ChainBreak] = []
        for chain in await self.audit_chains():
            records = await self.audit_trail(chain)
            checked += len(records)
            broken = verify_chain(records)
            if broken:
                breaks.append(broken)
        return checked, breaks


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
    )


def _chain_sort_key(chain: str) -> tuple[int, int, str]:
    if chain == SYSTEM_CHAIN:
        return (0, 0, chain)
    try:
        return (1, parse_order_id(chain), chain)
    except ValueError:
        return (2, 0, chain)

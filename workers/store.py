"""The one place that reads and writes the database. Every state change is audited in the same
transaction as the change itself, so the trail cannot miss a step that happened."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import func, or_, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
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
from workers.budget import CallPlan, Headroom, usd_to_micro
from workers.db import create_engine, is_sqlite, session_factory
from workers.errors import NotFound, StaleUpdate
from workers.models import (
    AuditEvent,
    Deliverable,
    IntakeSession,
    LlmCall,
    RunAttempt,
    SlackEventSeen,
    SlackMessage,
    TeamSpend,
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

if TYPE_CHECKING:
    from workers.providers.base import Usage

OrderRef = str | int
_PerOrder = TypeVar("_PerOrder", RunAttempt, LlmCall, ToolCall, Deliverable)

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
        statuses: Collection[Status] | None = None,
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
        self,
        ref: OrderRef,
        target: Status,
        *,
        actor: str,
        reason: str,
        expected: Collection[Status] | None = None,
        **changes: Any,
    ) -> WorkOrder:
        """Move an order to `target` if its state machine allows it, atomically across processes.

        `expected` are the states the caller saw the order in; they are checked under the row
        lock, together with the transition table, so a change made in between is refused.
        `changes` are extra columns set in the same update (lease, counters, availability).
        Raises IllegalTransition if the order is no longer in a state that leads to `target`.
        """
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            await self._move(
                s, row, target, actor=actor, reason=reason, expected=expected, **changes
            )
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

    async def _of_order(
        self, table: type[_PerOrder], ref: OrderRef, order_by: Any
    ) -> list[_PerOrder]:
        """An order's rows of one table (attempts, calls, deliverables), in `order_by` order."""
        query = select(table).where(table.order_id == _order_number(ref)).order_by(order_by)
        async with self._sessions() as s:
            return list((await s.exec(query)).all())

    async def attempts(self, ref: OrderRef) -> list[RunAttempt]:
        return await self._of_order(RunAttempt, ref, col(RunAttempt.number))

    async def record_llm_call(self, call: LlmCall) -> LlmCall:
        async with self.transaction() as s:
            s.add(call)
        return call

    async def llm_calls(self, ref: OrderRef) -> list[LlmCall]:
        return await self._of_order(LlmCall, ref, col(LlmCall.id))

    async def record_tool_call(self, call: ToolCall) -> ToolCall:
        async with self.transaction() as s:
            s.add(call)
        return call

    async def tool_calls(self, ref: OrderRef) -> list[ToolCall]:
        return await self._of_order(ToolCall, ref, col(ToolCall.id))

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

    # Intake dialogue

    async def open_intake(
        self, *, channel: str, thread_ts: str, requester: str, surface: str = "slack"
    ) -> tuple[IntakeSession, bool]:
        """The dialogue in this thread, creating it if needed; True if it was created now."""
        existing = await self.intake_session(channel, thread_ts)
        if existing is not None:
            return existing, False
        try:
            async with self.transaction() as s:
                session = IntakeSession(
                    channel=channel, thread_ts=thread_ts, requester=requester, surface=surface
                )
                s.add(session)
        except IntegrityError:  # another process opened it a moment ago
            again = await self.intake_session(channel, thread_ts)
            assert again is not None
            return again, False
        return session, True

    async def intake_session(self, channel: str, thread_ts: str) -> IntakeSession | None:
        query = select(IntakeSession).where(
            IntakeSession.channel == channel, IntakeSession.thread_ts == thread_ts
        )
        async with self._sessions() as s:
            return (await s.exec(query)).first()

    async def intake_for_order(self, ref: OrderRef) -> IntakeSession | None:
        query = select(IntakeSession).where(IntakeSession.order_id == _order_number(ref))
        async with self._sessions() as s:
            return (await s.exec(query)).first()

    async def save_intake(self, session: IntakeSession) -> IntakeSession:
        session.updated_at = utcnow()
        async with self.transaction() as s:
            merged = await s.merge(session)
        return merged

    async def count_intake(self, *, kind: str, since: datetime | None = None) -> int:
        query = select(func.count()).select_from(IntakeSession).where(IntakeSession.kind == kind)
        if since is not None:
            query = query.where(col(IntakeSession.created_at) >= since)
        async with self._sessions() as s:
            return int((await s.exec(query)).one())

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

    # Engine: queue, leases and spend. workers.queue, workers.budget and workers.runtime call
    # these; each is one transaction, and locks rows in one order (work order, then its LLM
    # calls, then the team's quota week) so that concurrent workers cannot deadlock.

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
        (and `expected`), compare-and-set on the version, audited."""
        assert row.id is not None
        order_id = format_order_id(row.id)
        source = Status(row.status)
        check_transition(order_id, source, target, actor=actor, reason=reason, expected=expected)
        result = await s.exec(
            update(WorkOrderRow)
            .where(col(WorkOrderRow.id) == row.id, col(WorkOrderRow.version) == row.version)
            .values(status=target.value, version=row.version + 1, updated_at=utcnow(), **changes)
        )
        if result.rowcount != 1:
            raise StaleUpdate(order_id)
        data = {"from": source.value, "to": target.value, "reason": reason, **(audit or {})}
        await self._append_audit(s, order_id, actor=actor, kind="transition", data=data)
        await s.refresh(row)

    async def enqueue(
        self,
        ref: OrderRef,
        *,
        priority: int,
        actor: str,
        reason: str,
        now: datetime | None = None,
    ) -> WorkOrder:
        """Put an order in the queue (Start, Retry, Extend, rework), clearing run bookkeeping."""
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            await self._requeue(s, row, priority=priority, actor=actor, reason=reason, now=now)
            return row_to_order(row)

    async def _requeue(
        self,
        s: AsyncSession,
        row: WorkOrderRow,
        *,
        priority: int,
        actor: str,
        reason: str,
        now: datetime | None = None,
        **changes: Any,
    ) -> None:
        """Move to queued inside an open transaction, clearing lease, wait and exception state."""
        await self._move(
            s,
            row,
            Status.QUEUED,
            actor=actor,
            reason=reason,
            priority=priority,
            available_at=now or utcnow(),
            lease_owner=None,
            lease_expires_at=None,
            wait_reason=None,
            waiting_since=None,
            lost_leases=0,
            exception_kind=None,
            exception_message=None,
            **changes,
        )

    async def claim(
        self,
        worker_id: str,
        *,
        lease_ttl_s: float,
        gate: QueueGate,
        now: datetime | None = None,
        scan: int = 200,
    ) -> Claim:
        """Take the first queued order the gate lets through and lease it to `worker_id`.

        Candidates are taken in priority order, then oldest first. PostgreSQL locks each with
        FOR UPDATE SKIP LOCKED, so concurrent workers walk past each other's rows; on SQLite
        the claim is one BEGIN IMMEDIATE transaction whose update is conditional on the row's
        version. Candidates held back by quota or per-user limits get their wait reason
        recorded (and reported once, when it changes).
        """
        now = now or utcnow()
        claim = Claim()
        due = (
            WorkOrderRow.status == Status.QUEUED.value,
            or_(col(WorkOrderRow.available_at).is_(None), col(WorkOrderRow.available_at) <= now),
        )
        candidates = (
            select(WorkOrderRow.id)
            .where(*due)
            .order_by(col(WorkOrderRow.priority), col(WorkOrderRow.id))
            .limit(scan)
        )
        async with self.transaction() as s:
            team_left: dict[str, tuple[int, int]] = {}
            for candidate in (await s.exec(candidates)).all():
                # Lock one candidate at a time and skip those another claimer holds, so that
                # concurrent workers pass each other instead of queueing on the same rows.
                one = select(WorkOrderRow).where(WorkOrderRow.id == candidate, *due)
                if not self._sqlite:
                    one = one.with_for_update(skip_locked=True)
                row = (await s.exec(one.execution_options(populate_existing=True))).first()
                if row is None:
                    continue
                reason = await self._held_back(s, row, gate, team_left)
                if reason is None:
                    claim.attempt = await self._start_run(s, row, worker_id, now, lease_ttl_s)
                    claim.order = row_to_order(row)
                    claim.elapsed_ms = row.elapsed_ms
                    break
                since = as_utc(row.waiting_since) or now
                if gate.max_wait_s is not None and (now - since).total_seconds() > gate.max_wait_s:
                    await self._move(
                        s,
                        row,
                        Status.EXCEPTION,
                        actor=worker_id,
                        reason=f"waited too long: {reason}",
                        audit={"kind": "quota"},
                        exception_kind="quota",
                        exception_message=reason,
                        wait_reason=None,
                    )
                    claim.expired.append(row_to_order(row))
                elif row.wait_reason != reason:
                    await s.exec(
                        update(WorkOrderRow)
                        .where(col(WorkOrderRow.id) == row.id)
                        .values(wait_reason=reason, waiting_since=since)
                    )
                    claim.waiting.append((row_to_order(row), reason))
        return claim

    async def _held_back(
        self,
        s: AsyncSession,
        row: WorkOrderRow,
        gate: QueueGate,
        team_left: dict[str, tuple[int, int]],
    ) -> str | None:
        """Why this order may not start now, or None."""
        if row.team not in team_left:
            spend = (
                await s.exec(
                    select(TeamSpend).where(TeamSpend.team == row.team, TeamSpend.week == gate.week)
                )
            ).first()
            quota = gate.quota_micro_usd(row.team)
            used = 0
            if spend is not None:
                quota = spend.quota_micro_usd if spend.quota_micro_usd is not None else quota
                used = spend.spent_micro_usd + spend.reserved_micro_usd
            team_left[row.team] = (used, quota)
        used, quota = team_left[row.team]
        if quota - used < gate.headroom_micro_usd:
            return (
                f"waiting for team quota: team {row.team} has used ${used / 1e6:.2f} of its "
                f"${quota / 1e6:.2f} weekly quota"
            )
        if not self._sqlite:
            # Serialise the per-user count across claimers, so two cannot both see a free slot.
            await s.exec(
                text("SELECT pg_advisory_xact_lock(hashtext(:key))").bindparams(
                    key=f"runs:{row.requester}"
                )
            )  # type: ignore[call-overload]
        running = (
            await s.exec(
                select(func.count())
                .select_from(WorkOrderRow)
                .where(
                    WorkOrderRow.requester == row.requester,
                    WorkOrderRow.status == Status.RUNNING.value,
                )
            )
        ).one()
        limit = gate.max_runs_per_user(row.team)
        if running >= limit:
            return (
                f"waiting for a free slot: <@{row.requester}> already has {running} "
                f"run{'s' if running != 1 else ''} going (limit {limit})"
            )
        return None

    async def _start_run(
        self, s: AsyncSession, row: WorkOrderRow, worker_id: str, now: datetime, ttl_s: float
    ) -> RunAttempt:
        await self._move(
            s,
            row,
            Status.RUNNING,
            actor=worker_id,
            reason="claimed by a worker",
            lease_owner=worker_id,
            lease_expires_at=now + timedelta(seconds=ttl_s),
            attempts=row.attempts + 1,
            wait_reason=None,
            waiting_since=None,
        )
        last = (
            await s.exec(select(func.max(RunAttempt.number)).where(RunAttempt.order_id == row.id))
        ).one()
        assert row.id is not None
        attempt = RunAttempt(order_id=row.id, number=(last or 0) + 1, worker_id=worker_id)
        s.add(attempt)
        await s.flush()
        await self._append_audit(
            s,
            format_order_id(row.id),
            actor=worker_id,
            kind="attempt_started",
            data={"attempt": attempt.number},
        )
        return attempt

    async def renew_lease(
        self, ref: OrderRef, worker_id: str, *, lease_ttl_s: float, now: datetime | None = None
    ) -> bool:
        """Extend the lease; False if this worker no longer holds a running order's lease."""
        until = (now or utcnow()) + timedelta(seconds=lease_ttl_s)
        async with self.transaction() as s:
            result = await s.exec(
                update(WorkOrderRow)
                .where(
                    col(WorkOrderRow.id) == _order_number(ref),
                    col(WorkOrderRow.lease_owner) == worker_id,
                    col(WorkOrderRow.status) == Status.RUNNING.value,
                )
                .values(lease_expires_at=until)
            )
            return result.rowcount == 1

    async def holds_lease(self, ref: OrderRef, worker_id: str) -> bool:
        """Whether the order is still running under this worker's lease (a cheap read)."""
        query = select(WorkOrderRow.status, WorkOrderRow.lease_owner).where(
            WorkOrderRow.id == _order_number(ref)
        )
        async with self._sessions() as s:
            found = (await s.exec(query)).first()
        return found is not None and tuple(found) == (Status.RUNNING.value, worker_id)

    async def finish_run(
        self,
        ref: OrderRef,
        worker_id: str,
        target: Status,
        *,
        reason: str,
        attempt_id: int | None = None,
        outcome: str | None = None,
        audit: dict[str, Any] | None = None,
        **changes: Any,
    ) -> WorkOrder | None:
        """Leave the running state and give up the lease; None if the lease was no longer ours."""
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            if row.status != Status.RUNNING.value or row.lease_owner != worker_id:
                if attempt_id is not None:
                    await self._end_attempt(s, attempt_id, outcome or "lost")
                return None
            await self._move(
                s,
                row,
                target,
                actor=worker_id,
                reason=reason,
                audit=audit,
                lease_owner=None,
                lease_expires_at=None,
                **changes,
            )
            if attempt_id is not None:
                await self._end_attempt(s, attempt_id, outcome or target.value)
            return row_to_order(row)

    async def end_attempt(self, attempt_id: int, outcome: str) -> None:
        async with self.transaction() as s:
            await self._end_attempt(s, attempt_id, outcome)

    async def _end_attempt(self, s: AsyncSession, attempt_id: int, outcome: str) -> None:
        await s.exec(
            update(RunAttempt)
            .where(col(RunAttempt.id) == attempt_id, col(RunAttempt.ended_at).is_(None))
            .values(ended_at=utcnow(), outcome=outcome)
        )

    async def reap_expired(
        self, *, max_lost: int, actor: str = "reaper", now: datetime | None = None
    ) -> list[WorkOrder]:
        """Recover runs whose worker stopped renewing its lease (killed, frozen, partitioned).

        In-flight model calls of the dead attempt are charged their reserved worst case; the
        order goes back to the queue, or to exception ("crashed") after `max_lost` lost leases.
        """
        now = now or utcnow()
        query = (
            select(WorkOrderRow)
            .where(
                WorkOrderRow.status == Status.RUNNING.value,
                col(WorkOrderRow.lease_expires_at) < now,
            )
            .order_by(col(WorkOrderRow.id))
            .limit(20)
        )
        if not self._sqlite:
            query = query.with_for_update(skip_locked=True)
        reaped: list[WorkOrder] = []
        async with self.transaction() as s:
            for row in (await s.exec(query)).all():
                await self._settle_pending(s, row, outcome="interrupted")
                await s.exec(
                    update(RunAttempt)
                    .where(col(RunAttempt.order_id) == row.id, col(RunAttempt.ended_at).is_(None))
                    .values(ended_at=now, outcome="lost")
                )
                lost = row.lost_leases + 1
                owner = row.lease_owner
                common: dict[str, Any] = {
                    "lease_owner": None,
                    "lease_expires_at": None,
                    "lost_leases": lost,
                }
                if lost >= max_lost:
                    message = (
                        f"the run stopped responding {lost} time{'s' if lost != 1 else ''} "
                        f"(last worker: {owner})"
                    )
                    await self._move(
                        s,
                        row,
                        Status.EXCEPTION,
                        actor=actor,
                        reason=message,
                        audit={"kind": "crashed"},
                        exception_kind="crashed",
                        exception_message=message,
                        **common,
                    )
                else:
                    await self._move(
                        s,
                        row,
                        Status.QUEUED,
                        actor=actor,
                        reason=f"lease of {owner} expired; resuming from the last checkpoint",
                        available_at=None,
                        **common,
                    )
                reaped.append(row_to_order(row))
        return reaped

    async def save_run_checkpoint(
        self,
        attempt_id: int,
        *,
        messages: list[dict[str, Any]],
        step: int,
        elapsed_ms: int,
        consumed_inbox: int = 0,
    ) -> None:
        """Save the agent's history after a step, with the running time and the inbox it read."""
        async with self.transaction() as s:
            attempt = await s.get(RunAttempt, attempt_id)
            if attempt is None:
                raise NotFound(f"run attempt {attempt_id} does not exist")
            row = await self._row(s, attempt.order_id, for_update=True)
            attempt.checkpoint = messages
            attempt.step = step
            attempt.checkpoint_at = utcnow()
            s.add(attempt)
            values: dict[str, Any] = {"elapsed_ms": elapsed_ms}
            if consumed_inbox:
                values["inbox"] = list(row.inbox or [])[consumed_inbox:]
            await s.exec(
                update(WorkOrderRow).where(col(WorkOrderRow.id) == row.id).values(**values)
            )

    async def add_to_inbox(
        self,
        ref: OrderRef,
        item: dict[str, Any],
        *,
        actor: str,
        resume: bool = True,
        now: datetime | None = None,
    ) -> WorkOrder:
        """Leave a message for the run; a run parked waiting for the requester is requeued."""
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            inbox = [*list(row.inbox or []), item]
            if resume and row.status == Status.WAITING_FOR_REQUESTER.value:
                await self._move(
                    s,
                    row,
                    Status.QUEUED,
                    actor=actor,
                    reason="the requester replied",
                    inbox=inbox,
                    available_at=now or utcnow(),
                )
            else:
                await s.exec(
                    update(WorkOrderRow).where(col(WorkOrderRow.id) == row.id).values(inbox=inbox)
                )
                await s.refresh(row)
                assert row.id is not None
                await self._append_audit(
                    s,
                    format_order_id(row.id),
                    actor=actor,
                    kind="inbox",
                    data={"item": item},
                )
            return row_to_order(row)

    async def _team_week(self, s: AsyncSession, team: str, week: str) -> TeamSpend:
        """The team's row for the week, created if missing and locked for update."""
        insert = sqlite_insert if self._sqlite else pg_insert
        await s.exec(
            insert(TeamSpend)
            .values(team=team, week=week, spent_micro_usd=0, reserved_micro_usd=0)
            .on_conflict_do_nothing()
        )
        query = select(TeamSpend).where(TeamSpend.team == team, TeamSpend.week == week)
        if not self._sqlite:
            query = query.with_for_update()
        spend = (await s.exec(query.execution_options(populate_existing=True))).one()
        return spend

    async def reserve_spend(
        self,
        ref: OrderRef,
        *,
        team: str,
        week: str,
        quota_micro_usd: int,
        plan: Callable[[Headroom], CallPlan],
        call: LlmCall,
    ) -> tuple[LlmCall, CallPlan]:
        """Hold back a call's worst case against the order and the team's week, atomically.

        `plan` sees the headroom under the locks and returns what to reserve (or raises
        BudgetExceeded, which rolls everything back). The call is recorded as pending.
        """
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            spend = await self._team_week(s, team, week)
            budget = Budget.model_validate(row.budget)
            quota = spend.quota_micro_usd if spend.quota_micro_usd is not None else quota_micro_usd
            headroom = Headroom(
                order_micro_usd=usd_to_micro(budget.max_usd)
                - row.spent_micro_usd
                - row.reserved_micro_usd,
                team_micro_usd=quota - spend.spent_micro_usd - spend.reserved_micro_usd,
                tokens=budget.max_tokens - row.spent_tokens - row.reserved_tokens,
                model_calls=budget.max_model_calls - row.model_calls,
            )
            chosen = plan(headroom)
            await s.exec(
                update(WorkOrderRow)
                .where(col(WorkOrderRow.id) == row.id)
                .values(
                    reserved_micro_usd=WorkOrderRow.reserved_micro_usd + chosen.reserve_micro_usd,
                    reserved_tokens=WorkOrderRow.reserved_tokens + chosen.reserve_tokens,
                    model_calls=WorkOrderRow.model_calls + 1,
                )
            )
            await s.exec(
                update(TeamSpend)
                .where(col(TeamSpend.id) == spend.id)
                .values(reserved_micro_usd=TeamSpend.reserved_micro_usd + chosen.reserve_micro_usd)
            )
            call.order_id = row.id
            call.reserved_micro_usd = chosen.reserve_micro_usd
            call.reserved_tokens = chosen.reserve_tokens
            call.team = team
            call.quota_week = week
            call.outcome = "pending"
            s.add(call)
            await s.flush()
        return call, chosen

    async def settle_spend(
        self,
        call_id: int,
        *,
        cost_micro_usd: int,
        tokens: int,
        usage: Usage | None,
        outcome: str,
        latency_ms: int,
        provider: str | None = None,
        model: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Swap a pending call's reservation for its actual cost; False if already settled.

        `usage` None means unknown (the call was cut off): the cost given is the worst case."""
        async with self._sessions() as s:
            found = await s.get(LlmCall, call_id)
        if found is None or found.outcome != "pending" or found.order_id is None:
            return False
        async with self.transaction() as s:
            row = await self._row(s, found.order_id, for_update=True)
            call = await self._pending_call(s, call_id)
            if call is None:
                return False
            if usage is not None:
                call.input_tokens = usage.input_tokens
                call.output_tokens = usage.output_tokens
                call.cache_write_tokens = usage.cache_write_tokens
                call.cache_read_tokens = usage.cache_read_tokens
            call.latency_ms = latency_ms
            call.error = error
            call.provider = provider or call.provider
            call.model = model or call.model
            await self._charge(s, row, call, cost_micro_usd=cost_micro_usd, tokens=tokens)
            call.outcome = outcome
            s.add(call)
        return True

    async def _pending_call(self, s: AsyncSession, call_id: int) -> LlmCall | None:
        query = select(LlmCall).where(LlmCall.id == call_id, LlmCall.outcome == "pending")
        if not self._sqlite:
            query = query.with_for_update()
        return (await s.exec(query.execution_options(populate_existing=True))).first()

    async def _charge(
        self, s: AsyncSession, row: WorkOrderRow, call: LlmCall, *, cost_micro_usd: int, tokens: int
    ) -> None:
        await s.exec(
            update(WorkOrderRow)
            .where(col(WorkOrderRow.id) == row.id)
            .values(
                reserved_micro_usd=WorkOrderRow.reserved_micro_usd - call.reserved_micro_usd,
                spent_micro_usd=WorkOrderRow.spent_micro_usd + cost_micro_usd,
                reserved_tokens=WorkOrderRow.reserved_tokens - call.reserved_tokens,
                spent_tokens=WorkOrderRow.spent_tokens + tokens,
            )
        )
        if call.team is not None and call.quota_week is not None:
            spend = await self._team_week(s, call.team, call.quota_week)
            await s.exec(
                update(TeamSpend)
                .where(col(TeamSpend.id) == spend.id)
                .values(
                    reserved_micro_usd=TeamSpend.reserved_micro_usd - call.reserved_micro_usd,
                    spent_micro_usd=TeamSpend.spent_micro_usd + cost_micro_usd,
                )
            )
        call.cost_micro_usd = cost_micro_usd

    async def _settle_pending(self, s: AsyncSession, row: WorkOrderRow, *, outcome: str) -> int:
        """Charge every pending call of the order its reserved worst case (usage unknown)."""
        query = select(LlmCall).where(LlmCall.order_id == row.id, LlmCall.outcome == "pending")
        if not self._sqlite:
            query = query.with_for_update()
        calls = (await s.exec(query.execution_options(populate_existing=True))).all()
        for call in calls:
            await self._charge(
                s, row, call, cost_micro_usd=call.reserved_micro_usd, tokens=call.reserved_tokens
            )
            call.outcome = outcome
            call.error = "usage unknown: charged the reserved worst case"
            s.add(call)
        return len(calls)

    async def settle_orphaned_calls(self, ref: OrderRef, *, outcome: str = "interrupted") -> int:
        """Charge in full calls a run left pending (it was cut off before it could settle)."""
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            return await self._settle_pending(s, row, outcome=outcome)

    async def count_tool_call(self, ref: OrderRef, *, max_tool_calls: int) -> bool:
        """Count one tool call if the ceiling allows it; False (nothing counted) otherwise."""
        async with self.transaction() as s:
            result = await s.exec(
                update(WorkOrderRow)
                .where(
                    col(WorkOrderRow.id) == _order_number(ref),
                    col(WorkOrderRow.tool_calls) < max_tool_calls,
                )
                .values(tool_calls=WorkOrderRow.tool_calls + 1)
            )
            return result.rowcount == 1

    async def team_spend(self, team: str, week: str) -> TeamSpend | None:
        query = select(TeamSpend).where(TeamSpend.team == team, TeamSpend.week == week)
        async with self._sessions() as s:
            return (await s.exec(query)).first()

    async def set_team_quota(
        self, team: str, week: str, *, quota_micro_usd: int | None, actor: str
    ) -> TeamSpend:
        """A lead raises (or resets, with None) a team's quota for one week."""
        async with self.transaction() as s:
            spend = await self._team_week(s, team, week)
            previous = spend.quota_micro_usd
            spend.quota_micro_usd = quota_micro_usd
            s.add(spend)
            await self._append_audit(
                s,
                SYSTEM_CHAIN,
                actor=actor,
                kind="team_quota",
                data={"team": team, "week": week, "from": previous, "to": quota_micro_usd},
            )
        return spend

    async def save_deliverable(
        self,
        ref: OrderRef,
        *,
        tool_use_id: str,
        content: str,
        summary: str,
        attempt_id: int | None,
        actor: str,
    ) -> Deliverable:
        """Store a submission once per tool use: a resumed run re-submitting gets the same row."""
        number = _order_number(ref)
        try:
            async with self.transaction() as s:
                item = Deliverable(
                    order_id=number,
                    attempt_id=attempt_id,
                    tool_use_id=tool_use_id,
                    content=content,
                    summary=summary,
                )
                s.add(item)
                await s.flush()
                await self._append_audit(
                    s,
                    format_order_id(number),
                    actor=actor,
                    kind="deliverable",
                    data={"deliverable": item.id, "summary": summary, "chars": len(content)},
                )
            return item
        except IntegrityError:
            query = select(Deliverable).where(
                Deliverable.order_id == number, Deliverable.tool_use_id == tool_use_id
            )
            async with self._sessions() as s:
                return (await s.exec(query)).one()

    async def deliverables(self, ref: OrderRef) -> list[Deliverable]:
        return await self._of_order(Deliverable, ref, col(Deliverable.id))

    async def save_verdicts(
        self, deliverable_id: int, verdicts: list[dict[str, Any]], *, actor: str, passed: bool
    ) -> None:
        """Attach the automatic check's verdicts to a deliverable, and audit them."""
        async with self.transaction() as s:
            item = await s.get(Deliverable, deliverable_id)
            if item is None:
                raise NotFound(f"deliverable {deliverable_id} does not exist")
            item.verdicts = verdicts
            s.add(item)
            await self._append_audit(
                s,
                format_order_id(item.order_id),
                actor=actor,
                kind="verified",
                data={"deliverable": deliverable_id, "passed": passed, "verdicts": verdicts},
            )

    async def bump_counter(self, ref: OrderRef, counter: str) -> int:
        """Add one to `rework_count` or `auto_revisions`; returns the new value."""
        if counter not in ("rework_count", "auto_revisions"):
            raise ValueError(f"not a counter: {counter}")
        column = getattr(WorkOrderRow, counter)
        async with self.transaction() as s:
            await s.exec(
                update(WorkOrderRow)
                .where(col(WorkOrderRow.id) == _order_number(ref))
                .values({counter: column + 1})
            )
            row = await self._row(s, ref)
            return int(getattr(row, counter))

    async def orders_in(
        self, statuses: Collection[Status], *, limit: int = 500
    ) -> list[WorkOrderRow]:
        """Rows in the given states, oldest change first (for the reminder sweep)."""
        query = (
            select(WorkOrderRow)
            .where(col(WorkOrderRow.status).in_([st.value for st in statuses]))
            .order_by(col(WorkOrderRow.updated_at))
            .limit(limit)
        )
        async with self._sessions() as s:
            return list((await s.exec(query)).all())

    async def last_entered(self, ref: OrderRef, status: Status) -> datetime | None:
        """When the order last moved into `status`, from its audit trail."""
        query = (
            select(AuditEvent)
            .where(
                AuditEvent.chain == format_order_id(_order_number(ref)),
                AuditEvent.kind == "transition",
            )
            .order_by(col(AuditEvent.seq).desc())
        )
        async with self._sessions() as s:
            for event in (await s.exec(query)).all():
                if event.data.get("to") == status.value:
                    return as_utc(event.at)
        return None

    async def resume_from_exception(
        self,
        ref: OrderRef,
        *,
        priority: int,
        actor: str,
        reason: str,
        budget: dict[str, Any] | None = None,
    ) -> WorkOrder:
        """Retry or Extend: in one transaction, check the order is still in exception, raise its
        budget if asked, and queue it; of two people acting at once, one wins."""
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            check_transition(
                format_order_id(row.id or 0),
                Status(row.status),
                Status.QUEUED,
                actor=actor,
                reason=reason,
                expected={Status.EXCEPTION},
            )
            if budget is not None:
                await self._append_audit(
                    s,
                    format_order_id(row.id or 0),
                    actor=actor,
                    kind="edited",
                    data={
                        "reason": "budget extended",
                        "changes": {"budget": {"from": row.budget, "to": budget}},
                    },
                )
            changes: dict[str, Any] = {"budget": budget} if budget is not None else {}
            await self._requeue(
                s,
                row,
                priority=priority,
                actor=actor,
                reason=reason,
                expected={Status.EXCEPTION},
                **changes,
            )
            return row_to_order(row)


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


@dataclass
class QueueGate:
    """What the queue checks before an order may start (built by workers.queue from Settings)."""

    week: str
    quota_micro_usd: Callable[[str], int]
    max_runs_per_user: Callable[[str], int]
    headroom_micro_usd: int = 0
    max_wait_s: float | None = None


@dataclass
class Claim:
    """The outcome of one claim: the order and attempt started, and orders that must wait."""

    order: WorkOrder | None = None
    attempt: RunAttempt | None = None
    elapsed_ms: int = 0
    waiting: list[tuple[WorkOrder, str]] = field(default_factory=list)
    expired: list[WorkOrder] = field(default_factory=list)

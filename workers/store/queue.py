"""The queue and leases: enqueue, claim (FOR UPDATE SKIP LOCKED on PostgreSQL), renew, finish
and reap. workers.queue and workers.runtime call these; each is one transaction. Kept in one
module because every one of them moves an order under the same lease rules."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from workers.errors import LeaseLost, OrderMoved
from workers.keys import exception_key
from workers.models import IntakeSession, RunAttempt, TeamSpend, WorkOrderRow, utcnow
from workers.progress import HeldBack, crashed_message
from workers.states import IntakeState, check_transition
from workers.store.approvals import answered_any
from workers.store.base import OrderRef, as_utc, order_number, row_to_order
from workers.store.leases import database_now, fenced_row
from workers.store.orders import decision_audit
from workers.store.outbox import (
    OutboxItem,
    crashed_notice,
    decided_item,
    exception_decided_item,
    exception_notice,
    status_item,
    write_outbox,
)
from workers.store.spend import SpendStore
from workers.workorder import Status, WorkOrder, format_order_id


@dataclass
class Admission:
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


class QueueStore(SpendStore):
    async def enqueue(
        self,
        ref: OrderRef,
        *,
        priority: int,
        actor: str,
        reason: str,
        now: datetime | None = None,
        intake: IntakeState | None = None,
        outbox: Sequence[OutboxItem] = (),
    ) -> WorkOrder:
        """Put an order in the queue (Start, Retry, Extend, rework), clearing run bookkeeping;
        with `intake`, move its intake dialogue to that state in the same commit (a worker may
        claim the order the moment it commits), and write the messages `outbox` it owes."""
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            await self._requeue(s, row, priority=priority, actor=actor, reason=reason, now=now)
            await write_outbox(s, row.id or 0, outbox)
            if intake is not None:
                await s.exec(
                    update(IntakeSession)
                    .where(col(IntakeSession.order_id) == row.id)
                    .values(state=intake.value, updated_at=utcnow())
                    .execution_options(synchronize_session=False)
                )
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
            available_at=now or await database_now(self, s),
            lease_owner=None,
            lease_expires_at=None,
            wait_reason=None,
            wait_kind=None,
            waiting_since=None,
            lost_leases=0,
            exception_kind=None,
            exception_message=None,
            **changes,
        )

    async def request_changes(
        self,
        ref: OrderRef,
        *,
        deliverable_id: int | None,
        actor: str,
        reason: str,
        feedback: str,
        priority: int,
    ) -> WorkOrder:
        """A reviewer's Request changes, in one transaction: the decision (bound to the
        deliverable shown, as `decide_on`), the feedback in the run's inbox, the rework count
        and the order back in the queue. No crash or concurrent click can leave it half-way."""
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            audit = await decision_audit(s, row, deliverable_id, feedback)
            await self._move(
                s, row, Status.CHANGES_REQUESTED, actor=actor, reason=reason, audit=audit
            )
            shown = decided_item(row, audit, decision="changes", actor=actor, at=utcnow())
            await write_outbox(s, row.id or 0, shown)
            item = {"kind": "feedback", "user": actor, "text": feedback or "(no details given)"}
            await self._requeue(
                s,
                row,
                priority=priority,
                actor=actor,
                reason="rework requested",
                inbox=[*list(row.inbox or []), item],
                rework_count=row.rework_count + 1,
            )
            return row_to_order(row)

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
        budget if asked, queue it and owe its exception notice the edit that says who did it;
        of two people acting at once, one wins."""
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
            shown = await exception_decided_item(
                s, row, action="retry" if budget is None else "extend", actor=actor, budget=budget
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
            await write_outbox(s, row.id or 0, shown)
            return row_to_order(row)

    async def any_queued(self) -> bool:
        """Whether any order is queued (due now or later; admission may still hold it back)."""
        async with self._sessions() as s:
            query = select(WorkOrderRow.id).where(WorkOrderRow.status == Status.QUEUED.value)
            return (await s.exec(query.limit(1))).first() is not None

    async def claim(
        self,
        worker_id: str,
        *,
        lease_ttl_s: float,
        admission: Admission,
        now: datetime | None = None,
        scan: int = 200,
    ) -> Claim:
        """Take the first queued order admission lets through and lease it to `worker_id`.

        Candidates are taken in priority order, then oldest first. PostgreSQL locks each with
        FOR UPDATE SKIP LOCKED, so concurrent workers walk past each other's rows; on SQLite
        the claim is one BEGIN IMMEDIATE transaction whose update is conditional on the row's
        version. Candidates held back by quota or per-user limits get their wait reason
        recorded (and reported once, when it changes).
        """
        claim = Claim()
        async with self.transaction() as s:
            # Leases run on the database's clock, so hosts whose clocks disagree agree on them;
            # `now` (tests) only moves what counts as due and how long an order has waited.
            clock = await database_now(self, s)
            now = now or clock
            due = (
                WorkOrderRow.status == Status.QUEUED.value,
                or_(
                    col(WorkOrderRow.available_at).is_(None),
                    col(WorkOrderRow.available_at) <= now,
                ),
            )
            # One statement per candidate: the first due order no other claimer holds, locked
            # (SKIP LOCKED passes over rows another transaction holds, so concurrent workers
            # pass each other instead of queueing on the same rows), with its team's week read
            # beside it. Orders held back here stay locked and are skipped by the next look.
            team_week = and_(
                col(TeamSpend.team) == col(WorkOrderRow.team), col(TeamSpend.week) == admission.week
            )
            team_left: dict[str, tuple[int, int]] = {}
            seen: list[int] = []
            while len(seen) < scan:
                one = (
                    select(
                        WorkOrderRow,
                        col(TeamSpend.spent_micro_usd),
                        col(TeamSpend.reserved_micro_usd),
                        col(TeamSpend.quota_micro_usd),
                    )
                    .outerjoin(TeamSpend, team_week)
                    .where(*due, col(WorkOrderRow.id).not_in(seen))
                    .order_by(col(WorkOrderRow.priority), col(WorkOrderRow.id))
                    .limit(1)
                )
                if not self._sqlite:
                    one = one.with_for_update(skip_locked=True, of=WorkOrderRow)
                found = (await s.exec(one.execution_options(populate_existing=True))).first()
                if found is None:
                    break
                row, spent, reserved, quota_override = found
                assert row.id is not None
                seen.append(row.id)
                if row.team not in team_left:
                    quota = admission.quota_micro_usd(row.team)
                    quota = quota_override if quota_override is not None else quota
                    team_left[row.team] = ((spent or 0) + (reserved or 0), quota)
                held = await self._held_back(s, row, admission, team_left)
                if held is None:
                    claim.attempt = await self._start_run(s, row, worker_id, clock, lease_ttl_s)
                    claim.order = row_to_order(row)
                    claim.elapsed_ms = row.elapsed_ms
                    break
                reason = held.describe()
                since = as_utc(row.waiting_since) or now
                if (
                    admission.max_wait_s is not None
                    and (now - since).total_seconds() > admission.max_wait_s
                ):
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
                        wait_kind=None,
                    )
                    key = exception_key(format_order_id(row.id), "quota", row.version)
                    notice = exception_notice(key, "quota", f"it waited too long: {reason}")
                    await write_outbox(s, row.id, [notice], now=clock)
                    claim.expired.append(row_to_order(row))
                elif row.wait_reason != reason:
                    await s.exec(
                        update(WorkOrderRow)
                        .where(col(WorkOrderRow.id) == row.id)
                        .values(wait_reason=reason, wait_kind=held.kind.value, waiting_since=since)
                    )
                    waiting = status_item(format_order_id(row.id), reason, waiting=True)
                    await write_outbox(s, row.id, [waiting], now=clock)
                    claim.waiting.append((row_to_order(row), reason))
        return claim

    async def _held_back(
        self,
        s: AsyncSession,
        row: WorkOrderRow,
        admission: Admission,
        team_left: dict[str, tuple[int, int]],
    ) -> HeldBack | None:
        """Why this order may not start now, or None (`team_left`: each team's week as the
        claim read it, used and quota, in micro-USD)."""
        used, quota = team_left[row.team]
        # An order that waited for quota starts again only once its next call fits.
        needed = max(admission.headroom_micro_usd, row.quota_needed_micro_usd or 0)
        if quota - used < needed:
            return HeldBack.team_quota(row.team, used_micro_usd=used, quota_micro_usd=quota)
        # Count a requester's runs one claimer at a time, so two cannot both see a free slot.
        await self._serialise(s, f"runs:{row.requester}")
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
        limit = admission.max_runs_per_user(row.team)
        if running >= limit:
            return HeldBack.user_runs(row.requester, running=running, limit=limit)
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
            wait_kind=None,
            # An order that was waiting for quota keeps when it started waiting, so that a run
            # that finds the week still spent can tell how long it has been (max_quota_wait_s).
            waiting_since=row.waiting_since if row.wait_reason else None,
            quota_needed_micro_usd=None,
        )
        # An attempt left open (its worker lost the lease without being reaped, e.g. through a
        # cancel) is over: ending it fences out whatever that worker still tries to write.
        await s.exec(
            update(RunAttempt)
            .where(col(RunAttempt.order_id) == row.id, col(RunAttempt.ended_at).is_(None))
            .values(ended_at=now, outcome="lost")
        )
        last = (
            await s.exec(select(func.max(RunAttempt.number)).where(RunAttempt.order_id == row.id))
        ).one()
        assert row.id is not None
        # Started on the database's clock, like its lease: a worker whose clock runs ahead must
        # not date the attempt in the future (recovery times, metrics).
        attempt = RunAttempt(
            order_id=row.id, number=(last or 0) + 1, worker_id=worker_id, started_at=now
        )
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

    async def check_leases(
        self, numbers: Collection[int], worker_id: str, *, renew_ttl_s: float | None = None
    ) -> tuple[set[int], set[int]]:
        """A worker's running orders, all at once: (those it still holds, those cancelled).
        With `renew_ttl_s` the held leases are first extended by that much on the database's
        clock. One statement or three however many runs the worker has, so a busy worker's
        heartbeats do not queue behind one query per run."""
        ids = sorted(numbers)
        if not ids:
            return set(), set()
        query = select(WorkOrderRow.id, WorkOrderRow.status, WorkOrderRow.lease_owner).where(
            col(WorkOrderRow.id).in_(ids)
        )
        if renew_ttl_s is None:
            async with self._sessions() as s:
                rows = (await s.exec(query)).all()
        else:
            async with self.transaction() as s:
                until = await database_now(self, s) + timedelta(seconds=renew_ttl_s)
                await s.exec(
                    update(WorkOrderRow)
                    .where(
                        col(WorkOrderRow.id).in_(ids),
                        col(WorkOrderRow.lease_owner) == worker_id,
                        col(WorkOrderRow.status) == Status.RUNNING.value,
                    )
                    .values(lease_expires_at=until)
                )
                rows = (await s.exec(query)).all()
        held = {n for n, st, owner in rows if st == Status.RUNNING.value and owner == worker_id}
        cancelled = {n for n, st, _ in rows if st == Status.CANCELLED.value}
        return {int(n) for n in held if n is not None}, {int(n) for n in cancelled if n is not None}

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
        available_after_s: float | None = None,
        note: dict[str, Any] | None = None,
        then: tuple[Status, str, str] | None = None,
        outbox: Sequence[OutboxItem] = (),
        step: str | None = None,
        awaiting: Collection[str] = (),
        **changes: Any,
    ) -> WorkOrder | None:
        """Leave the running state and give up the lease; None if the lease was no longer ours
        (with `attempt_id`: if that attempt no longer holds it).

        In the same transaction: `available_after_s` defers the order on the database's clock,
        `note` is left in its inbox (and counted as an automatic revision), and `then` (state,
        actor, reason) takes a second step, so that no crash can leave the order half-way
        (e.g. in verifying, with nobody to finish the verification). A run parking for the
        approval of the tool calls `awaiting` goes back to the queue instead if one of them was
        answered before it got here (the answer found the order still running)."""
        async with self.transaction() as s:
            try:
                if attempt_id is None:
                    row = await self._row(s, ref, for_update=True)
                    if row.status != Status.RUNNING.value or row.lease_owner != worker_id:
                        raise LeaseLost(format_order_id(order_number(ref)))
                else:
                    row = await fenced_row(self, s, attempt_id)
            except LeaseLost:
                if attempt_id is not None:
                    await self._end_attempt(s, attempt_id, outcome or "lost")
                return None
            if target is Status.WAITING_FOR_REQUESTER and await answered_any(
                s, row.id or 0, awaiting
            ):
                target, reason = Status.QUEUED, "an approval was answered while the run parked"
                available_after_s = 0.0
            if available_after_s is not None:
                changes["available_at"] = await database_now(self, s) + timedelta(
                    seconds=available_after_s
                )
            if note is not None:
                changes["inbox"] = [*list(row.inbox or []), note]
                changes["auto_revisions"] = row.auto_revisions + 1
            # A call the run left pending (it failed while settling it) is never settled once
            # the attempt is over: charge its worst case now instead of holding the reservation
            # for good. Before the move: the team's spend row before the audit's locks.
            await self._settle_pending(s, row, outcome="interrupted")
            await self._move(
                s,
                row,
                target,
                actor=worker_id,
                reason=reason,
                audit=audit,
                step=step,
                lease_owner=None,
                lease_expires_at=None,
                **changes,
            )
            if attempt_id is not None:
                await self._end_attempt(s, attempt_id, outcome or target.value)
            if then is not None:
                second, actor, why = then
                await self._move(s, row, second, actor=actor, reason=why)
            await write_outbox(s, row.id or 0, outbox)  # the messages this change owes
            return row_to_order(row)

    async def cancel_order(
        self,
        ref: OrderRef,
        *,
        actor: str,
        reason: str,
        expected: Collection[Status] | None = None,
        outbox: Sequence[OutboxItem] = (),
        acknowledge_exception: bool = False,
    ) -> WorkOrder:
        """Cancel an order and, in the same transaction, release what a run of it holds: the
        lease, the open attempt (which fences out its worker's writes) and the reservations of
        calls still pending, charged their worst case (usage unknown). A worker that died does
        not keep the team's week reserved. The messages `outbox` the cancel owes are written
        with it; `acknowledge_exception` (a Cancel pressed on the exception notice) owes the
        notice the edit that says who cancelled."""
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            shown = (
                await exception_decided_item(s, row, action="cancel", actor=actor)
                if acknowledge_exception and row.status == Status.EXCEPTION.value
                else []
            )
            # Charge before the move: the team's spend row before the audit's locks (see reap).
            await self._settle_pending(s, row, outcome="interrupted")
            await self._move(
                s,
                row,
                Status.CANCELLED,
                actor=actor,
                reason=reason,
                expected=expected,
                lease_owner=None,
                lease_expires_at=None,
            )
            await s.exec(
                update(RunAttempt)
                .where(col(RunAttempt.order_id) == row.id, col(RunAttempt.ended_at).is_(None))
                .values(ended_at=utcnow(), outcome="cancelled")
            )
            await write_outbox(s, row.id or 0, [*shown, *outbox])
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
        reaped: list[WorkOrder] = []
        async with self.transaction() as s:
            # The database's clock decides (`now` only for tests that look into the future):
            # a host whose clock runs ahead must not take live runs from the others.
            now = now or await database_now(self, s)
            query = (
                select(WorkOrderRow)
                .where(
                    WorkOrderRow.status == Status.RUNNING.value,
                    col(WorkOrderRow.lease_expires_at) < now,
                )
                .order_by(col(WorkOrderRow.id))
                .limit(20)
            )
            query = self._for_update(query, skip_locked=True)
            rows = (await s.exec(query)).all()
            # Every charge first, then the moves: the team's spend row is locked before the
            # audit's locks, in the order every other transaction takes them (settle_spend
            # charges, then audits). Charging one row after auditing another deadlocked.
            for row in rows:
                await self._settle_pending(s, row, outcome="interrupted")
            for row in rows:
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
                    message = crashed_message(lost, owner)
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
                    await write_outbox(s, row.id or 0, [crashed_notice(row, message)])
                else:
                    await self._move(
                        s,
                        row,
                        Status.QUEUED,
                        actor=actor,
                        reason=f"lease of {owner} expired; resuming from the last checkpoint",
                        step="Back in the queue: its worker stopped responding",
                        available_at=None,
                        **common,
                    )
                reaped.append(row_to_order(row))
        return reaped

    async def add_to_inbox(
        self,
        ref: OrderRef,
        item: dict[str, Any],
        *,
        actor: str,
        expected: Collection[Status],
        resume: bool = True,
        now: datetime | None = None,
    ) -> WorkOrder:
        """Leave a message for the run; a run parked waiting for the requester is requeued.
        OrderMoved (nothing left) if the order is no longer in one of the `expected` states,
        checked under the row lock: a reply read while the run was going must not land on an
        order that has finished since."""
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            if Status(row.status) not in expected:
                raise OrderMoved(format_order_id(row.id or 0), row.status)
            inbox = [*list(row.inbox or []), item]
            if resume and row.status == Status.WAITING_FOR_REQUESTER.value:
                await self._move(
                    s,
                    row,
                    Status.QUEUED,
                    actor=actor,
                    reason="the requester replied",
                    inbox=inbox,
                    available_at=now or await database_now(self, s),
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

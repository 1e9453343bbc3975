"""Work orders: create, read, edit, list, and move them through the state machine."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from workers.errors import IllegalTransition, OrderMoved, OutdatedDecision
from workers.models import AuditEvent, Deliverable, IntakeSession, WorkOrderRow, utcnow
from workers.store.base import OrderRef, StoreBase, as_utc, order_number, row_to_order
from workers.store.outbox import OutboxItem, decided_item, write_outbox
from workers.workorder import Status, WorkOrder, format_order_id

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


def _order_columns(order: WorkOrder, fields: frozenset[str] | set[str]) -> dict[str, Any]:
    dumped = order.model_dump(mode="json", include=set(fields))
    if "deadline" in fields:
        dumped["deadline"] = order.deadline
    return dumped


async def decision_audit(
    s: AsyncSession, row: WorkOrderRow, shown: int | None, feedback: str
) -> dict[str, Any]:
    """What a decision's audit records: the deliverable decided on (which must be the latest if
    the reviewer was `shown` one; else OutdatedDecision) and the reviewer's feedback."""
    latest = (
        await s.exec(
            select(col(Deliverable.id))
            .where(Deliverable.order_id == row.id)
            .order_by(col(Deliverable.id).desc())
            .limit(1)
        )
    ).first()
    if shown is not None and latest != shown:
        raise OutdatedDecision(format_order_id(row.id or 0), shown, latest)
    audit: dict[str, Any] = {"deliverable": latest} if latest is not None else {}
    if feedback:
        audit["feedback"] = feedback[:2000]
    return audit


class OrdersStore(StoreBase):
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
                data={"order": created.model_dump(mode="json", exclude={"id", "self_approved"})},
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
        self,
        ref: OrderRef,
        *,
        actor: str,
        expected: Collection[Status],
        reason: str = "edited",
        intake: IntakeSession | None = None,
        outbox: Sequence[OutboxItem] = (),
        **fields: Any,
    ) -> WorkOrder:
        """Change editable fields, validating the result as a whole before anything is written.

        `expected` are the states the writer accepts (workers.states.EDITABLE for Edit and
        refinement), checked under the row lock as transitions are: an order started between
        the writer's read and this write raises OrderMoved and nothing changes. `intake` is
        the order's dialogue, saved in the same commit (so a refused refinement leaves it be),
        and `outbox` what the change owes the thread (the card redrawn), written with it.
        """
        unknown = set(fields) - EDITABLE_FIELDS
        if unknown:
            raise ValueError(f"not editable: {', '.join(sorted(unknown))}")
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            current = row_to_order(row)
            if current.status not in expected:
                raise OrderMoved(current.id or "", current.status.value)
            if intake is not None:
                intake.updated_at = utcnow()
                await s.merge(intake)
            if outbox:
                await write_outbox(
                    s, row.id or 0, outbox, intake=intake.id if intake is not None else None
                )
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

    async def decide_on(
        self,
        ref: OrderRef,
        target: Status,
        *,
        deliverable_id: int | None,
        actor: str,
        reason: str,
        feedback: str = "",
    ) -> WorkOrder:
        """A reviewer's decision, bound to the deliverable they were shown: under the row lock
        that makes the decision, `deliverable_id` must still be the order's latest one, else
        OutdatedDecision (None skips the check). Raises IllegalTransition as `transition` does.
        The audit names the deliverable decided on, so a review prompt delivered late can still
        show the decision. An approval by the order's own requester is recorded as
        self-approved, on the order and in the audit."""
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            audit = await decision_audit(s, row, deliverable_id, feedback)
            changes: dict[str, Any] = {}
            if target is Status.APPROVED and actor == row.requester:
                audit["self_approved"] = True
                changes["self_approved"] = True
            await self._move(s, row, target, actor=actor, reason=reason, audit=audit, **changes)
            decision = "approve" if target is Status.APPROVED else "reject"
            shown = decided_item(row, audit, decision=decision, actor=actor, at=utcnow())
            await write_outbox(s, row.id or 0, shown)
            return row_to_order(row)

    async def add_review(
        self,
        ref: OrderRef,
        *,
        deliverable_id: int | None,
        actor: str,
        feedback: str = "",
        waiting_for: Sequence[str] = (),
    ) -> WorkOrder:
        """An approval that does not decide the order (a reviewer named at intake, while the
        channel's reviewers must approve): audited as a `review` event on the deliverable shown,
        the order stays awaiting review. Raises IllegalTransition if it is no longer awaiting
        review, OutdatedDecision as `decide_on` does."""
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            order_id = format_order_id(row.id or 0)
            if row.status != Status.AWAITING_REVIEW.value:
                raise IllegalTransition(order_id, row.status, Status.APPROVED.value)
            audit = await decision_audit(s, row, deliverable_id, feedback)
            event = await self._append_audit(
                s, order_id, actor=actor, kind="review", data={"decision": "approve", **audit}
            )
            if waiting_for:  # the thread hears that this approval does not decide alone
                who = ", ".join(f"<@{u}>" for u in waiting_for)
                text = f"<@{actor}> approved; waiting for one of the channel's reviewers: {who}"
                note = OutboxItem(
                    "notice", f"{order_id}:review-added:{event.seq}", {"text": text, "purpose": "review"}
                )
                await write_outbox(s, row.id or 0, [note])
            return row_to_order(row)

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
                AuditEvent.chain == format_order_id(order_number(ref)),
                AuditEvent.kind == "transition",
            )
            .order_by(col(AuditEvent.seq).desc())
        )
        async with self._sessions() as s:
            for event in (await s.exec(query)).all():
                if event.data.get("to") == status.value:
                    return as_utc(event.at)
        return None

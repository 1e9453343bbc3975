"""Domain approvals: a run asks to read a domain outside its allowlist, a person answers.

The request is keyed by the tool call that made it, so the call re-run on resume finds its
answer. Deciding is compare-and-set (a second click changes nothing) and, when the run is parked
waiting for it, requeues the order in the same transaction; every step is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import update
from sqlmodel import col, select

from workers.errors import NotFound
from workers.keys import domain_key
from workers.models import DomainApproval, utcnow
from workers.store.base import OrderRef, StoreBase, order_number, row_to_order
from workers.store.outbox import OutboxItem, write_outbox
from workers.workorder import Status, WorkOrder, format_order_id

DomainDecision = Literal["once", "order", "deny"]
DOMAIN_DECISIONS: tuple[DomainDecision, ...] = ("once", "order", "deny")


@dataclass(frozen=True)
class Decided:
    """The outcome of an answer: the approval as it now stands, whether this answer was the one
    recorded (False: it had been answered before), and the order."""

    approval: DomainApproval
    recorded: bool
    order: WorkOrder


class ApprovalsStore(StoreBase):
    async def request_domain_approval(
        self, ref: OrderRef, *, tool_use_id: str, host: str, url: str, reason: str
    ) -> DomainApproval:
        """The approval request of this tool call, created (and audited) the first time."""
        number = order_number(ref)
        async with self.transaction() as s:
            await self._row(s, number, for_update=True)
            found = (
                await s.exec(
                    select(DomainApproval).where(
                        DomainApproval.order_id == number,
                        DomainApproval.tool_use_id == tool_use_id,
                    )
                )
            ).first()
            if found is not None:
                return found
            approval = DomainApproval(
                order_id=number, tool_use_id=tool_use_id, host=host, url=url, reason=reason
            )
            s.add(approval)
            await s.flush()
            await self._append_audit(
                s,
                format_order_id(number),
                actor="agent",
                kind="domain_requested",
                data={"approval": approval.id, "host": host, "url": url, "reason": reason},
            )
            # The prompt is owed from the moment the request exists: a crash right after this
            # commit must not leave an approval nobody was asked for.
            assert approval.id is not None
            prompt = OutboxItem(
                "domain",
                domain_key(format_order_id(number), approval.id),
                {"approval_id": approval.id, "host": host, "url": url, "reason": reason},
            )
            await write_outbox(s, number, [prompt])
            await s.refresh(approval)
            return approval

    async def domain_approval_for(self, ref: OrderRef, tool_use_id: str) -> DomainApproval | None:
        async with self._sessions() as s:
            return (
                await s.exec(
                    select(DomainApproval).where(
                        DomainApproval.order_id == order_number(ref),
                        DomainApproval.tool_use_id == tool_use_id,
                    )
                )
            ).first()

    async def get_domain_approval(self, approval_id: int) -> DomainApproval:
        async with self._sessions() as s:
            found = await s.get(DomainApproval, approval_id)
        if found is None:
            raise NotFound(f"domain request {approval_id} does not exist")
        return found

    async def decided_domains(self, ref: OrderRef, decision: DomainDecision) -> list[str]:
        """Hosts answered with `decision` for this order ('order': its approved domains)."""
        async with self._sessions() as s:
            rows = await s.exec(
                select(DomainApproval.host)
                .where(
                    DomainApproval.order_id == order_number(ref),
                    DomainApproval.decision == decision,
                )
                .order_by(col(DomainApproval.id))
            )
            return list(dict.fromkeys(rows.all()))

    async def decide_domain_approval(
        self, approval_id: int, decision: DomainDecision, *, actor: str
    ) -> Decided:
        """Record the answer once; requeue the order if its run is parked waiting for it."""
        if decision not in DOMAIN_DECISIONS:
            raise ValueError(f"{decision!r} is not a domain decision")
        async with self.transaction() as s:
            approval = await s.get(DomainApproval, approval_id)
            if approval is None:
                raise NotFound(f"domain request {approval_id} does not exist")
            row = await self._row(s, approval.order_id, for_update=True)
            await s.refresh(approval)
            if approval.decision is not None:
                return Decided(approval, False, row_to_order(row))
            approval.decision = decision
            approval.decided_by = actor
            approval.decided_at = utcnow()
            s.add(approval)
            order_id = format_order_id(approval.order_id)
            await self._append_audit(
                s,
                order_id,
                actor=actor,
                kind="domain_decision",
                data={
                    "approval": approval.id,
                    "host": approval.host,
                    "url": approval.url,
                    "decision": decision,
                },
            )
            if row.status == Status.WAITING_FOR_REQUESTER.value:
                await self._move(
                    s,
                    row,
                    Status.QUEUED,
                    actor=actor,
                    reason=f"answered the request to read {approval.host}: {decision}",
                    available_at=utcnow(),
                )
            await s.flush()
            await s.refresh(approval)
            return Decided(approval, True, row_to_order(row))

    async def use_one_time_grant(self, approval_id: int) -> bool:
        """Spend an 'Allow once' answer; False if it was spent before (or is not one)."""
        async with self.transaction() as s:
            result = await s.exec(
                update(DomainApproval)
                .where(
                    col(DomainApproval.id) == approval_id,
                    col(DomainApproval.decision) == "once",
                    col(DomainApproval.used_at).is_(None),
                )
                .values(used_at=utcnow())
            )
            if result.rowcount != 1:
                return False
            approval = await s.get(DomainApproval, approval_id)
            assert approval is not None
            await self._append_audit(
                s,
                format_order_id(approval.order_id),
                actor="agent",
                kind="domain_grant_used",
                data={"approval": approval_id, "host": approval.host, "url": approval.url},
            )
            return True

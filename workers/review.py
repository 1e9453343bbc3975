"""Review decisions and exception actions: what each decision does (who may decide is in
`workers.permissions`).

Every decision is a state-machine transition, so it is atomic across processes: of two people
clicking at once, exactly one decision is recorded and the other gets `IllegalTransition`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from workers import queue
from workers.config import Settings
from workers.errors import NotPermitted
from workers.permissions import (
    channel_reviewers,
    completes_approval,
    may_exceed_class,
    raised_above_class,
)
from workers.store import OrderRef, Store
from workers.workorder import Budget, Status, WorkOrder

Decision = Literal["approve", "reject", "changes"]
ExceptionAction = Literal["extend", "retry", "cancel"]

DECISION_TARGETS: dict[str, Status] = {
    "approve": Status.APPROVED,
    "reject": Status.REJECTED,
    "changes": Status.CHANGES_REQUESTED,
}


@dataclass(frozen=True)
class Decided:
    order: WorkOrder
    decision: Decision
    # An approval that did not decide: the channel's reviewers, one of whom must still approve.
    waiting_for: tuple[str, ...] = ()


async def decide(
    store: Store,
    settings: Settings,
    ref: OrderRef,
    decision: Decision,
    *,
    actor: str,
    feedback: str = "",
    deliverable_id: int | None = None,
) -> Decided:
    """Record a reviewer's decision. Request changes sends the order back to the queue as rework
    with the feedback in the run's inbox; the run resumes from its checkpoint on what is left of
    the budget. An Approve that does not complete the order (`completes_approval`: a reviewer
    named at intake while the channel configures its own) is recorded as a review and the order
    stays awaiting one of the channel's reviewers. Raises IllegalTransition if the order was
    decided already, OutdatedDecision if `deliverable_id` (the one the reviewer was shown) is no
    longer the latest."""
    reason = {"approve": "approved", "reject": "rejected", "changes": "changes requested"}[decision]
    if feedback:
        reason = f"{reason}: {feedback[:500]}"
    if decision == "approve":
        current = await store.orders.get_order(ref)
        if not completes_approval(current, actor, settings):
            waiting_for = tuple(channel_reviewers(current, settings))
            order = await store.orders.add_review(
                ref,
                deliverable_id=deliverable_id,
                actor=actor,
                feedback=feedback,
                waiting_for=waiting_for,
            )
            return Decided(order, decision, waiting_for)
    if decision == "changes":
        current = await store.orders.get_order(ref)
        order = await store.queue.request_changes(
            ref,
            deliverable_id=deliverable_id,
            actor=actor,
            reason=reason,
            feedback=feedback,
            priority=queue.priority_of(settings, current.workload_class),
        )
    else:
        order = await store.orders.decide_on(
            ref,
            DECISION_TARGETS[decision],
            deliverable_id=deliverable_id,
            actor=actor,
            reason=reason,
            feedback=feedback,
        )
    return Decided(order, decision)


@dataclass(frozen=True)
class RecordedDecision:
    """A reviewer's decision on one deliverable, as the audit trail recorded it."""

    decision: Decision
    actor: str
    at: datetime
    feedback: str
    self_approved: bool = False


async def decision_on(store: Store, order_id: str, deliverable_id: int) -> RecordedDecision | None:
    """The decision made on this deliverable, if any (the latest, should there be several)."""
    decisions: dict[str, Decision] = {
        Status.APPROVED.value: "approve",
        Status.REJECTED.value: "reject",
        Status.CHANGES_REQUESTED.value: "changes",
    }
    for event in reversed(await store.audit.audit_trail(order_id)):
        to = event.data.get("to")
        if event.kind == "transition" and to in decisions:
            if event.data.get("deliverable") == deliverable_id:
                return RecordedDecision(
                    decisions[to],
                    event.actor,
                    event.at,
                    str(event.data.get("feedback") or ""),
                    bool(event.data.get("self_approved")),
                )
    return None


def extension_refusal(
    order: WorkOrder, extended: Budget, *, actor: str, settings: Settings
) -> str | None:
    """Why `actor` may not give the order this budget (above its workload class's envelope,
    and neither an admin nor the escalation contact), or None."""
    raised = raised_above_class(order, extended, settings)
    if raised and not may_exceed_class(order, actor, settings):
        return above_class_refusal(order, raised, settings)
    return None


def extended_budget(
    budget: Budget, *, factor: float = 1.5, usd: float | None = None, minutes: int | None = None
) -> Budget:
    """The envelope after Extend: +50 % on every ceiling by default, or the amounts chosen."""
    return budget.model_copy(
        update={
            "max_usd": round(usd if usd is not None else budget.max_usd * factor, 2),
            "max_tokens": math.ceil(budget.max_tokens * factor),
            "max_wall_clock_s": minutes * 60
            if minutes is not None
            else math.ceil(budget.max_wall_clock_s * factor),
            "max_tool_calls": math.ceil(budget.max_tool_calls * factor),
            "max_model_calls": math.ceil(budget.max_model_calls * factor),
        }
    )


def above_class_refusal(order: WorkOrder, raised: list[str], settings: Settings) -> str:
    """Why the requester alone cannot raise an order above its class, and who can."""
    envelope = settings.budgets[order.workload_class]
    who = "an admin"
    if order.escalation_contact and order.escalation_contact != order.requester:
        who = f"<@{order.escalation_contact}> (the escalation contact) or an admin"
    return (
        f"That raises the {', '.join(raised)} of {order.id} above the "
        f"{order.workload_class.value} class ({envelope.describe()}); only {who} can do that."
    )


async def handle_exception(
    store: Store,
    settings: Settings,
    ref: OrderRef,
    action: ExceptionAction,
    *,
    actor: str,
    usd: float | None = None,
    minutes: int | None = None,
) -> WorkOrder:
    """Extend (raise the ceilings, then resume), Retry (resume as is) or Cancel an order in
    exception. Either resumes from the last checkpoint. Each owes the exception notice an
    edit that shows it, written in its transaction. Raises IllegalTransition if someone
    else acted first, NotPermitted if an Extend raises the order above its workload class's
    envelope and `actor` is neither an admin nor the escalation contact."""
    if action == "cancel":
        # Checked with the cancel, under the row lock: a Retry landing first wins.
        return await queue.cancel(
            store,
            ref,
            actor=actor,
            reason="cancelled after an exception",
            expected={Status.EXCEPTION},
            acknowledge_exception=True,
        )
    order = await store.orders.get_order(ref)
    budget = None
    if action == "extend":
        extended = extended_budget(
            order.budget, factor=settings.review.extend_factor, usd=usd, minutes=minutes
        )
        if refusal := extension_refusal(order, extended, actor=actor, settings=settings):
            raise NotPermitted(refusal)
        budget = extended.model_dump()
    reason = (
        "budget extended; resuming" if action == "extend" else "retrying from the last checkpoint"
    )
    return await store.queue.resume_from_exception(
        ref,
        priority=queue.priority_of(settings, order.workload_class),
        actor=actor,
        reason=reason,
        budget=budget,
    )

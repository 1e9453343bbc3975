"""`delegate eval export`: reviewers' decisions become a private verify suite.

Each decision made since a date (approve, reject, request changes), on the deliverable it was
made on, is one case: the order's criteria, that deliverable's text, and the decision as the
case's label (approved: met; rejected or changes requested: not met). Reviewers decide on the
whole deliverable, so the label is the case's, not each criterion's. Approvals by the order's
own requester are left out: they are no independent review. People's standing thumbs on that
deliverable (Slack's feedback buttons) go with the case as counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from workers.evals.cases import CaseFeedback, Criterion, VerifyCase
from workers.evals.redact import redact
from workers.store import Store
from workers.store.reporting.calibration import OrderFeedback
from workers.workorder import Status, WorkOrder, format_order_id

LABELS = {
    Status.APPROVED.value: ("approve", True),
    Status.REJECTED.value: ("reject", False),
    Status.CHANGES_REQUESTED.value: ("changes", False),
}


@dataclass(frozen=True)
class Export:
    cases: list[VerifyCase]
    self_approved: int
    without_deliverable: int


async def export_decisions(
    store: Store, since: datetime, *, redact_with: Sequence[str] | None = None
) -> Export:
    """The decisions made at or after `since`, oldest first. With `redact_with` (the
    deployment's secrets, possibly none), every text is redacted (workers.evals.redact)."""
    order_ids = await store.reporting.decided_orders(since, LABELS)
    # Every standing press, whenever made: one made before `since` still rates a deliverable
    # decided on after it.
    rated = await store.reporting.order_feedback([format_order_id(n) for n in order_ids])
    self_approved = missing = 0
    decided: list[tuple[datetime, VerifyCase]] = []
    for number in order_ids:
        order = await store.orders.get_order(number)
        contents = {d.id: d.content for d in await store.runs.deliverables(number)}
        for event in await store.audit.audit_trail(format_order_id(number)):
            to = event.data.get("to")
            if event.kind != "transition" or to not in LABELS or event.at < since:
                continue
            if event.data.get("self_approved"):
                self_approved += 1
                continue
            deliverable_id = event.data.get("deliverable")
            if not isinstance(deliverable_id, int) or deliverable_id not in contents:
                missing += 1
                continue
            thumbs = _feedback(rated.get(order.id or ""), deliverable_id)
            case = _case(order, deliverable_id, contents[deliverable_id], to, event.at, thumbs)
            if redact_with is not None:
                case = _redacted(case, redact_with)
            decided.append((event.at, case))
    cases = [case for _, case in sorted(decided, key=lambda item: item[0])]
    return Export(cases, self_approved, missing)


def _case(
    order: WorkOrder,
    deliverable_id: int,
    content: str,
    to: str,
    at: datetime,
    feedback: CaseFeedback | None,
) -> VerifyCase:
    decision, met = LABELS[to]
    return VerifyCase(
        id=f"{order.id}-d{deliverable_id}",
        title=order.title,
        goal=order.goal,
        deliverable_spec=order.deliverable,
        workload_class=order.workload_class,
        criteria=[Criterion(text=c) for c in order.acceptance_criteria],
        deliverable=content or "(empty)",
        met=met,
        tags=[decision],
        source=f"{order.id}: {decision} on {at.date().isoformat()}",
        feedback=feedback,
    )


def _feedback(rated: OrderFeedback | None, deliverable_id: int) -> CaseFeedback | None:
    """The presses on this version of the deliverable (a press counts for the version shown
    when it was made), as counts; None when nobody rated it."""
    ratings = [r for r in (rated.ratings if rated else ()) if r.deliverable_id == deliverable_id]
    if not ratings:
        return None
    up = sum(r.rating == "up" for r in ratings)
    return CaseFeedback(up=up, down=len(ratings) - up)


def _redacted(case: VerifyCase, secrets: Sequence[str]) -> VerifyCase:
    return case.model_copy(
        update={
            "title": redact(case.title, secrets),
            "goal": redact(case.goal, secrets),
            "deliverable_spec": redact(case.deliverable_spec, secrets),
            "criteria": [Criterion(text=redact(c.text, secrets)) for c in case.criteria],
            "deliverable": redact(case.deliverable, secrets),
        }
    )

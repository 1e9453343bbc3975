"""`delegate show WO-42`: one order as a terminal reader needs it, to follow it without Slack."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from workers.models import Deliverable, WorkOrderRow
from workers.permissions import reviewers_of
from workers.progress import Spend
from workers.store.reporting.calibration import FeedbackTally
from workers.workorder import Status, WorkOrder


def local_time(at: datetime | None, tz: str) -> str:
    """`Fri 2026-11-27 17:00 (Europe/Berlin)`, or `(none)`."""
    if at is None:
        return "(none)"
    return f"{at.astimezone(ZoneInfo(tz)):%a %Y-%m-%d %H:%M} ({tz})"


def _state(order: WorkOrder) -> str:
    state = order.status.value.replace("_", " ")
    if order.status is Status.APPROVED and order.self_approved:
        return f"{state} (self-approved: by its requester)"
    return state


def render_order(
    order: WorkOrder,
    row: WorkOrderRow,
    deliverables: list[Deliverable],
    *,
    tz: str,
    feedback: FeedbackTally | None = None,
) -> str:
    spend = Spend.of(row)
    lines = [
        f"{order.id}: {order.title}",
        f"State:        {_state(order)}",
        f"Requested by: {order.requester}",
        f"Spend:        {spend.describe()}",
        f"Deadline:     {local_time(order.deadline, tz)}",
    ]
    if feedback is not None:
        lines.append(f"Feedback:     {feedback.label}")
    if row.exception_message:
        lines.append(f"Stopped:      {row.exception_kind}: {row.exception_message}")
    if not deliverables:
        lines.append("Deliverable:  (nothing submitted yet)")
        return "\n".join(lines)
    latest = deliverables[-1]
    version = f" (version {len(deliverables)})" if len(deliverables) > 1 else ""
    lines += ["", f"Deliverable{version}: {latest.summary}".rstrip(), "", latest.content.rstrip(), ""]
    if latest.verdicts is None:
        lines.append("Verification: not checked automatically")
    else:
        passed = sum(bool(v.get("passed")) for v in latest.verdicts)
        lines.append(f"Verification: {passed} of {len(latest.verdicts)} criteria met")
        for verdict in latest.verdicts:
            mark = "✓" if verdict.get("passed") else "✗"
            reason = f" — {verdict['reason']}" if verdict.get("reason") else ""
            lines.append(f"  {mark} {verdict.get('criterion', '')}{reason}")
    if order.status is Status.AWAITING_REVIEW and order.channel is None:
        # Ordered in the console: say how to finish without Slack.
        who = "|".join(reviewers_of(order))
        lines += [
            "",
            f"Decide with:  delegate review {order.id} approve|reject|changes [FEEDBACK] "
            f"--user {who}",
        ]
    return "\n".join(lines)

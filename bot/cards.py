"""The work-order card: the draft or order shown legibly in its thread, with its controls."""

from __future__ import annotations

from typing import Any

from bot.blocks import (
    Block,
    button,
    cap_blocks,
    context,
    fields,
    header,
    sections,
    slack_date,
    truncate,
)
from bot.ids import CANCEL_ACTION, EDIT_ACTION, START_ACTION
from bot.mrkdwn import mention, untrusted
from workers.config import Settings
from workers.workorder import Status, WorkOrder

STATE_LABELS: dict[Status, str] = {
    Status.DRAFTING: "Drafting",
    Status.AWAITING_CONFIRMATION: "Draft: waiting for the requester to start it",
    Status.QUEUED: "Queued",
    Status.RUNNING: "Running",
    Status.WAITING_FOR_REQUESTER: "Waiting for the requester",
    Status.VERIFYING: "Verifying",
    Status.AWAITING_REVIEW: "Awaiting review",
    Status.CHANGES_REQUESTED: "Changes requested",
    Status.APPROVED: "Approved",
    Status.REJECTED: "Rejected",
    Status.EXCEPTION: "Needs attention",
    Status.CANCELLED: "Cancelled",
}


def state_label(order: WorkOrder) -> str:
    """The order's state for people: an approval by its own requester says so."""
    if order.status is Status.APPROVED and order.self_approved:
        return "Self-approved"
    return STATE_LABELS[order.status]


def card_text(order: WorkOrder) -> str:
    """Notification fallback text (parsed as mrkdwn: a drafted title is shown inert)."""
    return f"{order.id or 'Draft'}: {untrusted(order.title)} ({state_label(order)})"


def card_note_text(note: str, actor: str) -> str:
    """The card's line saying who started or cancelled the order (`CardNote`)."""
    if note == "started":
        return f"Started by {mention(actor)}. I'll post progress in this thread."
    if note == "cancelled":
        return f"Cancelled by {mention(actor)}."
    return ""  # a review decision: the card's state says it (the prompt names the reviewer)


def render_card(
    order: WorkOrder, settings: Settings, *, open_points: list[str] | None = None, note: str = ""
) -> list[Block]:
    policy = settings.policies.get(order.authority_policy)
    tools = ", ".join(policy.tools) if policy else "unknown policy"
    reviewers = (
        ", ".join(mention(u) for u in order.verification.reviewers)
        or "_none named_ (requester reviews)"
    )
    deadline = (
        slack_date(int(order.deadline.timestamp()), order.deadline.strftime("%Y-%m-%d %H:%M UTC"))
        if order.deadline
        else "_none_"
    )
    # Title, goal, deliverable, criteria and open points are drafted by a model from other
    # people's words: shown inert (no broadcast, no disguised link). The header is plain text.
    criteria = "\n".join(f"☐ {untrusted(c)}" for c in order.acceptance_criteria)
    blocks: list[Block] = [
        header(order.title),
        context(
            f"*{order.id or 'Draft'}* · {state_label(order)} · requested by {mention(order.requester)}"
        ),
        *sections(f"*Goal*\n{untrusted(order.goal)}"),
        *sections(f"*Deliverable*\n{untrusted(order.deliverable)}"),
        *sections(f"*Acceptance criteria*\n{criteria}"),
        fields(
            [
                ("Budget", order.budget.describe()),
                ("Deadline", deadline),
                ("Reviewer", reviewers),
                ("Escalation", mention(order.escalation_contact)),
                ("Policy", f"`{order.authority_policy}`: {tools}"),
                ("Workload", order.workload_class.value),
            ]
        ),
    ]
    if order.context:
        blocks.append(context(truncate(f"Context: {untrusted(order.context)}", 1500)))
    if open_points:
        blocks += sections("*Open points*\n" + "\n".join(f"• {untrusted(p)}" for p in open_points))
    if note:
        blocks.append(context(note))
    if order.status is Status.AWAITING_CONFIRMATION and order.id:
        blocks.append(
            {
                "type": "actions",
                "block_id": "wo_controls",
                "elements": [
                    button("Start", START_ACTION, order.id, style="primary"),
                    button("Edit", EDIT_ACTION, order.id),
                    button(
                        "Cancel",
                        CANCEL_ACTION,
                        order.id,
                        style="danger",
                        confirm=_confirm_cancel(order.id),
                    ),
                ],
            }
        )
        blocks.append(context("Reply *go* in this thread to start, or use the buttons."))
    return cap_blocks(blocks)


def _confirm_cancel(order_id: str) -> dict[str, Any]:
    return {
        "title": {"type": "plain_text", "text": "Cancel this order?"},
        "text": {"type": "mrkdwn", "text": f"{order_id} will not run."},
        "confirm": {"type": "plain_text", "text": "Cancel it"},
        "deny": {"type": "plain_text", "text": "Keep it"},
    }

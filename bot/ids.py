"""Every id Slack sends back to us, spelled once: the command, the shortcut, the buttons' action
ids and the modals' callback ids. The manifest (`manifest.yml`) must agree with the first two."""

from __future__ import annotations

COMMAND = "/delegate"
SHORTCUT_DELEGATE_THIS = "delegate_this"

# The work-order card (and the Cancel button on an active order's status message)
START_ACTION = "wo_start"
EDIT_ACTION = "wo_edit"
CANCEL_ACTION = "wo_cancel"

# App Home
NEW_ORDER_ACTION = "home_new_order"

# The review prompt; its buttons' value is `review_value(...)`, so a click is bound to the
# deliverable it was shown with
APPROVE_ACTION = "review_approve"
CHANGES_ACTION = "review_changes"
REJECT_ACTION = "review_reject"

# Exception messages
EXTEND_ACTION = "exception_extend"
EXTEND_CUSTOM_ACTION = "exception_extend_custom"
RETRY_ACTION = "exception_retry"
EXCEPTION_CANCEL_ACTION = "exception_cancel"

# A run's request to read a domain outside its allowlist; the value is the request's id
DOMAIN_ONCE_ACTION = "domain_allow_once"
DOMAIN_ORDER_ACTION = "domain_allow_order"
DOMAIN_DENY_ACTION = "domain_deny"

# A run's request to make a tool call its policy asks about; the value is the request's id
APPROVAL_ONCE_ACTION = "approval_allow_once"
APPROVAL_ORDER_ACTION = "approval_allow_order"
APPROVAL_DENY_ACTION = "approval_deny"

# Slack's feedback buttons (👍 / 👎) on deliverables and chat answers; the value names the
# subject and the rating, `feedback_value(...)`
FEEDBACK_ACTION = "feedback"

# Modals
INTAKE_CALLBACK = "intake_modal"
EDIT_CALLBACK = "edit_order_modal"
CHANGES_CALLBACK = "review_changes_modal"
EXTEND_CALLBACK = "extend_budget_modal"


def review_value(order_id: str, deliverable_id: int | None) -> str:
    """A review button's value: the order and the deliverable shown, 'WO-12:v7' (7 is the stored
    deliverable's id); just 'WO-12' when no deliverable is known."""
    return order_id if deliverable_id is None else f"{order_id}:v{deliverable_id}"


def parse_review_value(value: str) -> tuple[str, int | None]:
    """'WO-12:v7' -> ('WO-12', 7); 'WO-12' -> ('WO-12', None). The order id is parsed by the
    store, which refuses anything that is not one."""
    order_id, sep, version = value.partition(":v")
    if sep and version.isascii() and version.isdigit() and len(version) <= 18:
        return order_id, int(version)
    return (value, None) if not sep else (order_id, -1)


CHAT_SUBJECT = "chat-"


def feedback_value(subject: str, rating: str) -> str:
    """A feedback button's value: 'WO-12:up', or for a chat answer 'chat-7:down' (7 is the
    intake session that answered)."""
    return f"{subject}:{rating}"


def parse_feedback_value(value: str) -> tuple[str, str] | None:
    """'WO-12:up' -> ('WO-12', 'up'); None for anything else."""
    subject, _, rating = value.rpartition(":")
    return (subject, rating) if subject and rating in ("up", "down") else None

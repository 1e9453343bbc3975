"""Who may do what to an order: plain functions of the order, the user and the settings.

Every surface (buttons, modals, slash commands, thread replies) asks here, so a rule changes in
one place. Admins are `settings.admins`.
"""

from __future__ import annotations

from workers.config import Settings
from workers.workorder import WorkOrder


def reviewers_of(order: WorkOrder) -> list[str]:
    """Who decides: the named reviewers, or the requester when nobody is named."""
    return list(order.verification.reviewers) or [order.requester]


def may_control(order: WorkOrder, user: str, settings: Settings) -> bool:
    """Only the requester (or an admin) may start, edit or cancel an order."""
    return user == order.requester or user in settings.admins


def may_review(order: WorkOrder, user: str, settings: Settings) -> bool:
    """Approve, reject or request changes: a named reviewer, else the requester."""
    if user in order.verification.reviewers:
        return True
    if user == order.requester:
        return not order.verification.reviewers or settings.review.requester_may_approve
    return False


def may_handle_exception(order: WorkOrder, user: str, settings: Settings) -> bool:
    """Extend, Retry or Cancel an order in exception."""
    return user in {order.requester, order.escalation_contact} or user in settings.admins


def may_view(order: WorkOrder, user: str, settings: Settings) -> bool:
    """See an order's status: the people on it, and admins."""
    people = {
        order.requester,
        order.escalation_contact,
        *order.verification.reviewers,
        *settings.admins,
    }
    return user in people

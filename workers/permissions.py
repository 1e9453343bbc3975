"""Who may do what to an order: plain functions of the order, the user and the settings.

Every surface (buttons, modals, slash commands, thread replies) asks here, so a rule changes in
one place. Admins are `settings.admins`.
"""

from __future__ import annotations

from workers.config import DEFAULT_APPROVERS, Settings
from workers.workorder import Budget, WorkloadClass, WorkOrder

# The ceilings an Edit or an Extend can raise, with how they are named to people.
_CEILINGS = {
    "max_usd": "budget",
    "max_tokens": "tokens",
    "max_wall_clock_s": "time limit",
    "max_tool_calls": "tool calls",
    "max_model_calls": "model calls",
}


def reviewers_of(order: WorkOrder) -> list[str]:
    """Who decides: the named reviewers, or the requester when nobody is named."""
    return list(order.verification.reviewers) or [order.requester]


def may_control(order: WorkOrder, user: str, settings: Settings) -> bool:
    """Only the requester (or an admin) may start, edit or cancel an order."""
    return user == order.requester or user in settings.admins


def required_reviewers(order: WorkOrder, settings: Settings) -> set[str]:
    """Who other than the requester must decide: the order's named reviewers and, as a floor,
    the reviewers its channel configures."""
    named = set(order.verification.reviewers) | set(
        settings.channel_defaults(order.channel).reviewers
    )
    return named - {order.requester}


def may_review(order: WorkOrder, user: str, settings: Settings) -> bool:
    """Approve, reject or request changes: a named reviewer. The requester only when nobody else
    is named (by the order or its channel), or when `review.requester_may_approve` is on: being
    named on their own order does not make them a reviewer."""
    if user == order.requester:
        return settings.review.requester_may_approve or not required_reviewers(order, settings)
    return user in order.verification.reviewers


def channel_reviewers(order: WorkOrder, settings: Settings) -> list[str]:
    """The order's reviewers that its channel configures (its requester aside): one of them
    must approve (the floor), whoever else was named at intake. Intake always includes them;
    an admin who takes them off the order (Edit) lifts the floor with them, so that nobody
    waits for an approval no one on the order can give."""
    return [
        user
        for user in settings.channel_defaults(order.channel).reviewers
        if user != order.requester and user in order.verification.reviewers
    ]


def completes_approval(order: WorkOrder, user: str, settings: Settings) -> bool:
    """Whether an Approve by `user` (who may review) approves the order. When its channel
    configures reviewers, only one of them or an admin completes it: a reviewer named at intake
    adds a review, and the requester approves alone only under `review.requester_may_approve`.
    Reject and Request changes need no such floor: anyone entitled to review may send work back."""
    floor = channel_reviewers(order, settings)
    if not floor or user in floor or user in settings.admins:
        return True
    return user == order.requester and settings.review.requester_may_approve


def may_assign(user: str, settings: Settings) -> bool:
    """Change an order's reviewers or escalation contact once its card is posted: admins only."""
    return user in settings.admins


def may_handle_exception(order: WorkOrder, user: str, settings: Settings) -> bool:
    """Extend, Retry or Cancel an order in exception."""
    return user in {order.requester, order.escalation_contact} or user in settings.admins


def approvers_of(order: WorkOrder, settings: Settings) -> list[str]:
    """Who may answer the order's requests to make a tool call (or read a domain outside its
    allowlist), as its authority policy's `approvers` names them: the requester, the escalation
    contact, the named reviewers. Admins may too (`may_approve`)."""
    policy = settings.policies.get(order.authority_policy)
    roles = policy.approvers if policy is not None else list(DEFAULT_APPROVERS)
    people: list[str] = []
    for role in roles:
        if role == "requester":
            people.append(order.requester)
        elif role == "escalation" and order.escalation_contact:
            people.append(order.escalation_contact)
        elif role == "reviewers":
            people.extend(order.verification.reviewers)
    return list(dict.fromkeys(people))


def may_approve(order: WorkOrder, user: str, settings: Settings) -> bool:
    """Answer a run's request to make a tool call: one of the policy's approvers, or an admin."""
    return user in approvers_of(order, settings) or user in settings.admins


def may_view(order: WorkOrder, user: str, settings: Settings) -> bool:
    """See an order's status: the people on it, and admins."""
    people = {
        order.requester,
        order.escalation_contact,
        *order.verification.reviewers,
        *settings.admins,
    }
    return user in people


def raised_above_class(
    order: WorkOrder,
    budget: Budget,
    settings: Settings,
    *,
    workload_class: WorkloadClass | None = None,
) -> list[str]:
    """The ceilings `budget` raises above the envelope of the class the order ends in
    (`workload_class`, when an edit changes it), named for people; empty if it stays within.
    A ceiling already granted is not raised again while the class stays; after a change of
    class only the new envelope counts, so an Edit to `deep` and back to `quick` cannot carry
    the deep budget along."""
    ends_in = workload_class or order.workload_class
    envelope = settings.budgets[ends_in]
    kept = ends_in is order.workload_class
    return [
        name
        for field, name in _CEILINGS.items()
        if getattr(budget, field)
        > max(getattr(envelope, field), getattr(order.budget, field) if kept else 0)
    ]


def may_exceed_class(order: WorkOrder, user: str, settings: Settings) -> bool:
    """Raise an order above its workload class's envelope: an admin, or the escalation contact
    when that is someone other than the requester (the requester alone stays within the class)."""
    if user in settings.admins:
        return True
    return user == order.escalation_contact and user != order.requester

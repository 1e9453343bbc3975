"""The work-order state machine: one transition table, checked in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from workers.errors import IllegalTransition
from workers.workorder import Status

S = Status

TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.DRAFTING: frozenset({S.AWAITING_CONFIRMATION, S.CANCELLED}),
    # Edit sends a proposed order back to drafting; Start queues it.
    S.AWAITING_CONFIRMATION: frozenset({S.DRAFTING, S.QUEUED, S.CANCELLED}),
    # Quota waits beyond their limit end in exception.
    S.QUEUED: frozenset({S.RUNNING, S.EXCEPTION, S.CANCELLED}),
    # A run can be requeued when its lease is lost or a provider asks it to wait.
    S.RUNNING: frozenset(
        {
            S.WAITING_FOR_REQUESTER,
            S.VERIFYING,
            S.AWAITING_REVIEW,
            S.QUEUED,
            S.EXCEPTION,
            S.CANCELLED,
        }
    ),
    # The requester's reply puts the parked run back in the queue.
    S.WAITING_FOR_REQUESTER: frozenset({S.QUEUED, S.EXCEPTION, S.CANCELLED}),
    # A failed automatic check may send the run back for a revision.
    S.VERIFYING: frozenset({S.RUNNING, S.QUEUED, S.AWAITING_REVIEW, S.EXCEPTION, S.CANCELLED}),
    S.AWAITING_REVIEW: frozenset({S.APPROVED, S.REJECTED, S.CHANGES_REQUESTED, S.CANCELLED}),
    S.CHANGES_REQUESTED: frozenset({S.QUEUED, S.CANCELLED}),
    # Retry and Extend resume an order from its last checkpoint.
    S.EXCEPTION: frozenset({S.QUEUED, S.CANCELLED}),
    S.APPROVED: frozenset(),
    S.REJECTED: frozenset(),
    S.CANCELLED: frozenset(),
}

TERMINAL: frozenset[Status] = frozenset(s for s, targets in TRANSITIONS.items() if not targets)
ACTIVE: frozenset[Status] = frozenset(
    {S.QUEUED, S.RUNNING, S.WAITING_FOR_REQUESTER, S.VERIFYING, S.AWAITING_REVIEW}
)


@dataclass(frozen=True)
class Transition:
    """A state change, with who caused it and why."""

    order_id: str
    source: Status
    target: Status
    actor: str
    reason: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def can_transition(source: Status, target: Status) -> bool:
    return target in TRANSITIONS[source]


def check_transition(
    order_id: str, source: Status, target: Status, *, actor: str, reason: str
) -> Transition:
    """Return the transition record, or raise IllegalTransition."""
    if not can_transition(source, target):
        raise IllegalTransition(order_id, source.value, target.value)
    if not actor:
        raise ValueError("every transition needs an actor")
    return Transition(order_id, source, target, actor, reason)

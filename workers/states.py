"""The work-order state machine: one transition table, checked in one place."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from workers.errors import IllegalTransition
from workers.workorder import Status

S = Status

# What a move into approved that the order's own requester made is marked with, in
# `transitions.exception_kind` (the column qualifies a move; migration 0015).
SELF_APPROVED = "self_approved"

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

# Groups of states, each named for the question it answers elsewhere.
TERMINAL: frozenset[Status] = frozenset(s for s, targets in TRANSITIONS.items() if not targets)
# Not finished: listed by `/delegate list`, may still be cancelled.
OPEN: frozenset[Status] = frozenset(TRANSITIONS) - TERMINAL
# The status message offers Cancel.
ACTIVE: frozenset[Status] = frozenset(
    {S.QUEUED, S.RUNNING, S.WAITING_FOR_REQUESTER, S.VERIFYING, S.AWAITING_REVIEW}
)
# The engine holds the order: nobody but the engine (or the requester's reply) moves it on.
IN_FLIGHT: frozenset[Status] = frozenset(
    {S.QUEUED, S.RUNNING, S.WAITING_FOR_REQUESTER, S.VERIFYING}
)
# Started and not finished: a missed deadline is worth telling people about.
UNDER_WAY: frozenset[Status] = IN_FLIGHT | {S.AWAITING_REVIEW, S.CHANGES_REQUESTED, S.EXCEPTION}
# Not started yet: the order has no status message (its card is the proposal).
NOT_STARTED: frozenset[Status] = frozenset({S.DRAFTING, S.AWAITING_CONFIRMATION})
# Edit and refinement in the thread change an order only while it waits to be started.
EDITABLE: frozenset[Status] = frozenset({S.AWAITING_CONFIRMATION})
# A requester's reply in the thread reaches the run (and wakes it if it is waiting).
TAKES_REPLIES: frozenset[Status] = frozenset({S.QUEUED, S.RUNNING, S.WAITING_FOR_REQUESTER})


class WaitKind(StrEnum):
    """Why a queued order is not starting (the order row's `wait_kind`; `wait_reason` words it)."""

    QUOTA = "quota"  # the team's weekly quota cannot cover the next call
    SLOT = "slot"  # the requester already has as many runs going as allowed
    PROVIDER = "provider"  # the model provider asked us to wait


class IntakeKind(StrEnum):
    """What an intake dialogue turned out to be."""

    PENDING = "pending"
    CHAT = "chat"
    DELEGATION = "delegation"


class IntakeState(StrEnum):
    """Where an intake dialogue stands: open until a draft is proposed, then confirmed or closed."""

    OPEN = "open"
    PROPOSED = "proposed"
    CONFIRMED = "confirmed"
    CLOSED = "closed"


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
    order_id: str,
    source: Status,
    target: Status,
    *,
    actor: str,
    reason: str,
    expected: Collection[Status] | None = None,
) -> Transition:
    """Return the transition record, or raise IllegalTransition.

    `expected` narrows the table: the states the caller saw the order in when it decided (Cancel
    on an exception expects exception), so a change someone else made in between is refused.
    """
    if not can_transition(source, target) or (expected is not None and source not in expected):
        raise IllegalTransition(order_id, source.value, target.value)
    if not actor:
        raise ValueError("every transition needs an actor")
    return Transition(order_id, source, target, actor, reason)

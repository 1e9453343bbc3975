"""The work queue: starting, claiming, cancelling and resuming orders.

The front door calls `enqueue` (Start, Retry, Extend), `cancel` and `resume_with_reply`; workers
call `claim` and `reap`. Claims and leases live in the store (`Store.claim`: FOR UPDATE SKIP
LOCKED on PostgreSQL, one IMMEDIATE transaction on SQLite), so an order is never run by two
workers at once and an order whose worker died is picked up again once its lease expires.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from workers.budget import quota_week, usd_to_micro
from workers.config import Settings
from workers.models import utcnow
from workers.states import OPEN, TAKES_REPLIES, TERMINAL, IntakeState
from workers.store import Admission, Claim, OrderRef, Store
from workers.store.outbox import OutboxItem
from workers.workorder import Status, WorkloadClass, WorkOrder


def priority_of(settings: Settings, workload_class: WorkloadClass | str) -> int:
    """Lower runs first; classes without a configured priority go last."""
    return settings.priorities.get(
        WorkloadClass(workload_class), max(settings.priorities.values()) + 1
    )


def admission(settings: Settings, now: datetime | None = None) -> Admission:
    """What an order must pass to start now: team quota headroom and per-user run limits."""

    def team(name: str) -> Any:
        return settings.teams.get(name) or settings.teams["default"]

    return Admission(
        week=quota_week(now or utcnow()),
        quota_micro_usd=lambda name: usd_to_micro(team(name).weekly_usd),
        max_runs_per_user=lambda name: team(name).max_concurrent_runs_per_user,
        headroom_micro_usd=usd_to_micro(settings.engine.quota_headroom_usd),
        max_wait_s=settings.engine.max_quota_wait_s,
    )


async def enqueue(
    store: Store,
    settings: Settings,
    ref: OrderRef,
    *,
    actor: str,
    reason: str = "started",
    intake: IntakeState | None = None,
    outbox: Sequence[OutboxItem] = (),
) -> WorkOrder:
    """Queue an order (from awaiting confirmation, exception, or changes requested), and with
    `intake` move its intake dialogue to that state in the same commit, in which the messages
    `outbox` the start owes are written too.

    A run that was interrupted resumes from its last checkpoint.
    """
    order = await store.orders.get_order(ref)
    return await store.queue.enqueue(
        ref,
        priority=priority_of(settings, order.workload_class),
        actor=actor,
        reason=reason,
        intake=intake,
        outbox=outbox,
    )


async def cancel(
    store: Store,
    ref: OrderRef,
    *,
    actor: str,
    reason: str = "cancelled",
    expected: Collection[Status] = OPEN,
    outbox: Sequence[OutboxItem] = (),
    acknowledge_exception: bool = False,
) -> WorkOrder:
    """Cancel an order. A running worker notices within `engine.cancel_poll_s` and stops;
    spend so far stays recorded, calls still in flight are charged their reservation and the
    lease is released at once (a dead worker's run holds nothing until the week ends). Raises
    IllegalTransition for an order already finished, or no longer in one of the `expected`
    states. What the cancel owes people (`outbox`, and with `acknowledge_exception` the edit of
    the exception notice it was pressed on) is written in its transaction."""
    return await store.queue.cancel_order(
        ref,
        actor=actor,
        reason=reason,
        expected=expected,
        outbox=outbox,
        acknowledge_exception=acknowledge_exception,
    )


async def resume_with_reply(
    store: Store, ref: OrderRef, text: str, *, user: str, ts: str | None = None
) -> WorkOrder:
    """The requester answered in the thread: hand the answer to the run and requeue it.

    If the run is not waiting (it is still working), the message is left for its next step.
    """
    item = {"kind": "reply", "user": user, "text": text, "ts": ts}
    return await store.queue.add_to_inbox(ref, item, actor=user, expected=TAKES_REPLIES, resume=True)


def is_finished(order: WorkOrder) -> bool:
    return order.status in TERMINAL


async def claim(
    store: Store, settings: Settings, worker_id: str, *, now: datetime | None = None
) -> Claim:
    """Claim the next order admission lets through. `now` (the worker's clock) only picks the
    quota week; leases and due times run on the database's clock."""
    return await store.queue.claim(
        worker_id,
        lease_ttl_s=settings.engine.lease_ttl_s,
        admission=admission(settings, now or utcnow()),
    )


async def reap(store: Store, settings: Settings, *, actor: str) -> list[WorkOrder]:
    """Requeue (or fail, after `engine.max_attempts`) runs whose lease expired by the database's
    clock."""
    return await store.queue.reap_expired(max_lost=settings.engine.max_attempts, actor=actor)

"""The `transitions` table: one narrow row per order state change, written by `Store._move`
next to the change's audit event, and how long an order waited for its team's quota.

A quota wait is known from the order row: `wait_kind` is quota (set by the claim when it holds
the order back, or by the agent when a run stops for quota) and
`waiting_since` when the waiting began. The wait ends when the order leaves the queue (started,
cancelled, or in exception after waiting too long); that move's row carries the seconds waited
since the later of `waiting_since` and the order's last entry into the queue (`waiting_since` is
kept across a run, so that the run can tell how long the order has been waiting in all)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from workers.models import Transition, WorkOrderRow
from workers.states import SELF_APPROVED, WaitKind
from workers.workorder import Status


async def record_transition(
    s: AsyncSession,
    row: WorkOrderRow,
    source: Status,
    target: Status,
    *,
    seq: int,
    at: datetime,
    actor: str,
    audit: dict[str, Any],
    before: dict[str, Any],
) -> None:
    """Write the transition's row; `before` holds the order's wait columns before the move."""
    assert row.id is not None
    # When the order entered the state it leaves: its previous transition.
    entered = (
        await s.exec(
            select(Transition.at)
            .where(Transition.order_id == row.id)
            .order_by(col(Transition.seq).desc())
            .limit(1)
        )
    ).first()
    quota_wait_s = None
    since = before.get("waiting_since")
    if source is Status.QUEUED and since is not None and before["wait_kind"] == WaitKind.QUOTA:
        start = max(_utc(since), _utc(entered)) if entered is not None else _utc(since)
        quota_wait_s = max(0.0, (_utc(at) - start).total_seconds())
    # The column qualifies a move: an exception's kind, or a self-approval (counted apart).
    kind = audit.get("kind") if target is Status.EXCEPTION else None
    if target is Status.APPROVED and audit.get("self_approved"):
        kind = SELF_APPROVED
    s.add(
        Transition(
            order_id=row.id,
            seq=seq,
            at=at,
            actor=actor,
            from_status=source.value,
            to_status=target.value,
            entered_at=entered,
            exception_kind=str(kind) if kind is not None else None,
            quota_wait_s=quota_wait_s,
        )
    )


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything Delegate stores is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

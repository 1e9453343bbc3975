"""The figures `/metrics` reads from the shared database at scrape time (orders by state, the
queue, the outbox), so that every process reports the same numbers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from workers.models import WorkOrderRow
from workers.store.base import as_utc
from workers.store.outbox import outbox_figures_query
from workers.workorder import Status


@dataclass(frozen=True)
class Gauges:
    orders_by_state: dict[str, int]
    oldest_queued_at: datetime | None
    outbox_pending: int
    outbox_oldest_pending_at: datetime | None
    outbox_failed: int


async def read_gauges(engine: AsyncEngine) -> Gauges:
    async with engine.connect() as conn:
        counts = dict(
            (
                await conn.execute(
                    select(col(WorkOrderRow.status), func.count()).group_by(
                        col(WorkOrderRow.status)
                    )
                )
            ).all()
        )
        oldest = (
            await conn.execute(
                select(func.min(col(WorkOrderRow.updated_at))).where(
                    col(WorkOrderRow.status) == Status.QUEUED.value
                )
            )
        ).scalar()
        pending, oldest_pending, failed = (await conn.execute(outbox_figures_query())).one()
    return Gauges(
        {str(k): int(v) for k, v in counts.items()},
        as_utc(oldest),
        int(pending or 0),
        as_utc(oldest_pending),
        int(failed or 0),
    )

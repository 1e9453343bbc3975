"""Which orders reviewers decided on in a span of time (`delegate eval export`), from the narrow
`transitions` table and its index on `at`, not by parsing every order's audit trail."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from workers.models import Transition


async def decided_orders(engine: AsyncEngine, since: datetime, to: Collection[str]) -> list[int]:
    """Order numbers with a move into one of the states `to` at or after `since`, ascending."""
    query = (
        select(col(Transition.order_id))
        .where(col(Transition.to_status).in_(list(to)), col(Transition.at) >= since)
        .distinct()
    )
    async with engine.connect() as conn:
        return sorted(row[0] for row in (await conn.execute(query)).all())

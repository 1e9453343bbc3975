"""Feedback presses (Slack's thumbs up / down): one row per person and subject, the latest press
standing. Reading them for reports is workers.store.reporting.calibration's job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from workers.errors import NotFound
from workers.models import Deliverable, Feedback, IntakeSession, utcnow
from workers.store.base import OrderRef, StoreBase, order_number

Rating = Literal["up", "down"]


@dataclass(frozen=True)
class Pressed:
    """What a press left behind: the person's rating now, and what it was before (None: first)."""

    rating: Rating
    previous: str | None


class FeedbackStore(StoreBase):
    async def record_order_feedback(self, ref: OrderRef, *, user: str, rating: Rating) -> Pressed:
        """`user`'s rating of the order's deliverable (the latest one, the version they saw),
        replacing any earlier rating of theirs on the order."""
        number = order_number(ref)
        async with self.transaction() as s:
            await self._row(s, number)  # NotFound for an order that does not exist
            latest = (
                await s.exec(
                    select(Deliverable.id)
                    .where(Deliverable.order_id == number)
                    .order_by(col(Deliverable.id).desc())
                    .limit(1)
                )
            ).first()
            return await self._press(
                s, user, rating, order_id=number, deliverable_id=latest, session_id=None
            )

    async def record_chat_feedback(self, session_id: int, *, user: str, rating: Rating) -> Pressed:
        """`user`'s rating of the chat answer an intake session gave."""
        async with self.transaction() as s:
            if await s.get(IntakeSession, session_id) is None:
                raise NotFound(f"intake session {session_id} does not exist")
            return await self._press(
                s, user, rating, order_id=None, deliverable_id=None, session_id=session_id
            )

    async def intake_session_by_id(self, session_id: int) -> IntakeSession | None:
        async with self._sessions() as s:
            return await s.get(IntakeSession, session_id)

    async def _press(
        self,
        s: AsyncSession,
        user: str,
        rating: Rating,
        *,
        order_id: int | None,
        deliverable_id: int | None,
        session_id: int | None,
    ) -> Pressed:
        # Two presses by one person at once take turns (SQLite's BEGIN IMMEDIATE already does).
        await self._serialise(s, f"feedback:{order_id}:{session_id}:{user}")
        query = select(Feedback).where(Feedback.user == user)
        query = query.where(
            Feedback.order_id == order_id
            if order_id is not None
            else Feedback.intake_session_id == session_id
        )
        row = (await s.exec(query)).first()
        if row is None:
            s.add(
                Feedback(
                    order_id=order_id,
                    intake_session_id=session_id,
                    deliverable_id=deliverable_id,
                    user=user,
                    rating=rating,
                )
            )
            return Pressed(rating, None)
        previous = row.rating
        row.rating, row.deliverable_id, row.updated_at = rating, deliverable_id, utcnow()
        s.add(row)
        return Pressed(rating, previous)

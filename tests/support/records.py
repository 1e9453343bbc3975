"""Rows tests inspect that the product never reads back: an order's attempts and model calls, a
team's quota week. Read straight from the tables, so the Store keeps only what Delegate uses."""

from __future__ import annotations

from sqlmodel import col, select

from workers.models import LlmCall, RunAttempt, TeamSpend
from workers.store import Store
from workers.workorder import parse_order_id


def _number(ref: str | int) -> int:
    return ref if isinstance(ref, int) else parse_order_id(ref)


async def attempts(store: Store, ref: str | int) -> list[RunAttempt]:
    query = (
        select(RunAttempt)
        .where(RunAttempt.order_id == _number(ref))
        .order_by(col(RunAttempt.number))
    )
    async with store.db.sessions() as s:
        return list((await s.exec(query)).all())


async def llm_calls(store: Store, ref: str | int) -> list[LlmCall]:
    query = select(LlmCall).where(LlmCall.order_id == _number(ref)).order_by(col(LlmCall.id))
    async with store.db.sessions() as s:
        return list((await s.exec(query)).all())


async def team_spend(store: Store, team: str, week: str) -> TeamSpend | None:
    query = select(TeamSpend).where(TeamSpend.team == team, TeamSpend.week == week)
    async with store.db.sessions() as s:
        return (await s.exec(query)).first()

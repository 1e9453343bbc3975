"""Saying each digest exactly once: a digest is claimed by inserting (team, channel, week) into
`digest_posts`, whose unique key lets exactly one insert win on SQLite and PostgreSQL alike; a
claim whose post failed is released, and one left by a process that died while posting is taken
over after `STALE_CLAIM`. Also when Delegate was installed, so weeks before it are never due."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import SQLModel

import workers.models  # noqa: F401 (registers the tables)
from workers.db import reading

STALE_CLAIM = timedelta(minutes=15)
# A digest_posts state: the schedule passed over an empty week (posts.state is otherwise
# 'claimed' or 'posted').
SKIPPED = "skipped"
_posts = SQLModel.metadata.tables["digest_posts"]


_INSTALLED = SQLModel.metadata.tables["installation"]
# Data older than the installation record (an install from before migration 0013, or imported
# history) means Delegate was there by then.
_EARLIEST_DATA = (
    SQLModel.metadata.tables["intake_sessions"].c.created_at,
    SQLModel.metadata.tables["llm_calls"].c.created_at,
    SQLModel.metadata.tables["transitions"].c.at,
)


async def installed_at(engine: AsyncEngine) -> datetime | None:
    """When Delegate was installed on this database: the time migration 0013 recorded, or its
    earliest intake dialogue, model call or state change if older; None if neither exists."""
    found = []
    async with reading(engine).connect() as conn:
        for column in (_INSTALLED.c.installed_at, *_EARLIEST_DATA):
            found.append((await conn.execute(select(func.min(column)))).scalar())
    moments = [_as_utc(value) for value in found if value is not None]
    return min(moments) if moments else None


def _as_utc(value: Any) -> datetime:
    # SQLite returns MIN() over a timestamp column as the stored text.
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class Claim:
    team: str
    channel: str
    week: str
    id: int


async def claim(
    engine: AsyncEngine,
    *,
    team: str,
    channel: str,
    week: str,
    owner: str,
    now: datetime,
    over_skipped: bool = False,
) -> Claim | None:
    """Claim the digest for (team, channel, week); None if another process has (or posted) it.
    `over_skipped`: a week the schedule skipped as empty may be claimed (someone asked for it)."""
    async with engine.begin() as conn:
        return await _claim(
            conn,
            team=team,
            channel=channel,
            week=week,
            owner=owner,
            now=now,
            over_skipped=over_skipped,
        )


async def _claim(
    conn: Any,
    *,
    team: str,
    channel: str,
    week: str,
    owner: str,
    now: datetime,
    over_skipped: bool = False,
) -> Claim | None:
    values = {
        "team": team,
        "channel": channel,
        "week": week,
        "state": "claimed",
        "claimed_by": owner,
        "claimed_at": now,
    }
    dialect = conn.dialect.name
    statement: Any
    if dialect == "postgresql":
        statement = pg_insert(_posts).values(**values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite_insert(_posts).values(**values).on_conflict_do_nothing()
    else:  # pragma: no cover - Delegate runs on the two above
        statement = insert(_posts).values(**values)
    inserted = await conn.execute(statement)
    key = and_(_posts.c.team == team, _posts.c.channel == channel, _posts.c.week == week)
    if inserted.rowcount != 1:
        # Taken over only if its owner died mid-post (claimed, never posted, long ago), or if
        # it was skipped as empty and is now asked for.
        abandoned = and_(_posts.c.state == "claimed", _posts.c.claimed_at < now - STALE_CLAIM)
        takeable = or_(abandoned, _posts.c.state == SKIPPED) if over_skipped else abandoned
        taken = await conn.execute(
            update(_posts)
            .where(key, takeable)
            .values(state="claimed", claimed_by=owner, claimed_at=now)
        )
        if taken.rowcount != 1:
            return None
    row_id = (await conn.execute(select(_posts.c.id).where(key))).scalar_one()
    return Claim(team, channel, week, int(row_id))


async def mark_posted(
    engine: AsyncEngine, claimed: Claim, *, ts: str | None, now: datetime
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            update(_posts)
            .where(_posts.c.id == claimed.id)
            .values(state="posted", ts=ts, posted_at=now)
        )


async def mark_skipped(engine: AsyncEngine, claimed: Claim, *, now: datetime) -> None:
    """Record that the schedule passed over this (empty) week, so it is not weighed again."""
    async with engine.begin() as conn:
        await conn.execute(
            update(_posts).where(_posts.c.id == claimed.id).values(state=SKIPPED, posted_at=now)
        )


async def release(engine: AsyncEngine, claimed: Claim) -> None:
    """Give a claim back after a failed post, so the next sweep tries again."""
    async with engine.begin() as conn:
        await conn.execute(
            delete(_posts).where(_posts.c.id == claimed.id, _posts.c.state == "claimed")
        )


async def claim_all(
    engine: AsyncEngine, wanted: Any, *, owner: str, now: datetime
) -> list[Claim | None]:
    claims: list[Claim | None] = []
    async with engine.begin() as conn:
        # On SQLite this transaction began IMMEDIATE: it already is the only writer.
        for team, channel, week in wanted:
            claims.append(
                await _claim(conn, team=team, channel=channel, week=week, owner=owner, now=now)
            )
    return claims

"""The leads' figures for a span of time, read from closed days summarised once where possible.

Summing a year of model calls and transitions row by row takes seconds (SQLite groups a million
calls with a sort). A UTC day's figures stop changing once the day is over and its model calls
are settled, so `summarise_closed_days` summarises each such day once, per team, into the
metric_day_* tables. `summary` then reads a span as those stored days plus the rows of whatever
is not summarised: the partial days at either end, and days not summarised yet. Both paths build
the same `Summary` from the same grouping, so a figure does not depend on which one served a day.

A summary keeps what an order was when its day was summarised: its team, workload class and
rework count (first-pass approvals). Spend on orders that ended without approval depends on how
each order ends, which can happen after its day closed, so `unapproved_spend` always reads the
calls (by index, order by order).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Float, and_, case, func, insert, literal, or_, select, text
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import SQLModel

import workers.models  # noqa: F401 (registers the tables)
from workers.db import reading
from workers.store.sweeps import single_runner
from workers.workorder import Status

log = logging.getLogger(__name__)

ALL = "all"
SWEEP_INTERVAL_S = 3600
# Past this span, unapproved_spend looks each unapproved order's calls up instead of reading
# every call of the span.
LOOK_UP_ORDERS_AFTER = timedelta(days=31)
# A day is summarised this long after it ends, so that moves and calls stamped just before
# midnight by a slow transaction, or by a host whose clock is behind, are in it.
CLOSING_MARGIN = timedelta(hours=1)

_moves = SQLModel.metadata.tables["transitions"]
_orders = SQLModel.metadata.tables["work_orders"]
_calls = SQLModel.metadata.tables["llm_calls"]
_days = SQLModel.metadata.tables["metric_days"]
_day_spend = SQLModel.metadata.tables["metric_day_spend"]
_day_moves = SQLModel.metadata.tables["metric_day_moves"]
_day_people = SQLModel.metadata.tables["metric_day_people"]
_day_durations = SQLModel.metadata.tables["metric_day_durations"]

# What a day keeps of each Summary tally: its table, the columns of its key, the columns it adds
# up, and the Summary field.
_TALLIES = (
    (_day_spend, ("role", "workload_class", "model"), ("calls", "micro_usd"), "spend"),
    (_day_moves, ("from_status", "to_status", "exception_kind"), ("moves", "first_pass"), "moves"),
    (_day_people, ("user_id",), ("confirmed", "finished", "decisions", "approvals"), "people"),
)

NOT_APPROVED = (Status.REJECTED.value, Status.CANCELLED.value, Status.EXCEPTION.value)
DECISIONS = (Status.APPROVED.value, Status.REJECTED.value, Status.CHANGES_REQUESTED.value)
# Every move into these is counted (approvals, rejections, cancellations, exceptions).
_COUNTED = (
    Status.APPROVED.value,
    Status.REJECTED.value,
    Status.CANCELLED.value,
    Status.EXCEPTION.value,
)
# The kinds of duration a summary keeps.
CYCLE, REVIEW, QUEUE, QUOTA = "cycle", "review", "queue", "quota"


@dataclass
class Summary:
    """What a span contributes to the figures; summaries of adjacent spans add up."""

    # (role, workload class, model) -> [calls, micro-USD]
    spend: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)
    # (from, to, exception kind or '') -> [moves, first-pass approvals]
    moves: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)
    # user -> [orders confirmed as requester, approved as requester, review decisions,
    #          approvals among those decisions]
    people: dict[str, list[int]] = field(default_factory=dict)
    # CYCLE, REVIEW, QUEUE or QUOTA -> seconds
    durations: dict[str, list[float]] = field(default_factory=dict)

    def add(self, other: Summary) -> Summary:
        pairs: tuple[tuple[dict[Any, list[int]], dict[Any, list[int]]], ...] = (
            (self.spend, other.spend),
            (self.moves, other.moves),
            (self.people, other.people),
        )
        for mine, theirs in pairs:
            for key, values in theirs.items():
                into = mine.setdefault(key, [0] * len(values))
                for i, value in enumerate(values):
                    into[i] += value
        for kind, seconds in other.durations.items():
            self.durations.setdefault(kind, []).extend(seconds)
        return self


def _seconds_between(dialect: str, start: Any, end: Any) -> ColumnElement[Any]:
    """Seconds from `start` to `end`, in SQL (NULL when either is)."""
    if dialect == "postgresql":
        return sql_cast(func.extract("epoch", end - start), Float)  # not numeric: no Decimals
    # SQLite keeps timestamps as ISO text; julianday() reads them to within microseconds.
    return (func.julianday(end) - func.julianday(start)) * 86400.0


# ----------------------------------------------------------------------------- reading a span


@asynccontextmanager
async def reading_figures(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read-only connection for the figures: on SQLite a plain BEGIN, so that summarising a
    long period never holds the write lock the engine needs. On PostgreSQL, for its transaction:
    JIT compilation off (these queries are estimated expensive enough to be compiled, and
    compiling took longer than running them: 0.46 of 0.76 s for a year of transitions), and
    random_page_cost for data in memory, as the recent rows these read are: with the default,
    a day's 2,700 calls were hash-joined to all 100,000 orders (62 ms) rather than each looked
    up by key (13 ms)."""
    async with reading(engine).connect() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SET LOCAL jit = off"))
            await conn.execute(text("SET LOCAL random_page_cost = 1.1"))
        yield conn


async def summary(conn: AsyncConnection, team: str, start: datetime, end: datetime) -> Summary:
    """`team`'s (or, for ALL, everyone's) figures over [start, end): stored days where the span
    covers whole summarised days, the rows for the rest."""
    whole = _whole_days(start, end)
    stored: list[tuple[date, date]] = []
    if whole is not None:
        first, last = whole
        rows = await conn.execute(
            select(_days.c.day).where(_days.c.day >= _key(first), _days.c.day < _key(last))
        )
        stored = _runs(sorted(date.fromisoformat(day) for (day,) in rows))
    result = Summary()
    for stored_first, stored_end in stored:
        result.add(await _stored(conn, team, stored_first, stored_end))
    for raw_start, raw_end in _gaps(start, end, stored):
        by_team = await summarise_rows(conn, raw_start, raw_end, team=team)
        for part in by_team.values():
            result.add(part)
    return result


async def unapproved_spend(conn: AsyncConnection, team: str, start: datetime, end: datetime) -> int:
    """Spend in [start, end) on orders that ended rejected, cancelled or in exception."""
    unapproved = _orders.c.status.in_(NOT_APPROVED)
    in_span = (_calls.c.created_at >= start, _calls.c.created_at < end)
    if end - start <= LOOK_UP_ORDERS_AFTER:
        # A few weeks' calls: read them, each with its order.
        query = (
            select(func.sum(_calls.c.cost_micro_usd))
            .select_from(_calls.join(_orders, _orders.c.id == _calls.c.order_id))
            .where(unapproved, *in_span)
        )
    else:
        # Longer: the orders first, then each one's calls in the span from the index by order
        # (SQLite would otherwise read every call of the span to find them).
        per_order = (
            select(func.sum(_calls.c.cost_micro_usd))
            .where(_calls.c.order_id == _orders.c.id, *in_span)
            .scalar_subquery()
        )
        query = select(func.sum(per_order)).where(unapproved)
    if team != ALL:
        query = query.where(_orders.c.team == team)
    return int((await conn.execute(query)).scalar() or 0)


def _whole_days(start: datetime, end: datetime) -> tuple[date, date] | None:
    """The UTC days [first, last) wholly inside [start, end), if any."""
    start, end = _utc(start), _utc(end)
    first = start.date() if start.time() == time() else start.date() + timedelta(days=1)
    last = end.date()
    return (first, last) if first < last else None


def _runs(days: list[date]) -> list[tuple[date, date]]:
    """Consecutive days as [first, end) runs."""
    runs: list[tuple[date, date]] = []
    for day in days:
        if runs and runs[-1][1] == day:
            runs[-1] = (runs[-1][0], day + timedelta(days=1))
        else:
            runs.append((day, day + timedelta(days=1)))
    return runs


def _gaps(
    start: datetime, end: datetime, stored: list[tuple[date, date]]
) -> list[tuple[datetime, datetime]]:
    """The parts of [start, end) the stored runs do not cover."""
    gaps: list[tuple[datetime, datetime]] = []
    cursor = start
    for first, last in stored:
        run_start, run_end = _midnight(first), _midnight(last)
        if cursor < run_start:
            gaps.append((cursor, run_start))
        cursor = run_end
    if cursor < end:
        gaps.append((cursor, end))
    return gaps


async def _stored(conn: AsyncConnection, team: str, first: date, end: date) -> Summary:
    result = Summary()

    def within(table: Any, query: Any) -> Any:
        query = query.where(table.c.day >= _key(first), table.c.day < _key(end))
        return query if team == ALL else query.where(table.c.team == team)

    for table, keys, sums, name in _TALLIES:
        by = [table.c[key] for key in keys]
        query = select(*by, *(func.sum(table.c[column]) for column in sums)).group_by(*by)
        tally: dict[Any, list[int]] = getattr(result, name)
        for row in await conn.execute(within(table, query)):
            key = tuple(row[: len(keys)]) if len(keys) > 1 else row[0]
            tally[key] = [int(value) for value in row[len(keys) :]]
    d = _day_durations.c
    for kind, seconds in await conn.execute(within(_day_durations, select(d.kind, d.seconds))):
        result.durations.setdefault(kind, []).extend(seconds)
    return result


# ----------------------------------------------------------------------------- from the rows


async def summarise_rows(
    conn: AsyncConnection, start: datetime, end: datetime, *, team: str = ALL
) -> dict[str, Summary]:
    """The figures of [start, end) from the rows themselves, per team ('' for spend no team
    paid for); only `team`'s unless ALL."""
    teams: dict[str, Summary] = {}

    def of(name: str | None) -> Summary:
        return teams.setdefault(name or "", Summary())

    for name, role, workload, model, calls, cost in await conn.execute(_spend(start, end, team)):
        of(name).spend[(role, workload, model)] = [int(calls), int(cost or 0)]

    for name, src, dst, kind, requester, reviewer, count, passed in await conn.execute(
        _counted(start, end, team)
    ):
        part = of(name)
        key = (src, dst, kind or "")
        totals = part.moves.setdefault(key, [0, 0])
        totals[0] += count
        approved = dst == Status.APPROVED.value
        if approved:
            totals[1] += int(passed or 0)
        if src == Status.AWAITING_CONFIRMATION.value and dst == Status.QUEUED.value:
            part.people.setdefault(requester, [0, 0, 0, 0])[0] += count
        if approved:
            part.people.setdefault(requester, [0, 0, 0, 0])[1] += count
        if src == Status.AWAITING_REVIEW.value and dst in DECISIONS:
            person = part.people.setdefault(reviewer, [0, 0, 0, 0])
            person[2] += count
            if approved:
                person[3] += count

    kinds = (CYCLE, REVIEW, QUEUE, QUOTA)
    for name, *values in await conn.execute(_durations(start, end, team, conn.dialect.name)):
        part = of(name)
        for kind, value in zip(kinds, values, strict=True):
            if value is not None:
                part.durations.setdefault(kind, []).append(float(value))
    return teams


# Every call with its order (an intake call may have none), charged to the team that paid: its
# order's, or for an intake call made before its order existed, its requester's team (the one
# `llm_calls.team` names). Every move with its order.
CALLS = _calls.outerjoin(_orders, _orders.c.id == _calls.c.order_id)
PAID_BY = func.coalesce(_orders.c.team, _calls.c.team)
MOVES = _moves.join(_orders, _orders.c.id == _moves.c.order_id)


def calls_in_span(start: datetime, end: datetime, team: str) -> list[ColumnElement[bool]]:
    """What picks `team`'s (or everyone's) calls in [start, end) from CALLS."""
    where = [_calls.c.created_at >= start, _calls.c.created_at < end]
    return where if team == ALL else [*where, PAID_BY == team]


def moves_in_span(start: datetime, end: datetime, team: str) -> list[ColumnElement[bool]]:
    """What picks `team`'s (or everyone's) moves in [start, end) from MOVES."""
    where = [_moves.c.at >= start, _moves.c.at < end]
    return where if team == ALL else [*where, _orders.c.team == team]


def _spend(start: datetime, end: datetime, team: str) -> Any:
    """Calls grouped by the team that paid and the route."""
    workload = func.coalesce(_orders.c.workload_class, "none")
    keys = (PAID_BY, _calls.c.role, workload, _calls.c.model)
    return (
        select(*keys, func.count(), func.sum(_calls.c.cost_micro_usd))
        .select_from(CALLS)
        .where(*calls_in_span(start, end, team))
        .group_by(*keys)
    )


def _counted(start: datetime, end: datetime, team: str) -> Any:
    """The moves the figures count, grouped by team, move, requester and reviewer (who decided a
    review: the actor of a move out of awaiting review)."""
    src, dst = _moves.c.from_status, _moves.c.to_status
    reviewer = case((src == Status.AWAITING_REVIEW.value, _moves.c.actor), else_=None)
    keys = (_orders.c.team, src, dst, _moves.c.exception_kind, _orders.c.requester, reviewer)
    counted = or_(
        and_(src == Status.AWAITING_CONFIRMATION.value, dst == Status.QUEUED.value),
        src == Status.AWAITING_REVIEW.value,
        dst.in_(_COUNTED),
    )
    first_pass = func.sum(case((_orders.c.rework_count == 0, 1), else_=0))
    return (
        select(*keys, func.count(), first_pass)
        .select_from(MOVES)
        .where(counted, *moves_in_span(start, end, team))
        .group_by(*keys)
    )


def _durations(start: datetime, end: datetime, team: str, dialect: str) -> Any:
    """One row per timed move: cycle (first confirmation to approval), review (entering
    awaiting review to the decision), queue wait (entering queued to starting) and quota wait
    (recorded on the move). Seconds are computed in SQL: reading the timestamps into Python
    costs more than the query."""
    src, dst, moved = _moves.c.from_status, _moves.c.to_status, _moves.c.at
    approved = dst == Status.APPROVED.value
    decided = and_(src == Status.AWAITING_REVIEW.value, dst.in_(DECISIONS))
    started = and_(src == Status.QUEUED.value, dst == Status.RUNNING.value)
    earlier = _moves.alias("c")
    confirmed = (
        select(func.min(earlier.c.at))
        .where(
            earlier.c.order_id == _moves.c.order_id,
            earlier.c.to_status == Status.QUEUED.value,
            earlier.c.from_status == Status.AWAITING_CONFIRMATION.value,
            earlier.c.seq < _moves.c.seq,
        )
        .scalar_subquery()
    )
    return (
        select(
            _orders.c.team,
            case((approved, _seconds_between(dialect, confirmed, moved)), else_=None),
            case((decided, _seconds_between(dialect, _moves.c.entered_at, moved)), else_=None),
            case((started, _seconds_between(dialect, _moves.c.entered_at, moved)), else_=None),
            _moves.c.quota_wait_s,
        )
        .select_from(MOVES)
        .where(
            or_(approved, decided, started, _moves.c.quota_wait_s.is_not(None)),
            *moves_in_span(start, end, team),
        )
    )


# ----------------------------------------------------------------------------- summarising days


async def sweep(engine: AsyncEngine, *, stop: asyncio.Event | None = None) -> None:
    """The scheduled sweep: summarise what closed since the last one (on one process at a
    time; on its first run, every past day), until `stop` is set (the next sweep goes on)."""
    async with single_runner(engine, "metric-days") as mine:
        if mine:
            await summarise_closed_days(engine, stop=stop)


async def summarise_closed_days(
    engine: AsyncEngine,
    *,
    now: datetime | None = None,
    limit: int | None = None,
    stop: asyncio.Event | None = None,
) -> list[date]:
    """Summarise every closed UTC day not summarised yet, oldest first (at most `limit`), and
    return them. A day is closed an hour after it ends, once none of its model calls is still
    pending (a call's cost is known when it settles). Safe to run in several processes at
    once: a day is written by whichever claims it first, in one transaction."""
    now = _utc(now or datetime.now(UTC))
    last = (now - CLOSING_MARGIN).date()  # days before this one have closed
    async with reading_figures(engine) as conn:
        earliest = await _earliest(conn)
        if earliest is None or earliest >= last:
            return []
        done = {
            date.fromisoformat(day)
            for (day,) in await conn.execute(
                select(_days.c.day).where(_days.c.day >= _key(earliest))
            )
        }
    summarised: list[date] = []
    day = earliest
    while day < last and (limit is None or len(summarised) < limit):
        if stop is not None and stop.is_set():  # a shutdown: between two days, never mid-day
            break
        if day not in done and await _summarise_day(engine, day):
            summarised.append(day)
        day += timedelta(days=1)
    if summarised:
        log.info("summarised %d closed day(s) of metrics, up to %s", len(summarised), day)
    return summarised


async def _earliest(conn: AsyncConnection) -> date | None:
    firsts = [
        (await conn.execute(select(func.min(_calls.c.created_at)))).scalar(),
        (await conn.execute(select(func.min(_moves.c.at)))).scalar(),
    ]
    found = [_as_datetime(value) for value in firsts if value is not None]
    return min(found).date() if found else None


async def _summarise_day(engine: AsyncEngine, day: date) -> bool:
    start, end = _midnight(day), _midnight(day + timedelta(days=1))
    async with reading_figures(engine) as conn:
        pending = await conn.execute(
            select(literal(1))
            .where(
                _calls.c.created_at >= start,
                _calls.c.created_at < end,
                _calls.c.outcome == "pending",
            )
            .limit(1)
        )
        if pending.first() is not None:
            return False  # not closed yet: a call's cost is still to come
        teams = await summarise_rows(conn, start, end)
    key = _key(day)
    upsert = sqlite_insert if engine.dialect.name == "sqlite" else pg_insert
    async with engine.begin() as conn:
        claim = upsert(_days).values(day=key, summarised_at=datetime.now(UTC))
        if (await conn.execute(claim.on_conflict_do_nothing())).rowcount != 1:
            return False  # another process summarised it
        for table, rows in _stored_rows(key, teams):
            if rows:
                await conn.execute(insert(table), rows)
    return True


def _stored_rows(key: str, teams: dict[str, Summary]) -> Iterable[tuple[Any, list[dict[str, Any]]]]:
    for table, keys, sums, name in _TALLIES:
        rows = []
        for team, part in teams.items():
            for tally_key, values in getattr(part, name).items():
                parts = tally_key if isinstance(tally_key, tuple) else (tally_key,)
                rows.append(
                    {"day": key, "team": team}
                    | dict(zip(keys, parts, strict=True))
                    | dict(zip(sums, values, strict=True))
                )
        yield table, rows
    yield (
        _day_durations,
        [
            {"day": key, "team": team, "kind": kind, "seconds": seconds}
            for team, part in teams.items()
            for kind, seconds in part.durations.items()
        ],
    )


def _key(day: date) -> str:
    return day.isoformat()


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _as_datetime(value: Any) -> datetime:
    # SQLite returns MIN() over a timestamp column as the stored text.
    return _utc(datetime.fromisoformat(value) if isinstance(value, str) else value)

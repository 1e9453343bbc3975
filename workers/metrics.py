"""What delegation delivered and what it cost, for one team and one period.

Used by the weekly digest, the CLI (`delegate digest`) and App Home. Every figure is aggregated in
SQL that runs unchanged on SQLite and PostgreSQL; only percentiles are taken in Python, over the
one sorted column of durations they need.

Where the figures come from:

- **requests, delegations, chat answers**: intake dialogues started in the period
  (`intake_sessions.kind`); a dialogue's team is its requester's team in the configuration.
- **orders confirmed, finished outcomes, rejections, changes requested, cancellations,
  exceptions**: state transitions that happened in the period, read from the narrow
  `transitions` table `Store._move` writes next to each transition's audit event (migration
  0009 backfilled it from the audit trail). Confirmed is
  *awaiting confirmation → queued*; a cancellation counts only once the order had been confirmed
  (a proposed card that is cancelled is a declined draft, not cancelled work).
- **first-pass approval rate**: orders approved without any *request changes*, over all orders
  the reviewer closed (approved or rejected) in the period. **Rework rate**: review decisions
  that asked for changes, over all review decisions in the period.
- **cycle time**: first confirmation → approval, for orders approved in the period.
  **Review latency**: entering *awaiting review* → the reviewer's decision.
  **Queue wait**: entering *queued* → a worker starting it (quota, per-person run limits and busy
  workers all show up here). **Time waiting for quota**: the part of the queue time the order
  was held back because its team's week was spent, counted when the wait ends (the order
  starts, is cancelled, or gives up waiting); workers.store.transitions records it.
- **spend**: model calls made in the period, charged to their order's team. An intake call made
  before an order exists is charged to the team its requester belongs to (`llm_calls.team`, the
  team whose weekly quota paid for it: the model router sets it), so a team's spend includes
  the dialogues of its people; a call with no team at all (recorded before intake calls were
  charged) counts only for `all`. **Cost per finished outcome**
  is all spend in the period over the outcomes finished in it: what each finished, approved piece
  of work cost, including the work that did not make it. **Spend not approved** is the part of
  the period's spend on orders that ended rejected, cancelled or in exception.

Money is integer micro-dollars throughout, as stored.

One module on purpose: every figure shares the period, team and transition queries, and the
digest, App Home and the CLI must all read the same numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import Float, and_, case, func, literal, or_, select, text
from sqlalchemy import cast as sql_cast
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import SQLModel

import workers.models  # noqa: F401 (registers the tables)
from workers.config import Settings
from workers.db import reading
from workers.states import IntakeKind
from workers.workorder import Status

ALL = "all"
TOP_N = 5

_moves = SQLModel.metadata.tables["transitions"]
_orders = SQLModel.metadata.tables["work_orders"]
_calls = SQLModel.metadata.tables["llm_calls"]
_intake = SQLModel.metadata.tables["intake_sessions"]

_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")
# Ended without an approval: their spend bought nothing the reviewer accepted.
_NOT_APPROVED = (Status.REJECTED.value, Status.CANCELLED.value, Status.EXCEPTION.value)
_DECISIONS = (Status.APPROVED.value, Status.REJECTED.value, Status.CHANGES_REQUESTED.value)
# Every move into these is counted (approvals, rejections, cancellations, exceptions).
_COUNTED = (
    Status.APPROVED.value,
    Status.REJECTED.value,
    Status.CANCELLED.value,
    Status.EXCEPTION.value,
)
_BEFORE_CONFIRMATION = (Status.DRAFTING.value, Status.AWAITING_CONFIRMATION.value)


@dataclass(frozen=True)
class Period:
    """A half-open span of time [start, end), named by `label` (an ISO week such as '2026-W47')."""

    label: str
    start: datetime
    end: datetime
    timezone: str = "UTC"

    @classmethod
    def iso_week(cls, label: str, timezone: str = "UTC") -> Period:
        """Monday 00:00 to the next Monday 00:00 in `timezone` (so 167 or 169 hours across a
        daylight-saving change)."""
        match = _WEEK.match(label.strip())
        if not match:
            raise ValueError(f"expected an ISO week such as 2026-W47, got {label!r}")
        try:
            monday = date.fromisocalendar(int(match[1]), int(match[2]), 1)
        except ValueError as exc:
            raise ValueError(f"{label!r} is not a week: {exc}") from None
        return cls._week_from(monday, timezone)

    @classmethod
    def week_of(cls, moment: datetime, timezone: str = "UTC") -> Period:
        """The ISO week, in `timezone`, that contains `moment`."""
        local = moment.astimezone(ZoneInfo(timezone)).date()
        return cls._week_from(local - timedelta(days=local.weekday()), timezone)

    @classmethod
    def last_complete_week(cls, now: datetime, timezone: str = "UTC") -> Period:
        return cls.week_of(now, timezone).previous()

    @classmethod
    def _week_from(cls, monday: date, timezone: str) -> Period:
        zone = ZoneInfo(timezone)
        start = datetime.combine(monday, time(), tzinfo=zone).astimezone(UTC)
        end = datetime.combine(monday + timedelta(days=7), time(), tzinfo=zone).astimezone(UTC)
        year, week, _ = monday.isocalendar()
        return cls(f"{year}-W{week:02d}", start, end, timezone)

    @property
    def is_week(self) -> bool:
        return bool(_WEEK.match(self.label))

    def previous(self) -> Period:
        """The period just before: the previous ISO week, or a span of the same length."""
        if self.is_week:
            monday = self.start.astimezone(ZoneInfo(self.timezone)).date()
            return self._week_from(monday - timedelta(days=7), self.timezone)
        length = self.end - self.start
        return Period(f"before {self.label}", self.start - length, self.start, self.timezone)

    def weeks_back(self, count: int) -> list[Period]:
        """The `count` weeks ending with this one, oldest first."""
        weeks = [self]
        while len(weeks) < count:
            weeks.append(weeks[-1].previous())
        return weeks[::-1]


@dataclass(frozen=True)
class RouteSpend:
    role: str
    workload_class: str
    model: str
    calls: int
    micro_usd: int


@dataclass(frozen=True)
class PersonCount:
    user: str
    count: int
    finished: int = 0


@dataclass
class TeamMetrics:
    team: str
    period: Period
    requests_received: int = 0
    delegations: int = 0
    chat_answers: int = 0
    orders_confirmed: int = 0
    finished_outcomes: int = 0
    first_pass_approvals: int = 0
    review_decisions: int = 0
    changes_requested: int = 0
    rejections: int = 0
    cancellations: int = 0
    exceptions: dict[str, int] = field(default_factory=dict)
    cycle_time_p50_s: float | None = None
    cycle_time_p90_s: float | None = None
    review_latency_p50_s: float | None = None
    queue_wait_total_s: float = 0.0
    queue_wait_p50_s: float | None = None
    quota_wait_total_s: float = 0.0
    quota_waits: int = 0
    spend_micro_usd: int = 0
    unapproved_spend_micro_usd: int = 0
    spend_by_class: dict[str, int] = field(default_factory=dict)
    spend_by_role: dict[str, int] = field(default_factory=dict)
    spend_by_route: list[RouteSpend] = field(default_factory=list)
    top_requesters: list[PersonCount] = field(default_factory=list)
    top_reviewers: list[PersonCount] = field(default_factory=list)

    @property
    def exception_count(self) -> int:
        return sum(self.exceptions.values())

    @property
    def first_pass_approval_rate(self) -> float | None:
        closed = self.finished_outcomes + self.rejections
        return self.first_pass_approvals / closed if closed else None

    @property
    def rework_rate(self) -> float | None:
        return self.changes_requested / self.review_decisions if self.review_decisions else None

    @property
    def delegation_ratio(self) -> float | None:
        """Delegations among the dialogues that turned out to be either delegation or chat."""
        total = self.delegations + self.chat_answers
        return self.delegations / total if total else None

    @property
    def cost_per_finished_outcome_micro_usd(self) -> int | None:
        if not self.finished_outcomes:
            return None
        return round(self.spend_micro_usd / self.finished_outcomes)

    @property
    def is_empty(self) -> bool:
        return not (
            self.requests_received
            or self.orders_confirmed
            or self.finished_outcomes
            or self.review_decisions
            or self.cancellations
            or self.exceptions
            or self.spend_micro_usd
        )

    def as_dict(self) -> dict[str, Any]:
        """Flat, JSON-ready figures (money in USD)."""
        return {
            "team": self.team,
            "week": self.period.label,
            "start": self.period.start.isoformat(),
            "end": self.period.end.isoformat(),
            "timezone": self.period.timezone,
            "requests_received": self.requests_received,
            "delegations": self.delegations,
            "chat_answers": self.chat_answers,
            "delegation_ratio": _round(self.delegation_ratio),
            "orders_confirmed": self.orders_confirmed,
            "finished_outcomes": self.finished_outcomes,
            "first_pass_approval_rate": _round(self.first_pass_approval_rate),
            "rework_rate": _round(self.rework_rate),
            "review_decisions": self.review_decisions,
            "changes_requested": self.changes_requested,
            "rejections": self.rejections,
            "cancellations": self.cancellations,
            "exceptions": dict(sorted(self.exceptions.items())),
            "cycle_time_p50_s": _round(self.cycle_time_p50_s, 1),
            "cycle_time_p90_s": _round(self.cycle_time_p90_s, 1),
            "review_latency_p50_s": _round(self.review_latency_p50_s, 1),
            "queue_wait_total_s": _round(self.queue_wait_total_s, 1),
            "queue_wait_p50_s": _round(self.queue_wait_p50_s, 1),
            "quota_wait_total_s": _round(self.quota_wait_total_s, 1),
            "quota_waits": self.quota_waits,
            "total_spend_usd": usd(self.spend_micro_usd),
            "cost_per_finished_outcome_usd": usd(self.cost_per_finished_outcome_micro_usd),
            "unapproved_spend_usd": usd(self.unapproved_spend_micro_usd),
            "spend_by_class_usd": {k: usd(v) for k, v in sorted(self.spend_by_class.items())},
            "spend_by_role_usd": {k: usd(v) for k, v in sorted(self.spend_by_role.items())},
            "spend_by_route": [{**asdict(r), "usd": usd(r.micro_usd)} for r in self.spend_by_route],
            "top_requesters": [asdict(p) for p in self.top_requesters],
            "top_reviewers": [asdict(p) for p in self.top_reviewers],
        }


# The figures a comparison reports a change for (None when either side has no value).
COMPARED = (
    "requests_received",
    "delegations",
    "chat_answers",
    "delegation_ratio",
    "orders_confirmed",
    "finished_outcomes",
    "first_pass_approval_rate",
    "rework_rate",
    "rejections",
    "cancellations",
    "exception_count",
    "cycle_time_p50_s",
    "cycle_time_p90_s",
    "review_latency_p50_s",
    "queue_wait_total_s",
    "quota_wait_total_s",
    "spend_micro_usd",
    "cost_per_finished_outcome_micro_usd",
    "unapproved_spend_micro_usd",
)


@dataclass(frozen=True)
class Comparison:
    current: TeamMetrics
    previous: TeamMetrics

    def change(self, name: str) -> float | int | None:
        now, before = getattr(self.current, name), getattr(self.previous, name)
        if now is None or before is None:
            return None
        return cast(float | int, now - before)

    def changes(self) -> dict[str, float | int | None]:
        return {name: self.change(name) for name in COMPARED}


def usd(micro: int | None) -> float | None:
    return None if micro is None else round(micro / 1_000_000, 6)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _seconds(dialect: str, start: Any, end: Any) -> ColumnElement[Any]:
    """Seconds from `start` to `end`, in SQL (NULL when either is)."""
    if dialect == "postgresql":
        return sql_cast(func.extract("epoch", end - start), Float)  # not numeric: no Decimals
    # SQLite keeps timestamps as ISO text; julianday() reads them to within microseconds.
    return (func.julianday(end) - func.julianday(start)) * 86400.0


# ----------------------------------------------------------------------------- SQL


def _transitions(team: str, period: Period, *, people: bool = True) -> Any:
    """Order state changes in the period, one row each; with `people`, the order's requester
    and rework count too. The join to the orders is left out when nothing needs it (every
    team, no people), which saves a key lookup per transition."""
    src = _moves.c.from_status
    columns: list[Any] = [
        _moves.c.order_id,
        _moves.c.seq,
        _moves.c.at,
        src.label("src"),
        _moves.c.to_status.label("dst"),
        _moves.c.entered_at,
        _moves.c.exception_kind.label("xkind"),
        _moves.c.quota_wait_s,
        # Who decided a review (the actor of a transition out of awaiting review).
        case((src == Status.AWAITING_REVIEW.value, _moves.c.actor), else_=None).label("reviewer"),
    ]
    if people:
        columns += [_orders.c.requester, _orders.c.rework_count]
    query = select(*columns).where(_moves.c.at >= period.start, _moves.c.at < period.end)
    if people or team != ALL:
        query = query.select_from(_moves.join(_orders, _orders.c.id == _moves.c.order_id))
    if team != ALL:
        query = query.where(_orders.c.team == team)
    return query.subquery("t")


def _earlier_transition(
    t: Any, aggregate: Any, *, to: str, source: str | None = None
) -> ColumnElement[Any]:
    """When the same order last (max) or first (min) moved to `to` before this transition
    (one index range of ix_transitions_order_to)."""
    c = _moves.alias("c")
    where = [c.c.order_id == t.c.order_id, c.c.to_status == to, c.c.seq < t.c.seq]
    if source is not None:
        where.append(c.c.from_status == source)
    return select(aggregate(c.c.at)).where(*where).scalar_subquery()


def _intake_filter(settings: Settings, team: str) -> ColumnElement[bool] | None:
    if team == ALL:
        return None
    if team == "default":
        members = [m for t in settings.teams.values() for m in t.members]
        return _intake.c.requester.not_in(members) if members else None
    configured = settings.teams.get(team)
    members = list(configured.members) if configured else []
    return _intake.c.requester.in_(members) if members else literal(False)


@asynccontextmanager
async def _reading(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read-only connection for the figures: on SQLite a plain BEGIN, so that summarising a
    long period never holds the write lock the engine needs. On PostgreSQL, with JIT compilation
    off for its transaction: these queries are estimated expensive enough to be compiled, and
    compiling them took longer than running them (0.46 of 0.76 s for a year of transitions)."""
    async with reading(engine).connect() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SET LOCAL jit = off"))
        yield conn


async def team_metrics(
    engine: AsyncEngine, settings: Settings, team: str, period: Period
) -> TeamMetrics:
    """Every figure for `team` (a team name, or 'all') over `period`."""
    async with _reading(engine) as conn:
        return await _team_metrics(conn, settings, team, period)


async def compare(engine: AsyncEngine, settings: Settings, team: str, period: Period) -> Comparison:
    """The period's figures and the previous period's, on one connection."""
    async with _reading(engine) as conn:
        current = await _team_metrics(conn, settings, team, period)
        previous = await _team_metrics(conn, settings, team, period.previous())
    return Comparison(current, previous)


@dataclass(frozen=True)
class WeekPoint:
    """One week of the digest chart."""

    week: str
    finished_outcomes: int
    spend_micro_usd: int

    @property
    def cost_per_finished_outcome_micro_usd(self) -> int | None:
        return (
            round(self.spend_micro_usd / self.finished_outcomes) if self.finished_outcomes else None
        )


async def weekly_series(engine: AsyncEngine, team: str, weeks: Sequence[Period]) -> list[WeekPoint]:
    """Finished outcomes and spend per week: one pass over transitions, one over model calls,
    each row put in its week by comparing its time with the week boundaries (so weeks follow
    the time zone's midnight, daylight saving included)."""
    if not weeks:
        return []
    span = Period("series", weeks[0].start, weeks[-1].end, weeks[0].timezone)

    def bucket(column: Any) -> Any:
        return case(
            *((column < week.end, literal(i)) for i, week in enumerate(weeks)), else_=None
        ).label("bucket")

    t = _transitions(team, span, people=False)
    finished_rows = select(bucket(t.c.at)).where(t.c.dst == Status.APPROVED.value).subquery("f")
    s = _spend_rows(team, span)
    spend_rows = select(bucket(s.c.at), s.c.cost).subquery("p")
    finished = [0] * len(weeks)
    spend = [0] * len(weeks)
    async with _reading(engine) as conn:
        for index, count in (
            await conn.execute(
                select(finished_rows.c.bucket, func.count()).group_by(finished_rows.c.bucket)
            )
        ).all():
            finished[index] = int(count)
        for index, total in (
            await conn.execute(
                select(spend_rows.c.bucket, func.sum(spend_rows.c.cost)).group_by(
                    spend_rows.c.bucket
                )
            )
        ).all():
            spend[index] = int(total or 0)
    return [WeekPoint(week.label, finished[i], spend[i]) for i, week in enumerate(weeks)]


async def series_metrics(
    engine: AsyncEngine, settings: Settings, team: str, weeks: Sequence[Period]
) -> list[TeamMetrics]:
    async with _reading(engine) as conn:
        return [await _team_metrics(conn, settings, team, week) for week in weeks]


def _spend_rows(team: str, period: Period) -> Any:
    wasted = case((_orders.c.status.in_(_NOT_APPROVED), 1), else_=0)
    query = (
        select(
            _calls.c.role,
            func.coalesce(_orders.c.workload_class, "none").label("workload_class"),
            _calls.c.model,
            wasted.label("wasted"),
            _calls.c.cost_micro_usd.label("cost"),
            _calls.c.created_at.label("at"),
        )
        .select_from(_calls.outerjoin(_orders, _orders.c.id == _calls.c.order_id))
        .where(_calls.c.created_at >= period.start, _calls.c.created_at < period.end)
    )
    if team != ALL:
        query = query.where(func.coalesce(_orders.c.team, _calls.c.team) == team)
    return query.subquery("s")


def _spend_by_route(team: str, period: Period, dialect: str) -> Any:
    """Spend grouped by route and by whether the order ended without approval.

    PostgreSQL hash-joins every call to its order and aggregates (0.5 s for a million calls);
    SQLite looks each call's order up by its key, so there the period's calls are summed per
    order first (over the covering index ix_llm_calls_created_at_cost) and each order is looked
    up once (1.4 s instead of 2.4 s for a million calls)."""
    if dialect == "postgresql":
        s = _spend_rows(team, period)
        keys = (s.c.role, s.c.workload_class, s.c.model, s.c.wasted)
        return select(*keys, func.count(), func.sum(s.c.cost)).group_by(*keys)
    per_order = (
        select(
            _calls.c.order_id,
            _calls.c.team,
            _calls.c.role,
            _calls.c.model,
            func.count().label("calls"),
            func.sum(_calls.c.cost_micro_usd).label("cost"),
        )
        .where(_calls.c.created_at >= period.start, _calls.c.created_at < period.end)
        .group_by(_calls.c.order_id, _calls.c.team, _calls.c.role, _calls.c.model)
        .subquery("c")
    )
    workload = func.coalesce(_orders.c.workload_class, "none").label("workload_class")
    wasted = case((_orders.c.status.in_(_NOT_APPROVED), 1), else_=0).label("wasted")
    query = (
        select(
            per_order.c.role,
            workload,
            per_order.c.model,
            wasted,
            func.sum(per_order.c.calls),
            func.sum(per_order.c.cost),
        )
        .select_from(per_order.outerjoin(_orders, _orders.c.id == per_order.c.order_id))
        .group_by(per_order.c.role, workload, per_order.c.model, wasted)
    )
    if team != ALL:
        query = query.where(func.coalesce(_orders.c.team, per_order.c.team) == team)
    return query


async def _team_metrics(
    conn: AsyncConnection, settings: Settings, team: str, period: Period
) -> TeamMetrics:
    m = TeamMetrics(team=team, period=period)

    # Intake: requests, delegations and chat answers.
    intake = (
        select(_intake.c.kind, func.count())
        .where(_intake.c.created_at >= period.start, _intake.c.created_at < period.end)
        .group_by(_intake.c.kind)
    )
    where = _intake_filter(settings, team)
    if where is not None:
        intake = intake.where(where)
    for kind, count in (await conn.execute(intake)).all():
        m.requests_received += count
        if kind == IntakeKind.DELEGATION.value:
            m.delegations = count
        elif kind == IntakeKind.CHAT.value:
            m.chat_answers = count

    # Transitions in one pass, grouped by (from, to, exception kind, requester, reviewer); only
    # those the figures below count (not, e.g., starts and submissions).
    t = _transitions(team, period)
    first_pass = func.sum(case((t.c.rework_count == 0, 1), else_=0))
    keys = (t.c.src, t.c.dst, t.c.xkind, t.c.requester, t.c.reviewer)
    counted = or_(
        and_(t.c.src == Status.AWAITING_CONFIRMATION.value, t.c.dst == Status.QUEUED.value),
        t.c.src == Status.AWAITING_REVIEW.value,
        t.c.dst.in_(_COUNTED),
    )
    counts = select(*keys, func.count(), first_pass).where(counted).group_by(*keys)
    requesters: dict[str, list[int]] = {}
    reviewers: dict[str, int] = {}
    for src, dst, xkind, requester, reviewer, count, passed in (await conn.execute(counts)).all():
        confirmation = dst == Status.QUEUED.value and src == Status.AWAITING_CONFIRMATION.value
        if confirmation:
            m.orders_confirmed += count
            requesters.setdefault(requester, [0, 0])[0] += count
        if dst == Status.APPROVED.value:
            m.finished_outcomes += count
            m.first_pass_approvals += int(passed or 0)
            requesters.setdefault(requester, [0, 0])[1] += count
        if src == Status.AWAITING_REVIEW.value and dst in _DECISIONS:
            m.review_decisions += count
            reviewers[reviewer] = reviewers.get(reviewer, 0) + count
            if dst == Status.CHANGES_REQUESTED.value:
                m.changes_requested += count
        if dst == Status.REJECTED.value:
            m.rejections += count
        if dst == Status.CANCELLED.value and src not in _BEFORE_CONFIRMATION:
            m.cancellations += count
        if dst == Status.EXCEPTION.value:
            kind = xkind or "other"
            m.exceptions[kind] = m.exceptions.get(kind, 0) + count
    m.top_requesters = [
        PersonCount(user, confirmed, finished)
        for user, (confirmed, finished) in sorted(
            requesters.items(), key=lambda item: (-item[1][1], -item[1][0], item[0])
        )[:TOP_N]
    ]
    m.top_reviewers = [
        PersonCount(user, count)
        for user, count in sorted(reviewers.items(), key=lambda item: (-item[1], item[0]))[:TOP_N]
    ]

    # Durations in one pass: a review and a queue wait run from when the order entered the
    # state (the row's entered_at); a cycle from the order's first confirmation.
    t = _transitions(team, period, people=False)
    approved = t.c.dst == Status.APPROVED.value
    decided = and_(t.c.src == Status.AWAITING_REVIEW.value, t.c.dst.in_(_DECISIONS))
    started = and_(t.c.src == Status.QUEUED.value, t.c.dst == Status.RUNNING.value)
    confirmed = _earlier_transition(
        t, func.min, to=Status.QUEUED.value, source=Status.AWAITING_CONFIRMATION.value
    )
    quota_wait = t.c.quota_wait_s.is_not(None)
    # Seconds are computed in SQL: reading a year of timestamps into Python costs more than
    # the query.
    dialect = conn.dialect.name
    timing = select(
        case((approved, _seconds(dialect, confirmed, t.c.at)), else_=None),
        case((decided, _seconds(dialect, t.c.entered_at, t.c.at)), else_=None),
        case((started, _seconds(dialect, t.c.entered_at, t.c.at)), else_=None),
        t.c.quota_wait_s,
    ).where(or_(approved, decided, started, quota_wait))
    cycle_s: list[float] = []
    review_s: list[float] = []
    wait_s: list[float] = []
    for cycle, review, wait, quota_s in (await conn.execute(timing)).all():
        if cycle is not None:
            cycle_s.append(float(cycle))
        if review is not None:
            review_s.append(float(review))
        if wait is not None:
            wait_s.append(float(wait))
        if quota_s is not None:
            m.quota_wait_total_s += float(quota_s)
            m.quota_waits += 1
    m.cycle_time_p50_s, m.cycle_time_p90_s = percentile(cycle_s, 0.5), percentile(cycle_s, 0.9)
    m.review_latency_p50_s = percentile(review_s, 0.5)
    m.queue_wait_total_s = float(sum(wait_s))
    m.queue_wait_p50_s = percentile(wait_s, 0.5)

    # Spend, grouped by route and by whether the order ended without approval.
    spend = _spend_by_route(team, period, conn.dialect.name)
    routes: dict[tuple[str, str, str], list[int]] = {}
    for role, workload, model, wasted, calls, cost in (await conn.execute(spend)).all():
        cost = int(cost or 0)
        m.spend_micro_usd += cost
        if wasted:
            m.unapproved_spend_micro_usd += cost
        m.spend_by_class[workload] = m.spend_by_class.get(workload, 0) + cost
        m.spend_by_role[role] = m.spend_by_role.get(role, 0) + cost
        route = routes.setdefault((role, workload, model), [0, 0])
        route[0] += int(calls)
        route[1] += cost
    m.spend_by_route = sorted(
        (RouteSpend(r, w, mo, calls, cost) for (r, w, mo), (calls, cost) in routes.items()),
        key=lambda r: (-r.micro_usd, r.role, r.workload_class, r.model),
    )
    return m


def metric_names() -> list[str]:
    """The dataclass's stored figures, for exports."""
    return [f.name for f in fields(TeamMetrics)]

"""What delegation delivered and what it cost, for one team and one period.

Used by the weekly digest, the CLI (`delegate digest`) and App Home. Every figure is aggregated in
SQL that runs unchanged on SQLite and PostgreSQL; only percentiles are taken in Python, over the
one sorted column of durations they need.

Where the figures come from:

- **requests, delegations, chat answers, in progress**: intake dialogues started in the period
  (`intake_sessions.kind`); a dialogue's team is its requester's team in the configuration. A
  dialogue still under way is neither a delegation nor a chat answer yet, so requests are
  delegations + chat answers + in progress.
- **orders confirmed, finished outcomes, rejections, changes requested, cancellations,
  exceptions**: state transitions that happened in the period, read from the narrow
  `transitions` table `Store._move` writes next to each transition's audit event (migration
  0009 backfilled it from the audit trail). Confirmed is
  *awaiting confirmation → queued*; a cancellation counts only once the order had been confirmed
  (a proposed card that is cancelled is a declined draft, not cancelled work).
- **self-approved**: the finished outcomes approved by their own requester (no other reviewer
  was configured or named), counted apart: the transition into approved carries
  `exception_kind` 'self_approved' (workers.store.transitions).
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import case, func, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import SQLModel

import workers.models  # noqa: F401 (registers the tables)
from workers.config import Settings
from workers.states import SELF_APPROVED, IntakeKind
from workers.store.reporting import metric_days
from workers.workorder import Status

ALL = metric_days.ALL
TOP_N = 5

_moves = SQLModel.metadata.tables["transitions"]
_calls = SQLModel.metadata.tables["llm_calls"]
_intake = SQLModel.metadata.tables["intake_sessions"]

_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")
# A cancelled proposal is a declined draft, not cancelled work.
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
    """A requester's orders confirmed (`count`) and approved (`finished`), or a reviewer's
    decisions (`count`) and the approvals among them (`finished`)."""

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
    # Dialogues still under way: neither a delegation nor a chat answer yet.
    requests_in_progress: int = 0
    orders_confirmed: int = 0
    finished_outcomes: int = 0
    # Among the finished outcomes, those approved by their own requester (no other reviewer).
    self_approved: int = 0
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
            "requests_in_progress": self.requests_in_progress,
            "delegation_ratio": _round(self.delegation_ratio),
            "orders_confirmed": self.orders_confirmed,
            "finished_outcomes": self.finished_outcomes,
            "self_approved": self.self_approved,
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
    "requests_in_progress",
    "delegation_ratio",
    "orders_confirmed",
    "finished_outcomes",
    "self_approved",
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


# ----------------------------------------------------------------------------- SQL


def _intake_filter(settings: Settings, team: str) -> ColumnElement[bool] | None:
    if team == ALL:
        return None
    if team == "default":
        members = [m for t in settings.teams.values() for m in t.members]
        return _intake.c.requester.not_in(members) if members else None
    configured = settings.teams.get(team)
    members = list(configured.members) if configured else []
    return _intake.c.requester.in_(members) if members else literal(False)


async def team_metrics(
    engine: AsyncEngine, settings: Settings, team: str, period: Period
) -> TeamMetrics:
    """Every figure for `team` (a team name, or 'all') over `period`."""
    async with metric_days.reading_figures(engine) as conn:
        return await _team_metrics(conn, settings, team, period)


async def compare(engine: AsyncEngine, settings: Settings, team: str, period: Period) -> Comparison:
    """The period's figures and the previous period's, on one connection."""
    async with metric_days.reading_figures(engine) as conn:
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

    f = _series_approvals(team, span)
    finished_rows = select(bucket(f.c.at)).subquery("fb")
    s = _series_spend(team, span)
    spend_rows = select(bucket(s.c.at), s.c.cost).subquery("p")
    finished = [0] * len(weeks)
    spend = [0] * len(weeks)
    async with metric_days.reading_figures(engine) as conn:
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
    async with metric_days.reading_figures(engine) as conn:
        return [await _team_metrics(conn, settings, team, week) for week in weeks]


def _series_spend(team: str, period: Period) -> Any:
    """The period's calls with when they were made, charged as the other figures charge them."""
    return (
        select(_calls.c.cost_micro_usd.label("cost"), _calls.c.created_at.label("at"))
        .select_from(metric_days.CALLS)
        .where(*metric_days.calls_in_span(period.start, period.end, team))
        .subquery("s")
    )


def _series_approvals(team: str, period: Period) -> Any:
    return (
        select(_moves.c.at)
        .select_from(metric_days.MOVES)
        .where(
            _moves.c.to_status == Status.APPROVED.value,
            *metric_days.moves_in_span(period.start, period.end, team),
        )
        .subquery("f")
    )


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
        else:
            m.requests_in_progress += count

    part = await metric_days.summary(conn, team, period.start, period.end)
    _count_moves(m, part)
    m.top_requesters = [
        PersonCount(user, confirmed, finished)
        for user, (confirmed, finished, _, _) in sorted(
            part.people.items(), key=lambda item: (-item[1][1], -item[1][0], item[0])
        )
        if confirmed or finished
    ][:TOP_N]
    m.top_reviewers = [
        PersonCount(user, decisions, approvals)
        for user, (_, _, decisions, approvals) in sorted(
            part.people.items(), key=lambda item: (-item[1][2], item[0])
        )
        if decisions
    ][:TOP_N]

    cycle_s = part.durations.get(metric_days.CYCLE, [])
    wait_s = part.durations.get(metric_days.QUEUE, [])
    quota_s = part.durations.get(metric_days.QUOTA, [])
    m.cycle_time_p50_s, m.cycle_time_p90_s = percentile(cycle_s, 0.5), percentile(cycle_s, 0.9)
    m.review_latency_p50_s = percentile(part.durations.get(metric_days.REVIEW, []), 0.5)
    m.queue_wait_total_s = float(sum(wait_s))
    m.queue_wait_p50_s = percentile(wait_s, 0.5)
    m.quota_wait_total_s = float(sum(quota_s))
    m.quota_waits = len(quota_s)

    for (role, workload, _), (_, cost) in part.spend.items():
        m.spend_micro_usd += cost
        m.spend_by_class[workload] = m.spend_by_class.get(workload, 0) + cost
        m.spend_by_role[role] = m.spend_by_role.get(role, 0) + cost
    m.spend_by_route = sorted(
        (RouteSpend(r, w, mo, calls, cost) for (r, w, mo), (calls, cost) in part.spend.items()),
        key=lambda r: (-r.micro_usd, r.role, r.workload_class, r.model),
    )
    m.unapproved_spend_micro_usd = await metric_days.unapproved_spend(
        conn, team, period.start, period.end
    )
    return m


def _count_moves(m: TeamMetrics, part: metric_days.Summary) -> None:
    for (src, dst, kind), (count, first_pass) in part.moves.items():
        if src == Status.AWAITING_CONFIRMATION.value and dst == Status.QUEUED.value:
            m.orders_confirmed += count
        if dst == Status.APPROVED.value:
            m.finished_outcomes += count
            m.first_pass_approvals += first_pass
            if kind == SELF_APPROVED:
                m.self_approved += count
        if src == Status.AWAITING_REVIEW.value and dst in metric_days.DECISIONS:
            m.review_decisions += count
            if dst == Status.CHANGES_REQUESTED.value:
                m.changes_requested += count
        if dst == Status.REJECTED.value:
            m.rejections += count
        if dst == Status.CANCELLED.value and src not in _BEFORE_CONFIRMATION:
            m.cancellations += count
        if dst == Status.EXCEPTION.value:
            m.exceptions[kind or "other"] = m.exceptions.get(kind or "other", 0) + count


def metric_names() -> list[str]:
    """The dataclass's stored figures, for exports."""
    return [f.name for f in fields(TeamMetrics)]

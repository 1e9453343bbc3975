"""What App Home shows each person, read straight from the database (no Slack here).

- *Requester*: their open orders first, then the most recently changed finished ones, each with
  its spend.
- *Reviewer*: orders awaiting review that they may decide (`workers.permissions.may_review`, the
  same rule the thread's buttons apply).
- *Lead*: for every team that names them in `teams.<name>.leads`, the team's figures for the
  current ISO week (workers.store.reporting.metrics) against the week before, and the latest posted digest.

`watchers` says whose home shows an order, so that a change to it can refresh exactly those.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import and_, case, func, or_
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from workers.config import Settings, schedule_for
from workers.db import session_factory
from workers.models import Deliverable, DigestPost, IntakeSession, OutboxMessage, WorkOrderRow
from workers.permissions import may_review, reviewers_of
from workers.states import OPEN
from workers.store.base import row_to_order
from workers.store.reporting import calibration, metrics
from workers.store.reporting.calibration import Calibration, FeedbackTally
from workers.store.reporting.metrics import Comparison, Period
from workers.workorder import Status, WorkOrder, format_order_id, parse_order_id

LIST_LIMIT = 10
TEAMS_LIMIT = 5
# Orders awaiting review read to find a reviewer's: far more than ever wait at once.
_REVIEW_SCAN = 1000
# A decision moves an order out of a reviewer's list: their home shows it until then.
_REVIEW_STATES = frozenset(
    {Status.AWAITING_REVIEW, Status.APPROVED, Status.REJECTED, Status.CHANGES_REQUESTED}
)


@dataclass(frozen=True)
class OrderLine:
    order: WorkOrder
    spent_micro_usd: int
    deliverable: Deliverable | None = None
    """For an order awaiting review: the latest deliverable, the one a decision is about."""
    feedback: FeedbackTally | None = None
    """People's thumbs up and down on it (None: nobody has pressed one)."""


@dataclass
class Listing:
    """Up to `limit` items and how many there are in all."""

    items: list[OrderLine] = field(default_factory=list)
    total: int = 0

    @property
    def more(self) -> int:
        return max(0, self.total - len(self.items))


@dataclass(frozen=True)
class DigestLink:
    channel: str
    ts: str
    week: str


@dataclass
class LeadFigures:
    team: str
    comparison: Comparison
    last_digest: DigestLink | None = None
    calibration: Calibration | None = None
    previous_calibration: Calibration | None = None


@dataclass(frozen=True)
class NotDelivered:
    """A message to one of the user's threads that Slack refused for good (archived channel,
    bot removed...): shown until someone fixes the cause and retries or the order ends."""

    order_id: str
    """WO-n; empty for a reply of a dialogue that has no order yet (`channel` says where)."""
    kind: str
    error: str
    channel: str = ""


@dataclass
class HomeData:
    user: str
    orders: Listing
    reviews: Listing
    teams: list[LeadFigures] = field(default_factory=list)
    more_teams: int = 0
    not_delivered: list[NotDelivered] = field(default_factory=list)


def teams_led_by(settings: Settings, user: str) -> list[str]:
    return sorted(name for name, team in settings.teams.items() if user in team.leads)


def team_timezone(settings: Settings, team: str) -> str:
    """The team's week follows its digest's time zone (UTC without a digest)."""
    schedule = schedule_for(settings, team)
    return schedule.timezone if schedule is not None else "UTC"


def watchers(order: WorkOrder) -> set[str]:
    """Whose App Home lists `order`: its requester, and its reviewers around a review."""
    people = {order.requester}
    if order.status in _REVIEW_STATES:
        people.update(reviewers_of(order))
    return people


def _line(row: WorkOrderRow) -> OrderLine:
    return OrderLine(row_to_order(row), int(row.spent_micro_usd or 0))


async def requester_orders(session: AsyncSession, user: str, *, limit: int = LIST_LIMIT) -> Listing:
    is_open = case((col(WorkOrderRow.status).in_([s.value for s in OPEN]), 0), else_=1)
    query = (
        select(WorkOrderRow)
        .where(WorkOrderRow.requester == user)
        .order_by(is_open, col(WorkOrderRow.updated_at).desc(), col(WorkOrderRow.id).desc())
        .limit(limit)
    )
    rows = (await session.exec(query)).all()
    total = (
        await session.exec(
            select(func.count()).select_from(WorkOrderRow).where(WorkOrderRow.requester == user)
        )
    ).one()
    return Listing([_line(r) for r in rows], int(total))


async def not_delivered(
    session: AsyncSession, user: str, *, limit: int = LIST_LIMIT
) -> list[NotDelivered]:
    """Messages to the threads of `user`'s orders that could not be delivered, newest first."""
    query = (
        select(
            OutboxMessage.order_id, OutboxMessage.kind, OutboxMessage.error, IntakeSession.channel
        )
        .outerjoin(WorkOrderRow, col(WorkOrderRow.id) == col(OutboxMessage.order_id))
        .outerjoin(IntakeSession, col(IntakeSession.id) == col(OutboxMessage.intake_id))
        .where(
            or_(
                col(WorkOrderRow.requester) == user,
                and_(col(OutboxMessage.order_id).is_(None), col(IntakeSession.requester) == user),
            ),
            col(OutboxMessage.permanent).is_(True),
            col(OutboxMessage.sent_at).is_(None),
        )
        .order_by(col(OutboxMessage.id).desc())
        .limit(limit)
    )
    rows = (await session.exec(query)).all()
    return [
        NotDelivered(
            format_order_id(o) if o is not None else "", k, e or "refused", channel=c or ""
        )
        for o, k, e, c in rows
    ]


async def awaiting_review(
    session: AsyncSession, user: str, settings: Settings, *, limit: int = LIST_LIMIT
) -> Listing:
    """Orders awaiting a decision `user` may take, the longest waiting first."""
    query = (
        select(WorkOrderRow)
        .where(WorkOrderRow.status == Status.AWAITING_REVIEW.value)
        .order_by(col(WorkOrderRow.updated_at), col(WorkOrderRow.id))
        .limit(_REVIEW_SCAN)
    )
    mine = [
        line
        for line in (_line(r) for r in (await session.exec(query)).all())
        if may_review(line.order, user, settings)
    ]
    shown = mine[:limit]
    numbers = {line.order.id: parse_order_id(line.order.id) for line in shown if line.order.id}
    rows = await session.exec(
        select(Deliverable)
        .where(col(Deliverable.order_id).in_(list(numbers.values())))
        .order_by(col(Deliverable.id))
    )
    latest = {d.order_id: d for d in rows.all()}  # the last one per order wins
    return Listing(
        [
            replace(line, deliverable=latest.get(numbers.get(line.order.id or "", 0)))
            for line in shown
        ],
        len(mine),
    )


async def last_digest(session: AsyncSession, team: str) -> DigestLink | None:
    query = (
        select(DigestPost)
        .where(DigestPost.team == team, DigestPost.state == "posted")
        .order_by(col(DigestPost.week).desc(), col(DigestPost.id).desc())
        .limit(1)
    )
    post = (await session.exec(query)).first()
    if post is None or not post.ts:
        return None
    return DigestLink(post.channel, post.ts, post.week)


async def lead_figures(
    engine: AsyncEngine, settings: Settings, team: str, now: datetime
) -> LeadFigures:
    week = Period.week_of(now, team_timezone(settings, team))
    comparison = await metrics.compare(engine, settings, team, week)
    now_calibrated = await calibration.calibration(engine, settings, team, week)
    before = await calibration.calibration(engine, settings, team, week.previous())
    async with session_factory(engine)() as session:
        link = await last_digest(session, team)
    return LeadFigures(team, comparison, link, now_calibrated, before)


async def with_feedback(engine: AsyncEngine, listing: Listing) -> Listing:
    """The listing with each order's feedback tally."""
    ids = [line.order.id for line in listing.items if line.order.id]
    if not ids:
        return listing
    found = await calibration.order_feedback(engine, ids)
    items = [
        replace(line, feedback=found[line.order.id].tally) if line.order.id in found else line
        for line in listing.items
    ]
    return Listing(items, listing.total)


async def home_data(
    engine: AsyncEngine, settings: Settings, user: str, *, now: datetime
) -> HomeData:
    async with session_factory(engine)() as session:
        orders = await requester_orders(session, user)
        reviews = await awaiting_review(session, user, settings)
        undelivered = await not_delivered(session, user)
    orders = await with_feedback(engine, orders)
    reviews = await with_feedback(engine, reviews)
    led = teams_led_by(settings, user)
    teams = [await lead_figures(engine, settings, t, now) for t in led[:TEAMS_LIMIT]]
    return HomeData(user, orders, reviews, teams, max(0, len(led) - TEAMS_LIMIT), undelivered)

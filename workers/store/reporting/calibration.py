"""Calibration from production: the verifier against reviewers, clarification's payoff, and the
feedback people give with Slack's thumbs.

Every reporting query of these figures is in this one module (the leads' other figures are in
`metrics` and `metric_days` beside it), read from the rows themselves:

- **Verifier agreement.** Every review decision of the period (a transition out of *awaiting
  review* into approved, rejected or changes requested) is matched with the verifier's verdicts
  on the very deliverable decided on: the decision's audit event names it (`Store._move` writes
  the `transitions` row with the same chain and `seq` as that event). The verifier *passed* a
  deliverable when every criterion passed. It *agreed* when it passed one the reviewer approved,
  or failed one the reviewer rejected or sent back; a **false accept** is a pass the reviewer
  rejected or sent back, a **false reject** a failure the reviewer approved. Decisions on
  deliverables the verifier never checked (automatic checks off) are not counted. The route is
  the verify call that produced the verdicts: the order's latest successful verify call made
  before the decision, as `provider:model`, with the order's workload class.
- **Clarification's payoff.** The rework rate (decisions that asked for changes, over all
  decisions, as workers.metrics counts it) of orders whose intake dialogue asked questions
  (`intake_sessions.rounds` > 0) against orders drafted at once. Orders that came from no
  dialogue (the modal, the console's direct form) are in neither.
- **Feedback.** Each person's standing press on a subject, counted in the period of their
  latest press (a changed mind moves it), per workload class and route: an order's deliverable under its execute route (the order's latest
  successful execute call), a chat answer under class `chat` and the intake route that answered.

`order_feedback` is what `delegate show`, App Home and an eval exporter read per order.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, literal, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel import SQLModel

import workers.models  # noqa: F401 (registers the tables)
from workers.config import Settings
from workers.store.base import as_utc
from workers.store.reporting import metric_days
from workers.store.reporting.metrics import ALL, Period, _intake_filter
from workers.workorder import Status, format_order_id, parse_order_id

_moves = SQLModel.metadata.tables["transitions"]
_orders = SQLModel.metadata.tables["work_orders"]
_audit = SQLModel.metadata.tables["audit_events"]
_deliverables = SQLModel.metadata.tables["deliverables"]
_calls = SQLModel.metadata.tables["llm_calls"]
_intake = SQLModel.metadata.tables["intake_sessions"]
_feedback = SQLModel.metadata.tables["feedback"]

CHAT = "chat"
# Ids per IN list: far below PostgreSQL's 32,767 bind parameters, for `/metrics`' all-time read.
_IN_BATCH = 5000
UNKNOWN_ROUTE = "unknown"
_SENT_BACK = (Status.REJECTED.value, Status.CHANGES_REQUESTED.value)
# How long before a chat answer its intake call may have been made (the dialogue's start).
_CHAT_CALL_SLACK = timedelta(minutes=1)


@dataclass(frozen=True)
class RouteAgreement:
    """The verifier on one route (`provider:model`) and workload class."""

    workload_class: str
    route: str
    decisions: int = 0
    agreed: int = 0
    false_accepts: int = 0
    false_rejects: int = 0

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.decisions if self.decisions else None


@dataclass
class VerifierCalibration:
    decisions: int = 0
    agreed: int = 0
    false_accepts: int = 0
    false_rejects: int = 0
    by_route: list[RouteAgreement] = field(default_factory=list)

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.decisions if self.decisions else None


@dataclass(frozen=True)
class ClarificationPayoff:
    """Review decisions on orders whose intake asked questions, and on those drafted at once."""

    asked_decisions: int = 0
    asked_changes: int = 0
    direct_decisions: int = 0
    direct_changes: int = 0

    @property
    def asked_rework_rate(self) -> float | None:
        return self.asked_changes / self.asked_decisions if self.asked_decisions else None

    @property
    def direct_rework_rate(self) -> float | None:
        return self.direct_changes / self.direct_decisions if self.direct_decisions else None


@dataclass(frozen=True)
class FeedbackCount:
    workload_class: str
    route: str
    up: int = 0
    down: int = 0


@dataclass(frozen=True)
class FeedbackTally:
    up: int = 0
    down: int = 0

    @property
    def label(self) -> str:
        return f"👍 {self.up} · 👎 {self.down}"


@dataclass(frozen=True)
class Rating:
    user: str
    rating: str
    deliverable_id: int | None
    at: datetime


@dataclass(frozen=True)
class OrderFeedback:
    """Everyone's standing feedback on one order: for `delegate show`, App Home and evals (an
    exported case can carry it beside the reviewer's decision)."""

    order_id: str
    ratings: tuple[Rating, ...] = ()

    @property
    def tally(self) -> FeedbackTally:
        up = sum(r.rating == "up" for r in self.ratings)
        return FeedbackTally(up, len(self.ratings) - up)

    def as_dict(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "up": self.tally.up,
            "down": self.tally.down,
            "ratings": [{**asdict(r), "at": r.at.isoformat()} for r in self.ratings],
        }


@dataclass
class Calibration:
    team: str
    period: Period
    verifier: VerifierCalibration = field(default_factory=VerifierCalibration)
    clarification: ClarificationPayoff = field(default_factory=ClarificationPayoff)
    feedback: list[FeedbackCount] = field(default_factory=list)

    @property
    def feedback_total(self) -> FeedbackTally:
        return FeedbackTally(sum(f.up for f in self.feedback), sum(f.down for f in self.feedback))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, under the names `delegate digest --format json` gives them."""
        v, c = self.verifier, self.clarification
        return {
            "verifier_agreement": _round(v.agreement),
            "verifier_false_accepts": v.false_accepts,
            "verifier_false_rejects": v.false_rejects,
            "verifier_decisions": v.decisions,
            "verifier_by_route": [
                {**asdict(r), "agreement": _round(r.agreement)} for r in v.by_route
            ],
            "clarification": {
                "asked_decisions": c.asked_decisions,
                "asked_rework_rate": _round(c.asked_rework_rate),
                "direct_decisions": c.direct_decisions,
                "direct_rework_rate": _round(c.direct_rework_rate),
            },
            "feedback_up": self.feedback_total.up,
            "feedback_down": self.feedback_total.down,
            "feedback_by_route": [asdict(f) for f in self.feedback],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# ----------------------------------------------------------------------------- reading


async def calibration(
    engine: AsyncEngine, settings: Settings | None, team: str, period: Period
) -> Calibration:
    """Every calibration figure for `team` (or 'all') over `period`; `settings` (who is in
    which team) may be None for 'all'."""
    async with metric_days.reading_figures(engine) as conn:
        return await read(conn, settings, team, period)


async def read(
    conn: AsyncConnection, settings: Settings | None, team: str, period: Period
) -> Calibration:
    decisions = await _decisions(conn, team, period)
    verifier = await _verifier(conn, decisions)
    return Calibration(
        team,
        period,
        verifier,
        _clarification(decisions),
        await _feedback_counts(conn, settings, team, period),
    )


METRICS_WINDOW = timedelta(days=30)


async def recent(engine: AsyncEngine, now: datetime) -> Calibration:
    """The last `METRICS_WINDOW`, for `/metrics`: counted from the rows at each scrape, so the
    window keeps a scrape's cost bounded however long the history grows."""
    return await calibration(engine, None, ALL, Period("30d", now - METRICS_WINDOW, now))


@dataclass(frozen=True)
class _Decision:
    order_id: int
    to_status: str
    at: datetime
    workload_class: str
    deliverable_id: int | None
    asked: bool | None  # None: the order came from no intake dialogue


async def _decisions(conn: AsyncConnection, team: str, period: Period) -> list[_Decision]:
    chain = literal("WO-", String) + sql_cast(_moves.c.order_id, String)
    query = (
        select(
            _moves.c.order_id,
            _moves.c.to_status,
            _moves.c.at,
            _orders.c.workload_class,
            _audit.c.data,
            _intake.c.rounds,
        )
        .select_from(
            metric_days.MOVES.join(
                _audit, (_audit.c.chain == chain) & (_audit.c.seq == _moves.c.seq)
            ).outerjoin(_intake, _intake.c.order_id == _moves.c.order_id)
        )
        .where(
            _moves.c.from_status == Status.AWAITING_REVIEW.value,
            _moves.c.to_status.in_(metric_days.DECISIONS),
            *metric_days.moves_in_span(period.start, period.end, team),
        )
    )
    found = []
    for order_id, to_status, at, workload, data, rounds in await conn.execute(query):
        shown = (data or {}).get("deliverable")
        found.append(
            _Decision(
                int(order_id),
                str(to_status),
                _utc(at),
                str(workload),
                shown if isinstance(shown, int) else None,
                None if rounds is None else rounds > 0,
            )
        )
    return found


async def _verifier(conn: AsyncConnection, decisions: list[_Decision]) -> VerifierCalibration:
    shown = {d.deliverable_id for d in decisions if d.deliverable_id is not None}
    if not shown:
        return VerifierCalibration()
    passed: dict[int, bool] = {}
    for batch in _batches(shown):
        for item, verdicts in await conn.execute(
            select(_deliverables.c.id, _deliverables.c.verdicts).where(
                _deliverables.c.id.in_(batch)
            )
        ):
            if verdicts:  # None (never checked) or empty: nothing to compare
                passed[int(item)] = all(bool(v.get("passed")) for v in verdicts)
    routes = await _latest_calls(conn, "verify", {d.order_id for d in decisions})
    tally: dict[tuple[str, str], list[int]] = {}
    total = VerifierCalibration()
    for d in decisions:
        if d.deliverable_id not in passed:
            continue
        verifier_passed = passed[d.deliverable_id]
        approved = d.to_status == Status.APPROVED.value
        counts = tally.setdefault((d.workload_class, _route_at(routes, d.order_id, d.at)), [0] * 4)
        counts[0] += 1
        if verifier_passed == approved:
            counts[1] += 1
        elif verifier_passed:
            counts[2] += 1
        else:
            counts[3] += 1
    for (workload, route), (n, agreed, fa, fr) in sorted(tally.items()):
        total.by_route.append(RouteAgreement(workload, route, n, agreed, fa, fr))
        total.decisions += n
        total.agreed += agreed
        total.false_accepts += fa
        total.false_rejects += fr
    return total


def _clarification(decisions: list[_Decision]) -> ClarificationPayoff:
    asked = [d for d in decisions if d.asked is True]
    direct = [d for d in decisions if d.asked is False]

    def changes(items: list[_Decision]) -> int:
        return sum(d.to_status == Status.CHANGES_REQUESTED.value for d in items)

    return ClarificationPayoff(len(asked), changes(asked), len(direct), changes(direct))


async def _latest_calls(
    conn: AsyncConnection, role: str, order_ids: Collection[int]
) -> dict[int, list[tuple[datetime, str]]]:
    """Each order's successful calls of `role`: (when, 'provider:model'), oldest first."""
    calls: dict[int, list[tuple[datetime, str]]] = {}
    for batch in _batches(order_ids):
        query = (
            select(_calls.c.order_id, _calls.c.created_at, _calls.c.provider, _calls.c.model)
            .where(_calls.c.role == role, _calls.c.outcome == "ok", _calls.c.order_id.in_(batch))
            .order_by(_calls.c.created_at, _calls.c.id)
        )
        for order_id, at, provider, model in await conn.execute(query):
            calls.setdefault(int(order_id), []).append((_utc(at), f"{provider}:{model}"))
    return calls


def _utc(value: datetime) -> datetime:
    return as_utc(value) or value


def _batches(ids: Iterable[int]) -> list[list[int]]:
    ordered = sorted(set(ids))
    return [ordered[i : i + _IN_BATCH] for i in range(0, len(ordered), _IN_BATCH)]


def _route_at(calls: dict[int, list[tuple[datetime, str]]], order_id: int, at: datetime) -> str:
    """The route of the order's last call made by `at`."""
    route = UNKNOWN_ROUTE
    for when, name in calls.get(order_id, []):
        if when > at:
            break
        route = name
    return route


async def _feedback_counts(
    conn: AsyncConnection, settings: Settings | None, team: str, period: Period
) -> list[FeedbackCount]:
    within = (_feedback.c.updated_at >= period.start, _feedback.c.updated_at < period.end)
    tally: dict[tuple[str, str], list[int]] = {}

    on_orders = (
        select(_feedback.c.order_id, _feedback.c.rating, _orders.c.workload_class)
        .select_from(_feedback.join(_orders, _orders.c.id == _feedback.c.order_id))
        .where(*within)
    )
    if team != ALL:
        on_orders = on_orders.where(_orders.c.team == team)
    rows = (await conn.execute(on_orders)).all()
    routes = await _latest_calls(conn, "execute", {int(r[0]) for r in rows})
    for order_id, rating, workload in rows:
        route = routes[order_id][-1][1] if routes.get(order_id) else UNKNOWN_ROUTE
        counts = tally.setdefault((str(workload), route), [0, 0])
        counts[0 if rating == "up" else 1] += 1

    on_chat = (
        select(_intake.c.requester, _intake.c.created_at, _intake.c.updated_at, _feedback.c.rating)
        .select_from(_feedback.join(_intake, _intake.c.id == _feedback.c.intake_session_id))
        .where(*within)
    )
    if team != ALL:
        assert settings is not None, "a team's chat answers are its members'"
        if (where := _intake_filter(settings, team)) is not None:
            on_chat = on_chat.where(where)
    chats = (await conn.execute(on_chat)).all()
    answered = await _intake_routes(conn, chats)
    for requester, created, updated, rating in chats:
        route = UNKNOWN_ROUTE
        for when, name in answered.get(requester, []):
            if _utc(created) - _CHAT_CALL_SLACK <= when <= _utc(updated):
                route = name
        counts = tally.setdefault((CHAT, route), [0, 0])
        counts[0 if rating == "up" else 1] += 1
    return [FeedbackCount(w, r, up, down) for (w, r), (up, down) in sorted(tally.items())]


async def _intake_routes(
    conn: AsyncConnection, chats: Iterable[Any]
) -> dict[str, list[tuple[datetime, str]]]:
    """The successful intake calls of the people whose chat answers were rated."""
    chats = list(chats)
    people = sorted({str(c[0]) for c in chats})
    calls: dict[str, list[tuple[datetime, str]]] = {}
    if not people:
        return calls
    # Only the calls of the rated dialogues' span of time.
    earliest = min(_utc(c[1]) for c in chats) - _CHAT_CALL_SLACK
    latest = max(_utc(c[2]) for c in chats)
    for start in range(0, len(people), _IN_BATCH):
        query = (
            select(_calls.c.requester, _calls.c.created_at, _calls.c.provider, _calls.c.model)
            .where(
                _calls.c.role == "intake",
                _calls.c.outcome == "ok",
                _calls.c.requester.in_(people[start : start + _IN_BATCH]),
                _calls.c.created_at >= earliest,
                _calls.c.created_at <= latest,
            )
            .order_by(_calls.c.created_at, _calls.c.id)
        )
        for requester, at, provider, model in await conn.execute(query):
            calls.setdefault(str(requester), []).append((_utc(at), f"{provider}:{model}"))
    return calls


async def order_feedback(
    engine: AsyncEngine,
    order_ids: Collection[str] | None = None,
    *,
    since: datetime | None = None,
) -> dict[str, OrderFeedback]:
    """The standing feedback on orders, by order id ('WO-42'): on `order_ids` (every rated
    order when None), pressed at or after `since` if given. Orders nobody rated are absent.

    This is the function an eval exporter calls to put people's feedback beside a decided
    order's label (see docs/EVALS.md)."""
    query = select(
        _feedback.c.order_id,
        _feedback.c.user,
        _feedback.c.rating,
        _feedback.c.deliverable_id,
        _feedback.c.updated_at,
    ).where(_feedback.c.order_id.is_not(None))
    if since is not None:
        query = query.where(_feedback.c.updated_at >= since)
    query = query.order_by(_feedback.c.order_id, _feedback.c.updated_at, _feedback.c.id)
    queries = [query]
    if order_ids is not None:
        numbers = [parse_order_id(o) for o in order_ids]
        queries = [query.where(_feedback.c.order_id.in_(batch)) for batch in _batches(numbers)]
    ratings: dict[str, list[Rating]] = {}
    async with metric_days.reading_figures(engine) as conn:
        for each in queries:
            for number, user, rating, deliverable, at in await conn.execute(each):
                ratings.setdefault(format_order_id(int(number)), []).append(
                    Rating(str(user), str(rating), deliverable, _utc(at))
                )
    return {order: OrderFeedback(order, tuple(items)) for order, items in ratings.items()}

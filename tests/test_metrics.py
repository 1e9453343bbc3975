"""workers.metrics over a small seeded history whose every figure is worked out by hand below."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from workers import metrics
from workers.config import Settings, load_settings
from workers.db import session_factory
from workers.metrics import ALL, Period, percentile
from workers.models import AuditEvent, IntakeSession, LlmCall, WorkOrderRow

W47 = Period.iso_week("2026-W47")  # Mon 2026-11-16 .. Mon 2026-11-23 (UTC)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """A time in November 2026, UTC."""
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


class Seed:
    """Rows written exactly as the engine writes them: an order, its transitions in the audit
    trail, its model calls; intake dialogues."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.sessions = session_factory(engine)
        self.rows: list[Any] = []
        self.next_id = 1

    def order(
        self,
        requester: str,
        workload: str,
        path: list[tuple[str, datetime, str]],
        *,
        team: str = "growth",
        rework: int = 0,
        calls: tuple[tuple[str, str, int, datetime], ...] = (),
    ) -> int:
        """`path`: (state entered, when, actor); the order starts awaiting confirmation."""
        number = self.next_id
        self.next_id += 1
        status = path[-1][0] if path else "awaiting_confirmation"
        self.rows.append(
            WorkOrderRow(
                id=number,
                title=f"order {number}",
                requester=requester,
                team=team,
                goal="g",
                deliverable="d",
                acceptance_criteria=["c"],
                budget={},
                workload_class=workload,
                authority_policy="default",
                verification={},
                status=status,
                rework_count=rework,
                created_at=path[0][1] - timedelta(minutes=5) if path else at(1, 0),
            )
        )
        source = "awaiting_confirmation"
        chain = f"WO-{number}"
        for seq, (target, when, actor) in enumerate(path, start=1):
            self.rows.append(self._event(chain, seq, when, actor, source, target))
            source = target
        for role, model, cost, when in calls:
            self.rows.append(
                LlmCall(
                    order_id=number,
                    role=role,
                    provider="anthropic",
                    model=model,
                    cost_micro_usd=cost,
                    created_at=when,
                    team=team,
                )
            )
        return number

    @staticmethod
    def _event(
        chain: str, seq: int, when: datetime, actor: str, source: str, target: str
    ) -> AuditEvent:
        data: dict[str, Any] = {"from": source, "to": target, "reason": "seeded"}
        if target == "exception":
            data["kind"] = "budget"
        return AuditEvent(
            chain=chain,
            seq=seq,
            at=when,
            actor=actor,
            kind="transition",
            data=data,
            prev_hash="-",
            hash=f"{chain}:{seq}",
        )

    def intake(self, requester: str, kind: str, when: datetime, n: int = 1) -> None:
        for _ in range(n):
            self.rows.append(
                IntakeSession(
                    channel="C1",
                    thread_ts=f"{len(self.rows)}.0",
                    requester=requester,
                    kind=kind,
                    created_at=when,
                )
            )

    def intake_call(self, cost: int, when: datetime) -> None:
        self.rows.append(
            LlmCall(
                role="intake",
                provider="anthropic",
                model="haiku",
                cost_micro_usd=cost,
                created_at=when,
            )
        )

    async def write(self) -> None:
        async with self.sessions() as s, s.begin():
            orders = [r for r in self.rows if isinstance(r, WorkOrderRow)]
            s.add_all(orders)
            await s.flush()
            s.add_all([r for r in self.rows if not isinstance(r, WorkOrderRow)])


def history_settings() -> Settings:
    return load_settings(
        teams={
            "default": {"weekly_usd": 100.0},
            "growth": {"weekly_usd": 100.0, "members": ["U1", "U2"]},
        }
    )


async def seed_history(engine: AsyncEngine) -> None:
    seed = Seed(engine)
    q, r, rev = "queued", "running", "awaiting_review"
    # A: confirmed Mon 10:00, 30 min in the queue, approved first time at 12:00 (review 1 h).
    seed.order(
        "U1",
        "standard",
        [(q, at(16, 10), "U1"), (r, at(16, 10, 30), "w"), (rev, at(16, 11), "w"),
         ("approved", at(16, 12), "UREV1")],
        calls=(("execute", "sonnet", 400_000, at(16, 10, 40)),
               ("verify", "mini", 50_000, at(16, 10, 55))),
    )  # fmt: skip
    # B: confirmed the week before; changes requested (review 2 h), requeued and waiting 1 h,
    # approved a day after its second submission. Cycle: Nov 10 09:00 -> Nov 18 12:00.
    seed.order(
        "U2",
        "deep",
        [(q, at(10, 9), "U2"), (r, at(10, 9, 10), "w"), (rev, at(17, 8), "w"),
         ("changes_requested", at(17, 10), "UREV1"), (q, at(17, 10), "UREV1"),
         (r, at(17, 11), "w"), (rev, at(17, 12), "w"), ("approved", at(18, 12), "UREV2")],
        rework=1,
        calls=(("execute", "opus", 1_000_000, at(10, 9, 30)),
               ("execute", "opus", 2_000_000, at(17, 11, 30))),
    )  # fmt: skip
    # C: rejected after a 1 h review.
    seed.order(
        "U1",
        "quick",
        [(q, at(18, 9), "U1"), (r, at(18, 9), "w"), (rev, at(18, 9, 30), "w"),
         ("rejected", at(18, 10, 30), "UREV1")],
        calls=(("execute", "haiku", 100_000, at(18, 9, 10)),),
    )  # fmt: skip
    # D: 20 min in the queue, then out of budget.
    seed.order(
        "U2",
        "standard",
        [(q, at(19, 9), "U2"), (r, at(19, 9, 20), "w"), ("exception", at(19, 10), "w")],
        calls=(("execute", "sonnet", 300_000, at(19, 9, 30)),),
    )  # fmt: skip
    # E: a proposed card cancelled (a declined draft, not cancelled work).
    seed.order("U1", "standard", [("cancelled", at(20, 8), "U1")])
    # F: confirmed, then cancelled while queued.
    seed.order("U1", "standard", [(q, at(20, 9), "U1"), ("cancelled", at(20, 9, 5), "U1")])
    # G: another team's order, approved on Monday.
    seed.order(
        "U9",
        "standard",
        [(q, at(16, 12), "U9"), (r, at(16, 12), "w"), (rev, at(16, 13), "w"),
         ("approved", at(16, 14), "UREV1")],
        team="default",
        calls=(("execute", "sonnet", 200_000, at(16, 12, 30)),),
    )  # fmt: skip
    # H: the previous week's one finished outcome for growth.
    seed.order(
        "U1",
        "standard",
        [(q, at(11, 9), "U1"), (r, at(11, 9), "w"), (rev, at(11, 10), "w"),
         ("approved", at(11, 11), "UREV1")],
        calls=(("execute", "sonnet", 500_000, at(11, 9, 30)),),
    )  # fmt: skip
    seed.intake("U1", "delegation", at(16, 9), n=3)
    seed.intake("U2", "chat", at(17, 9), n=2)
    seed.intake("U1", "pending", at(21, 9))
    seed.intake("U9", "chat", at(17, 9))
    seed.intake("U1", "delegation", at(12, 9))  # previous week
    seed.intake_call(1_000, at(16, 9))  # before any order: no team
    await seed.write()


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5], 0.9) == 5
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([10, 20], 0.9) == pytest.approx(19)


def test_iso_week_follows_local_midnight_across_daylight_saving() -> None:
    # Berlin leaves summer time on 2026-10-25: that week is 169 hours long.
    week = Period.iso_week("2026-W43", "Europe/Berlin")
    assert week.start == datetime(2026, 10, 18, 22, 0, tzinfo=UTC)
    assert week.end == datetime(2026, 10, 25, 23, 0, tzinfo=UTC)
    assert week.previous().label == "2026-W42"
    assert week.previous().end == week.start
    assert Period.week_of(datetime(2026, 10, 18, 22, 30, tzinfo=UTC), "Europe/Berlin") == week
    assert [w.label for w in Period.iso_week("2026-W01").weeks_back(3)] == [
        "2025-W51",
        "2025-W52",
        "2026-W01",
    ]
    with pytest.raises(ValueError, match="ISO week"):
        Period.iso_week("2026-47")


async def test_team_metrics_match_the_figures_worked_out_by_hand(database: Any) -> None:
    engine = database.engine()
    try:
        await seed_history(engine)
        m = await metrics.team_metrics(engine, history_settings(), "growth", W47)
    finally:
        await engine.dispose()

    assert (m.requests_received, m.delegations, m.chat_answers) == (6, 3, 2)
    assert m.delegation_ratio == pytest.approx(3 / 5)
    assert m.orders_confirmed == 4  # A, C, D, F (B was confirmed the week before)
    assert m.finished_outcomes == 2  # A, B
    assert m.first_pass_approval_rate == pytest.approx(1 / 3)  # A of {A, B, C}
    assert (m.review_decisions, m.changes_requested) == (4, 1)
    assert m.rework_rate == pytest.approx(0.25)
    assert (m.rejections, m.cancellations) == (1, 1)
    assert m.exceptions == {"budget": 1}
    # Cycle times 2 h (A) and 8 d 3 h (B).
    assert m.cycle_time_p50_s == pytest.approx((7200 + 702_000) / 2)
    assert m.cycle_time_p90_s == pytest.approx(7200 + 0.9 * (702_000 - 7200))
    # Reviews: 1 h (A), 2 h and 24 h (B), 1 h (C).
    assert m.review_latency_p50_s == pytest.approx(5400)
    # Queue: 30 min (A), 1 h (B's rework), 0 (C), 20 min (D).
    assert m.queue_wait_total_s == pytest.approx(6600)
    assert m.queue_wait_p50_s == pytest.approx(1500)

    assert m.spend_micro_usd == 2_850_000
    assert m.cost_per_finished_outcome_micro_usd == 1_425_000
    assert m.unapproved_spend_micro_usd == 400_000  # C (rejected) + D (exception)
    assert m.spend_by_role == {"execute": 2_800_000, "verify": 50_000}
    assert m.spend_by_class == {"standard": 750_000, "deep": 2_000_000, "quick": 100_000}
    routes = {(r.role, r.workload_class, r.model): (r.calls, r.micro_usd) for r in m.spend_by_route}
    assert routes == {
        ("execute", "deep", "opus"): (1, 2_000_000),
        ("execute", "standard", "sonnet"): (2, 700_000),
        ("execute", "quick", "haiku"): (1, 100_000),
        ("verify", "standard", "mini"): (1, 50_000),
    }
    assert m.spend_by_route[0].model == "opus"
    assert [(p.user, p.count, p.finished) for p in m.top_requesters] == [
        ("U1", 3, 1),
        ("U2", 1, 1),
    ]
    assert [(p.user, p.count) for p in m.top_reviewers] == [("UREV1", 3), ("UREV2", 1)]

    data = m.as_dict()
    assert data["total_spend_usd"] == 2.85
    assert data["cost_per_finished_outcome_usd"] == 1.425


async def test_previous_week_whole_workspace_and_an_empty_week(database: Any) -> None:
    engine = database.engine()
    settings = history_settings()
    try:
        await seed_history(engine)
        compared = await metrics.compare(engine, settings, "growth", W47)
        everyone = await metrics.team_metrics(engine, settings, ALL, W47)
        default = await metrics.team_metrics(engine, settings, "default", W47)
        empty = await metrics.team_metrics(engine, settings, "growth", Period.iso_week("2026-W30"))
        series = await metrics.weekly_series(engine, "growth", W47.weeks_back(3))
    finally:
        await engine.dispose()

    before = compared.previous
    assert before.period.label == "2026-W46"
    assert (before.orders_confirmed, before.finished_outcomes) == (2, 1)  # B, H; H
    assert before.requests_received == 1
    assert before.spend_micro_usd == 1_500_000
    assert before.cost_per_finished_outcome_micro_usd == 1_500_000
    assert before.cycle_time_p50_s == pytest.approx(7200)
    assert compared.change("finished_outcomes") == 1
    assert compared.change("cost_per_finished_outcome_micro_usd") == -75_000
    assert compared.change("rework_rate") == pytest.approx(0.25)  # 0 of 1 review, then 1 of 4
    assert compared.change("cycle_time_p90_s") is not None

    assert everyone.finished_outcomes == 3  # A, B, G
    assert everyone.spend_micro_usd == 2_850_000 + 200_000 + 1_000  # and the intake call
    assert everyone.spend_by_class["none"] == 1_000
    assert (everyone.requests_received, everyone.chat_answers) == (7, 3)
    assert (default.finished_outcomes, default.requests_received, default.chat_answers) == (1, 1, 1)
    assert default.spend_micro_usd == 200_000

    assert empty.is_empty
    assert empty.cost_per_finished_outcome_micro_usd is None
    assert empty.as_dict()["cost_per_finished_outcome_usd"] is None

    assert [(p.week, p.finished_outcomes, p.spend_micro_usd) for p in series] == [
        ("2026-W45", 0, 0),
        ("2026-W46", 1, 1_500_000),
        ("2026-W47", 2, 2_850_000),
    ]

"""workers.store.reporting.metrics over a small seeded history whose every figure is worked out by hand below."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import select

from tests.support.factories import make_order
from tests.support.history import W47, Seed, at, history_settings, seed_history
from workers.models import Transition, WorkOrderRow, utcnow
from workers.states import WaitKind
from workers.store import Admission, Store
from workers.store.base import order_number
from workers.store.reporting import metrics
from workers.store.reporting.metrics import ALL, Period, percentile
from workers.workorder import Status


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


async def _backdate(store: Store, order: int, *, entered_queue_s: float, waiting_s: float) -> None:
    """Let time pass without sleeping: the order entered the queue and began waiting earlier."""
    async with store.transaction() as s:
        entered = (
            await s.exec(
                select(Transition).where(
                    Transition.order_id == order, Transition.to_status == "queued"
                )
            )
        ).one()
        entered.at = utcnow() - timedelta(seconds=entered_queue_s)
        s.add(entered)
        row = await s.get(WorkOrderRow, order)
        assert row is not None and row.waiting_since is not None
        row.waiting_since = utcnow() - timedelta(seconds=waiting_s)
        s.add(row)


async def test_time_waiting_for_quota_is_the_part_of_the_queue_wait_spent_on_quota(
    store: Store,
) -> None:
    """An order queued 2 h ago that the team's spent week held back for the last hour: the lead
    sees 2 h in the queue, 1 h of it waiting for quota. An order held back for a free slot of its
    requester's adds queue time, not quota time."""
    quota = {"growth": 0}
    gate = Admission(
        week="2026-11-16",
        quota_micro_usd=lambda team: quota.get(team, 10**9),
        max_runs_per_user=lambda _: 1,
        headroom_micro_usd=1,
    )

    async def queued(requester: str, team: str) -> str:
        order = await store.orders.create_order(make_order(requester=requester, team=team), actor="U1")
        assert order.id
        await store.orders.transition(order.id, Status.AWAITING_CONFIRMATION, actor="intake", reason="-")
        await store.orders.transition(order.id, Status.QUEUED, actor=requester, reason="Start clicked")
        return order.id

    running = await queued("U2", "default")
    claimed = await store.queue.claim("w1", lease_ttl_s=60, admission=gate)
    assert claimed.order is not None and claimed.order.id == running
    waiting, busy = await queued("U1", "growth"), await queued("U2", "default")
    held = await store.queue.claim("w1", lease_ttl_s=60, admission=gate)
    assert held.order is None
    reasons = {order.id: reason for order, reason in held.waiting}
    assert reasons[waiting].startswith("waiting for team quota")
    assert reasons[busy].startswith("waiting for a free slot")
    assert (await store.orders.get_row(waiting)).wait_kind == WaitKind.QUOTA
    assert (await store.orders.get_row(busy)).wait_kind == WaitKind.SLOT
    await _backdate(store, order_number(waiting), entered_queue_s=7200, waiting_s=3600)
    await _backdate(store, order_number(busy), entered_queue_s=1800, waiting_s=1800)

    quota["growth"] = 10**9  # a lead raises the quota; the order starts
    started = await store.queue.claim("w1", lease_ttl_s=60, admission=gate)
    assert started.order is not None and started.order.id == waiting
    await store.queue.cancel_order(busy, actor="U2", reason="no longer needed")

    week = Period.week_of(utcnow())
    settings = history_settings()
    growth = await metrics.team_metrics(store.engine, settings, "growth", week)
    assert growth.queue_wait_total_s == pytest.approx(7200, abs=60)
    assert growth.quota_wait_total_s == pytest.approx(3600, abs=60)
    assert growth.quota_waits == 1
    others = await metrics.team_metrics(store.engine, settings, "default", week)
    assert (others.quota_wait_total_s, others.quota_waits) == (0, 0)
    everyone = await metrics.team_metrics(store.engine, settings, ALL, week)
    assert everyone.as_dict()["quota_wait_total_s"] == pytest.approx(3600, abs=60)


async def test_intake_spend_counts_for_the_requesters_team(database: Any) -> None:
    """Model calls of intake dialogues made before any order exists are charged (as the router
    records them) to the requester's team: that team's digest includes them, another's does
    not, and a call recorded with no team counts only for the whole workspace."""
    engine = database.engine()
    try:
        seed = Seed(engine)
        seed.intake("U1", "chat", at(16, 9))
        seed.intake_call(3_000, at(16, 9), requester="U1", team="growth")
        seed.intake_call(2_000, at(17, 9), requester="U9", team="default")
        seed.intake_call(1_000, at(17, 10))  # recorded before intake calls carried a team
        await seed.write()
        settings = history_settings()
        growth = await metrics.team_metrics(engine, settings, "growth", W47)
        default = await metrics.team_metrics(engine, settings, "default", W47)
        everyone = await metrics.team_metrics(engine, settings, ALL, W47)
    finally:
        await engine.dispose()
    assert (growth.spend_micro_usd, growth.spend_by_role) == (3_000, {"intake": 3_000})
    assert growth.spend_by_class == {"none": 3_000}
    assert not growth.is_empty and growth.chat_answers == 1
    assert default.spend_micro_usd == 2_000
    assert everyone.spend_micro_usd == 6_000

"""Closed days summarised once (workers.store.reporting.metric_days): the figures are the same whichever way a
day is read, a day is summarised only once it is over and its calls are settled, and each day
exactly once however many processes try."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack
from tests.support.cli import DELEGATE, cli_env, free_port, provider_env, stop_delegate
from tests.support.history import W47, Seed, at, history_settings, seed_history
from tests.support.waiting import eventually
from workers.models import LlmCall, MetricDay, MetricDaySpend, WorkOrderRow
from workers.store.reporting import metrics
from workers.store.reporting.metric_days import summarise_closed_days
from workers.store.reporting.metrics import ALL, Period

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
SETTINGS = history_settings()
# Weeks, a week in a time zone whose days do not start at UTC midnight, and spans that start and
# end inside a day (so that they are read partly from summaries, partly from the rows).
PERIODS = [
    ("growth", W47),
    (ALL, W47),
    ("default", W47),
    ("growth", W47.previous()),
    ("growth", Period.iso_week("2026-W47", "Europe/Berlin")),
    (ALL, Period.iso_week("2026-W47", "America/New_York")),
    ("growth", Period("span", at(10, 9, 15), at(18, 11))),
    (ALL, Period("span", at(1, 0), datetime(2026, 11, 27, 8, 0, tzinfo=UTC))),
    (ALL, Period("inside a day", at(17, 9), at(17, 11))),
    (ALL, Period("a quarter", datetime(2026, 10, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))),
]


async def _figures(engine: AsyncEngine) -> list[dict[str, Any]]:
    return [
        (await metrics.team_metrics(engine, SETTINGS, team, period)).as_dict()
        for team, period in PERIODS
    ]


async def test_summarised_days_give_the_same_figures_as_the_rows(database: Any) -> None:
    engine = database.engine()
    try:
        await seed_history(engine)
        from_rows = await _figures(engine)
        days = await summarise_closed_days(engine, now=NOW)
        from_summaries = await _figures(engine)
        again = await summarise_closed_days(engine, now=NOW)
    finally:
        await engine.dispose()

    # Every day from the first seeded row (Nov 10) to the last closed day (Nov 26).
    assert days == [date(2026, 11, d) for d in range(10, 27)]
    assert again == []
    assert from_summaries == from_rows
    assert from_rows[0]["finished_outcomes"] == 2  # the seeded figures, not an empty database
    assert from_rows[1]["total_spend_usd"] == 3.051


async def test_a_sweep_asked_to_stop_ends_between_two_days_and_the_next_goes_on(
    database: Any,
) -> None:
    """A shutdown does not cut a sweep off mid-query (on PostgreSQL that left asyncpg's
    connection to be torn down under the closing store, an ERROR after "Delegate stopped"):
    the sweep stops after the day it is on, and the next sweep summarises the rest."""
    engine = database.engine()
    stop = asyncio.Event()
    try:
        await seed_history(engine)
        first = await summarise_closed_days(engine, now=NOW, limit=3)
        stop.set()
        stopped = await summarise_closed_days(engine, now=NOW, stop=stop)
        rest = await summarise_closed_days(engine, now=NOW)
    finally:
        await engine.dispose()
    assert first == [date(2026, 11, d) for d in range(10, 13)]
    assert stopped == []
    assert rest == [date(2026, 11, d) for d in range(13, 27)]


async def test_a_summarised_day_keeps_the_figures_it_had(database: Any) -> None:
    """A past week reads as it was reported: an order reclassified after its day was summarised
    does not move that day's spend to another class. Spend on work that ended without approval
    still follows how each order ends, even after its day was summarised."""
    engine = database.engine()
    try:
        await seed_history(engine)
        await summarise_closed_days(engine, now=NOW)
        async with engine.begin() as conn:
            # A (approved, standard) reclassified; G (approved) rejected after all.
            await conn.execute(
                update(WorkOrderRow).where(WorkOrderRow.id == 1).values(workload_class="quick")
            )
            await conn.execute(
                update(WorkOrderRow).where(WorkOrderRow.id == 7).values(status="rejected")
            )
        m = await metrics.team_metrics(engine, SETTINGS, ALL, W47)
        quarter = await metrics.team_metrics(engine, SETTINGS, ALL, PERIODS[-1][1])
    finally:
        await engine.dispose()

    assert quarter.unapproved_spend_micro_usd == 600_000  # the same over a longer span
    assert quarter.spend_micro_usd == 4_551_000  # everything seeded
    assert m.spend_by_class == {"standard": 950_000, "deep": 2_000_000, "quick": 100_000,
                                "none": 1_000}  # fmt: skip
    assert m.unapproved_spend_micro_usd == 400_000 + 200_000  # C, D, and now G


async def test_a_day_is_summarised_once_it_is_over_and_its_calls_are_settled(
    database: Any,
) -> None:
    engine = database.engine()
    try:
        seed = Seed(engine)
        seed.order(
            "U1",
            "standard",
            [("queued", at(20, 9), "U1"), ("running", at(20, 9, 5), "w")],
            calls=(("execute", "sonnet", 300_000, at(20, 9, 10)),),
        )
        seed.order(
            "U2",
            "standard",
            [("queued", at(21, 23, 50), "U2")],
            calls=(("execute", "sonnet", 100_000, at(21, 23, 59)),),
        )
        await seed.write()
        async with engine.begin() as conn:  # the first order's call is still in flight
            await conn.execute(
                update(LlmCall).where(LlmCall.order_id == 1).values(outcome="pending")
            )
        # 30 minutes after the 21st ended: too soon for it (a late commit may still land in it).
        early = await summarise_closed_days(engine, now=datetime(2026, 11, 22, 0, 30, tzinfo=UTC))
        # The call settles; an hour after midnight the 21st has closed too.
        async with engine.begin() as conn:
            await conn.execute(
                update(LlmCall)
                .where(LlmCall.order_id == 1)
                .values(outcome="ok", cost_micro_usd=450_000)
            )
        later = await summarise_closed_days(engine, now=datetime(2026, 11, 22, 1, 0, tzinfo=UTC))
        m = await metrics.team_metrics(engine, SETTINGS, "growth", W47)
    finally:
        await engine.dispose()

    assert early == []
    assert later == [date(2026, 11, 20), date(2026, 11, 21)]
    assert m.spend_micro_usd == 450_000 + 100_000  # the settled cost, not the pending one


async def test_several_processes_summarise_each_day_once(database: Any) -> None:
    engine = database.engine()
    other = database.engine()
    try:
        await seed_history(engine)
        expected = await _figures(engine)
        first, second = await asyncio.gather(
            summarise_closed_days(engine, now=NOW), summarise_closed_days(other, now=NOW)
        )
        async with engine.connect() as conn:
            days = (await conn.execute(select(func.count()).select_from(MetricDay))).scalar()
            routes = (await conn.execute(select(func.count()).select_from(MetricDaySpend))).scalar()
        figures = await _figures(engine)
    finally:
        await engine.dispose()
        await other.dispose()

    assert sorted(first + second) == [date(2026, 11, d) for d in range(10, 27)]
    assert days == 17
    assert routes == 9  # one row per day, team and route that had spend
    assert figures == expected


async def test_an_empty_database_has_nothing_to_summarise(database: Any) -> None:
    engine = database.engine()
    try:
        assert await summarise_closed_days(engine, now=NOW) == []
        m = await metrics.team_metrics(engine, SETTINGS, ALL, W47)
    finally:
        await engine.dispose()
    assert m.is_empty


def test_whole_days_of_a_span() -> None:
    from workers.store.reporting.metric_days import _gaps, _runs, _whole_days

    start, end = at(10, 9), at(13, 0)
    assert _whole_days(start, end) == (date(2026, 11, 11), date(2026, 11, 13))
    assert _whole_days(at(10, 0), at(10, 23)) is None
    runs = _runs([date(2026, 11, 11), date(2026, 11, 12), date(2026, 11, 14)])
    assert runs == [
        (date(2026, 11, 11), date(2026, 11, 13)),
        (date(2026, 11, 14), date(2026, 11, 15)),
    ]
    assert _gaps(start, at(16, 6), runs) == [
        (start, at(11, 0)),
        (at(13, 0), at(14, 0)),
        (at(15, 0), at(16, 6)),
    ]
    assert _gaps(start, start + timedelta(hours=1), []) == [(start, start + timedelta(hours=1))]


async def _start_delegate_run(
    database: Any,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    cwd: Path,
) -> asyncio.subprocess.Process:
    """`delegate run` against the fakes, its log on a pipe for `stop_delegate`."""
    env = cli_env(
        **database.env(),
        **provider_env(fake_anthropic, fake_openai),
        PORT=str(free_port()),
        SLACK_BOT_TOKEN=fake_slack.token,
        SLACK_SIGNING_SECRET="s3cr3t-signing",
        SLACK_API_URL=fake_slack.api_url,
    )
    return await asyncio.create_subprocess_exec(
        str(DELEGATE), "run", "--host", "127.0.0.1", env=env, cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_delegate_run_summarises_the_closed_days_when_it_starts(
    database: Any,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> None:
    engine = database.engine()
    try:
        await seed_history(engine)
        expected = await _figures(engine)
        proc = await _start_delegate_run(database, fake_slack, fake_anthropic, fake_openai, tmp_path)

        # Every seeded day has long closed, whatever today's date is.
        seeded = {date(2026, 11, d).isoformat() for d in range(10, 27)}

        async def seeded_days_summarised() -> bool:
            async with engine.connect() as conn:
                return seeded <= set((await conn.execute(select(MetricDay.day))).scalars())

        try:
            await eventually(seeded_days_summarised)
        finally:
            err = await stop_delegate(proc)
        assert proc.returncode == 0, err
        assert await _figures(engine) == expected
    finally:
        await engine.dispose()


async def test_delegate_run_stops_promptly_when_sigterm_lands_mid_summary(
    database: Any,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> None:
    """A restart while the first start is still summarising years of history: the sweep stops
    where it is and the process exits. (It used to close the database under the running sweep,
    whose connection thread then kept the process alive after "Delegate stopped".)"""
    engine = database.engine()
    try:
        seed = Seed(engine)
        seed.intake_call(1_000, datetime(2023, 11, 1, 12, tzinfo=UTC), requester="U1")
        await seed.write()
        proc = await _start_delegate_run(database, fake_slack, fake_anthropic, fake_openai, tmp_path)

        async def summarised() -> int:
            async with engine.connect() as conn:
                return int((await conn.execute(select(func.count()).select_from(MetricDay))).scalar_one())

        try:
            await eventually(summarised)
        finally:
            err = await stop_delegate(proc)
        assert proc.returncode == 0, err
        # It was stopped mid-sweep (more than a thousand days were still to go), and said so
        # before closing the database: no error, no traceback.
        assert 0 < await summarised() < 1_000, err
        lines = err.splitlines()
        stopped = [i for i, line in enumerate(lines) if "stopped the metric-days job mid-run" in line]
        assert stopped and stopped[0] < len(lines) - 1, err
        assert "Delegate stopped" in lines[-1], err
        assert " ERROR " not in err and "Traceback" not in err, err
    finally:
        await engine.dispose()

"""Every query that reads for people rather than for the engine: the leads' figures and digest,
App Home, `/metrics` gauges and the daily summaries behind them. `Reporting` is the one
repository the front door and the digest use for them; the modules beside it hold the SQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from workers.config import Settings
from workers.store.reporting import (
    calibration,
    decisions,
    digest_posts,
    gauges,
    home,
    metric_days,
    metrics,
)
from workers.store.reporting.calibration import Calibration, OrderFeedback
from workers.store.reporting.digest_posts import Claim
from workers.store.reporting.gauges import Gauges
from workers.store.reporting.home import HomeData
from workers.store.reporting.metrics import Comparison, Period, TeamMetrics, WeekPoint
from workers.store.sweeps import single_runner

__all__ = ["Claim", "Gauges", "HomeData", "Reporting"]


class Reporting:
    """Read-mostly queries over the shared database; the writes here (daily summaries, the
    digest ledger) belong to reporting alone."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    # figures
    async def team_metrics(self, settings: Settings, team: str, period: Period) -> TeamMetrics:
        return await metrics.team_metrics(self._engine, settings, team, period)

    async def compare(self, settings: Settings, team: str, period: Period) -> Comparison:
        return await metrics.compare(self._engine, settings, team, period)

    async def weekly_series(self, team: str, weeks: Sequence[Period]) -> list[WeekPoint]:
        return await metrics.weekly_series(self._engine, team, weeks)

    async def series_metrics(
        self, settings: Settings, team: str, weeks: Sequence[Period]
    ) -> list[TeamMetrics]:
        return await metrics.series_metrics(self._engine, settings, team, weeks)

    async def summarise_closed_days(self, stop: asyncio.Event | None = None) -> None:
        """Summarise every closed day not yet summarised (one process at a time), until `stop`
        is set."""
        await metric_days.sweep(self._engine, stop=stop)

    # calibration from production: the verifier against reviewers, clarification, feedback
    async def calibration(self, settings: Settings, team: str, period: Period) -> Calibration:
        return await calibration.calibration(self._engine, settings, team, period)

    async def order_feedback(
        self, order_ids: Collection[str] | None = None, *, since: datetime | None = None
    ) -> dict[str, OrderFeedback]:
        """People's standing 👍 / 👎 per order ('WO-42'): for `delegate show`, App Home and
        eval exporters (calibration.order_feedback)."""
        return await calibration.order_feedback(self._engine, order_ids, since=since)

    # App Home and /metrics
    async def home(self, settings: Settings, user: str, *, now: datetime) -> HomeData:
        return await home.home_data(self._engine, settings, user, now=now)

    async def gauges(self) -> Gauges:
        return await gauges.read_gauges(self._engine)

    # the digest's exactly-once ledger
    async def installed_at(self) -> datetime | None:
        return await digest_posts.installed_at(self._engine)

    async def claim_digest(
        self, *, team: str, channel: str, week: str, owner: str, now: datetime
    ) -> Claim | None:
        """Claim one digest asked for by hand (a week skipped as empty may be claimed)."""
        return await digest_posts.claim(
            self._engine,
            team=team,
            channel=channel,
            week=week,
            owner=owner,
            now=now,
            over_skipped=True,
        )

    async def claim_digests(
        self, wanted: Sequence[tuple[str, str, str]], *, owner: str, now: datetime
    ) -> list[Claim | None]:
        """Claim each (team, channel, week) in one transaction; None where another has it."""
        return await digest_posts.claim_all(self._engine, wanted, owner=owner, now=now)

    async def digest_posted(self, claimed: Claim, *, ts: str | None, now: datetime) -> None:
        await digest_posts.mark_posted(self._engine, claimed, ts=ts, now=now)

    async def digest_skipped(self, claimed: Claim, *, now: datetime) -> None:
        await digest_posts.mark_skipped(self._engine, claimed, now=now)

    async def release_digest(self, claimed: Claim) -> None:
        await digest_posts.release(self._engine, claimed)

    # reviewers' decisions, for `delegate eval export`
    async def decided_orders(self, since: datetime, to: Collection[str]) -> list[int]:
        """Orders that moved into a state of `to` (a reviewer's decision) since `since`."""
        return await decisions.decided_orders(self._engine, since, to)

    def single_runner(self, name: str) -> AbstractAsyncContextManager[bool]:
        """True inside for the one process that runs the sweep `name` now (PostgreSQL)."""
        return single_runner(self._engine, name)


"""Slack rate limits every process shares: a method held after a 429 (`slack_rate_limits`).

Times are the database's, and what is read back is how long each hold has left, in seconds:
processes whose clocks disagree still hold a method for the same span.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Table, update
from sqlmodel import col, select

from workers.models import SlackRateLimit
from workers.store.base import StoreBase, as_utc
from workers.store.leases import database_now
from workers.store.outbox import insert_ignoring

_limits: Table = SlackRateLimit.__table__  # type: ignore[attr-defined]


class RateLimitsStore(StoreBase):
    async def hold_slack_method(self, method: str, seconds: float) -> None:
        """No process calls `method` for `seconds` from now (a hold already longer stays)."""
        async with self.transaction() as s:
            until = await database_now(self, s) + timedelta(seconds=max(seconds, 0.0))
            await s.exec(insert_ignoring(s, _limits, {"method": method, "blocked_until": until}))
            await s.exec(
                update(SlackRateLimit)
                .where(
                    col(SlackRateLimit.method) == method,
                    col(SlackRateLimit.blocked_until) < until,
                )
                .values(blocked_until=until)
            )

    async def slack_method_holds(self) -> dict[str, float]:
        """Seconds left on each method held now (methods no longer held are left out)."""
        async with self._sessions() as s:
            now = await database_now(self, s)
            rows = (await s.exec(select(SlackRateLimit))).all()
        left = {}
        for row in rows:
            until = as_utc(row.blocked_until)
            if until is not None and until > now:
                left[row.method] = (until - now).total_seconds()
        return left

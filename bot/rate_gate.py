"""One gate per process in front of every Slack Web API call: Slack's rate limits, kept.

Slack limits each app per workspace and per method, so a 429 is about the method, not the one
request that got it. slack_sdk's retry handler only sleeps the request that was refused; every
other task would call the same method again at once and be refused in turn. Here a 429 holds
the method for every task of the process until Retry-After has passed, and (with `shared`, the
store) for every other process too: they read the holds from the database, at most every
`refresh_s`.

Besides, calls are spaced to Slack's documented budgets before any 429 (`BUDGETS`): about one
post per second per channel, and each method's tier per minute.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


class SharedHolds(Protocol):
    """Where processes tell each other about 429s (workers.store.rate_limits)."""

    async def hold_slack_method(self, method: str, seconds: float) -> None: ...

    async def slack_method_holds(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class Budget:
    """`per_minute` calls on average, `burst` of them at once; `per_channel`: one budget for
    each channel rather than one for the method."""

    per_minute: float
    burst: int
    per_channel: bool = False


def _tier(per_minute: int) -> Budget:
    # A sixth of a minute's worth at once: bursts pass, a sustained stream is spaced out.
    return Budget(per_minute, max(1, per_minute // 6))


TIER_1, TIER_2, TIER_3, TIER_4 = _tier(1), _tier(20), _tier(50), _tier(100)

BUDGETS: Mapping[str, Budget] = {
    # "1 message per second to a specific channel", with bursts allowed (Slack's docs).
    "chat.postMessage": Budget(60, 5, per_channel=True),
    "chat.update": TIER_3,
    "chat.delete": TIER_3,
    "chat.postEphemeral": TIER_4,
    "chat.getPermalink": TIER_4,
    "conversations.replies": TIER_3,
    "users.info": TIER_4,
    "views.open": TIER_4,
    "views.push": TIER_4,
    "views.update": TIER_4,
    "views.publish": TIER_4,
    "files.getUploadURLExternal": TIER_4,
    "files.completeUploadExternal": TIER_4,
    "files.info": TIER_4,
    "canvases.create": TIER_2,
    "canvases.access.set": TIER_3,
    # The agent surface (docs.slack.dev method pages: sessions tier 3, startStream and
    # stopStream tier 2, appendStream tier 4).
    "agents.sessions.setStatus": TIER_3,
    "agents.sessions.rename": TIER_3,
    "chat.startStream": TIER_2,
    "chat.appendStream": TIER_4,
    "chat.stopStream": TIER_2,
    "reactions.add": TIER_3,
    "reactions.remove": TIER_2,
    "assistant.threads.setStatus": TIER_3,
    "auth.test": TIER_4,
    # apps.connections.open (tier 1) is not spaced: a lost Socket Mode connection must be
    # replaced at once, and reconnects are rare; a 429 on it still holds it.
}
"""Slack's published limit for each method Delegate calls (tiers 1-4: 1, 20, 50, 100 a minute);
a method not listed is held after a 429 but not spaced beforehand."""

DEFAULT_RETRY_AFTER_S = 1.0
_MAX_BUCKETS = 1000
_REFRESH_TIMEOUT_S = 2.0


class _Bucket:
    """GCRA: a call may go `tolerance` ahead of the steady pace (the burst), no further."""

    def __init__(self, budget: Budget, now: float) -> None:
        self.interval = 60.0 / budget.per_minute
        self.tolerance = self.interval * (budget.burst - 1)
        self.due = now  # when the next call would be on the steady pace

    def take(self, now: float) -> float:
        """Take the next slot; how long to wait before using it."""
        due = max(self.due, now)
        self.due = due + self.interval
        return max(0.0, due - self.tolerance - now)

    def idle(self, now: float) -> bool:
        return self.due <= now


class RateGate:
    """Holds Slack methods after a 429 and spaces calls to their budgets."""

    def __init__(
        self,
        *,
        shared: SharedHolds | None = None,
        budgets: Mapping[str, Budget] = BUDGETS,
        budget_scale: float = 1.0,
        refresh_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shared = shared
        self.budgets = {
            method: Budget(b.per_minute * budget_scale, b.burst, b.per_channel)
            for method, b in budgets.items()
        }
        self.refresh_s = refresh_s
        self.clock = clock
        self._until: dict[str, float] = {}
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._refreshed_at: float | None = None
        self._refreshing: asyncio.Future[None] | None = None

    def held_for(self, method: str) -> float:
        """Seconds `method` is still held in this process (0: free)."""
        until = self._until.get(method)
        return 0.0 if until is None else max(0.0, until - self.clock())

    async def rate_limited(self, method: str, retry_after_s: float | None) -> None:
        """Slack answered 429 to `method`: hold it here and, through `shared`, everywhere."""
        seconds = DEFAULT_RETRY_AFTER_S if retry_after_s is None else max(0.0, retry_after_s)
        self._hold(method, self.clock() + seconds)
        if self.shared is not None:
            try:
                await self.shared.hold_slack_method(method, seconds)
            except Exception as exc:  # this process still holds it; the others learn by 429
                log.warning("could not share the rate limit of %s (%r)", method, exc)

    async def wait(self, method: str) -> None:
        """Return once `method` is not held (here or, as last read, by another process)."""
        while True:
            await self._refresh()
            left = self.held_for(method)
            if left <= 0:
                return
            await asyncio.sleep(left)

    async def before_call(self, method: str, channel: str | None = None) -> None:
        """Wait until `method` may be called now: not held, and within its budget."""
        await self.wait(method)
        budget = self.budgets.get(method)
        if budget is None:
            return
        key = (method, (channel or "") if budget.per_channel else "")
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.idle(now)}
            bucket = self._buckets[key] = _Bucket(budget, now)
        delay = bucket.take(now)
        if delay > 0:
            await asyncio.sleep(delay)
            await self.wait(method)  # a 429 may have come in meanwhile

    def _hold(self, method: str, until: float) -> None:
        if until > self._until.get(method, float("-inf")):
            self._until[method] = until

    async def _refresh(self) -> None:
        """Read the other processes' holds, at most every `refresh_s` (callers share a read)."""
        if self.shared is None:
            return
        if self._refreshing is not None:
            await asyncio.shield(self._refreshing)
            return
        if self._refreshed_at is not None and self.clock() - self._refreshed_at < self.refresh_s:
            return
        self._refreshing = asyncio.get_running_loop().create_future()
        try:
            try:
                async with asyncio.timeout(_REFRESH_TIMEOUT_S):
                    holds = await self.shared.slack_method_holds()
            except Exception as exc:  # Slack calls go on with what this process knows
                log.warning("could not read the shared Slack rate limits (%r)", exc)
                holds = {}
            answered = self.clock()  # after the read: a hold is never cut short by its latency
            for method, left in holds.items():
                self._hold(method, answered + left)
            self._refreshed_at = self.clock()
        finally:
            self._refreshing.set_result(None)
            self._refreshing = None

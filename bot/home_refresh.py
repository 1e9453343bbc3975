"""When to republish App Home: coalesced per person, within Slack's rate limit for views.publish.

A change to an order asks for the homes of the people it is shown to (`workers.store.reporting.home.
watchers`). Requests for one person while a publish is pending are folded into it; the publish
builds the view when it runs, so the latest state wins. A person's home is published at most once
every `interval_s`, and publishes for everyone are spaced `spacing_s` apart (views.publish is a
Tier 4 method: 100 a minute is safe). The clock and the sleep are injectable for tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from workers.store.reporting.home import watchers
from workers.workorder import WorkOrder

log = logging.getLogger(__name__)

INTERVAL_S = 5.0
SPACING_S = 0.6


class HomeRefresher:
    def __init__(
        self,
        publish: Callable[[str], Awaitable[None]],
        *,
        interval_s: float = INTERVAL_S,
        spacing_s: float = SPACING_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.publish = publish
        self.interval_s = interval_s
        self.spacing_s = spacing_s
        self.clock = clock
        self.sleep = sleep
        self._last: dict[str, float] = {}
        self._next_slot = float("-inf")
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def order_changed(self, order: WorkOrder) -> None:
        """Refresh the homes that show `order` (never raises: reporting must go on)."""
        for user in sorted(watchers(order)):
            self.request(user)

    def request(self, user: str) -> None:
        if user in self._pending:
            return  # the pending publish will show the latest state
        task = asyncio.create_task(self._run(user), name=f"home-refresh-{user}")
        self._pending[user] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _slot(self, user: str) -> float:
        """When `user`'s next publish may go out; reserves it against the global spacing."""
        now = self.clock()
        at = max(now, self._last.get(user, float("-inf")) + self.interval_s, self._next_slot)
        self._next_slot = at + self.spacing_s
        self._last[user] = at
        return at - now

    async def _run(self, user: str) -> None:
        try:
            delay = self._slot(user)
            if delay > 0:
                await self.sleep(delay)
        finally:
            # From here on a new change needs a new publish: this one may have read the old state.
            self._pending.pop(user, None)
        try:
            await self.publish(user)
        except Exception:
            log.exception("App Home for %s could not be published", user)

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    async def drain(self) -> None:
        """Wait until every requested publish is done (tests, and a graceful shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._pending.clear()
